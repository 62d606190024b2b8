"""Model registry: a model is a name plus keyword arguments, both stored in checkpoints.

Each family module (resnet.py, bert.py, vit.py) defines:
  VARIANTS: dict[str, dict]    named variants -> default constructor kwargs (a literal table)
  build(name, **kwargs) -> nn.Module
  dummy_inputs(model, batch=1) -> dict of keyword arguments for `model.init` / `apply`
      (positional input under key "x"), float32/int32, smallest sensible shapes.
  FAMILY = registry.register(registry.Family(...)): everything else the library asks of the
      family (modality, heads, inputs, pooling, preprocessing, ports); see registry.py.
The functions below look variants up through `registry`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxpretrain.models import registry
from jaxpretrain.models.registry import Family


def family_of(name: str) -> str:
  """The name of the family ('resnet', 'bert', 'vit'...) that defines variant `name`."""
  return registry.family_of(name).name


def get_family(name: str) -> Family:
  """The Family descriptor called `name` (a family name, not a variant)."""
  return registry.get(name)


def known_models() -> list[str]:
  return registry.known_models()


def build_model(name: str, **kwargs: Any) -> nn.Module:
  """The module for variant `name`, its defaults overridden by `kwargs`."""
  return registry.family_of(name).build(name, **kwargs)


def dummy_inputs(name: str, model: nn.Module, batch: int = 1) -> dict[str, Any]:
  """Keyword inputs for `model.init` (input under key 'x')."""
  return registry.family_of(name).dummy_inputs(model, batch=batch)


def init_variables(name: str, model: nn.Module, rng: jax.Array, batch: int = 1):
  """Freshly initialized variables of `model` (all collections)."""
  inputs = dummy_inputs(name, model, batch)
  x = inputs.pop("x")
  return model.init(rng, x, train=False, **inputs)


def variable_shapes(name: str, model: nn.Module):
  """Variables' shapes and dtypes without allocating them (jax.eval_shape of init)."""
  return jax.eval_shape(lambda: init_variables(name, model, jax.random.key(0)))
