"""Model registry: a model is a name plus keyword arguments, both stored in checkpoints.

Each family module (resnet.py, bert.py, vit.py) defines:
  VARIANTS: dict[str, dict]    named variants -> default constructor kwargs (a literal table)
  build(name, **kwargs) -> nn.Module
  dummy_inputs(model, batch=1) -> dict of keyword arguments for `model.init` / `apply`
      (positional input under key "x"), float32/int32, smallest sensible shapes.
"""

from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn
import jax

# family -> module; variants are looked up in each family's VARIANTS table.
_FAMILIES = {
    "resnet": "jaxpretrain.models.resnet",
    "bert": "jaxpretrain.models.bert",
    "vit": "jaxpretrain.models.vit",
    "vgg": "jaxpretrain.models.vgg",
    "convnext": "jaxpretrain.models.convnext",
    "efficientnet": "jaxpretrain.models.efficientnet",
    "dinov2": "jaxpretrain.models.dinov2",
    "distilbert": "jaxpretrain.models.distilbert",
    "clip": "jaxpretrain.models.clip",
}


def _family_module(family: str):
  return importlib.import_module(_FAMILIES[family])


def family_of(name: str) -> str:
  """The family ('resnet', 'bert', 'vit') that defines variant `name`."""
  for family in _FAMILIES:
    if name in getattr(_family_module(family), "VARIANTS", {}):
      return family
  raise ValueError(f"unknown model '{name}'; known: {sorted(known_models())}")


def known_models() -> list[str]:
  names = []
  for family in _FAMILIES:
    names += list(getattr(_family_module(family), "VARIANTS", {}))
  return names


def build_model(name: str, **kwargs: Any) -> nn.Module:
  """The module for variant `name`, its defaults overridden by `kwargs`."""
  return _family_module(family_of(name)).build(name, **kwargs)


def dummy_inputs(name: str, model: nn.Module, batch: int = 1) -> dict[str, Any]:
  """Keyword inputs for `model.init` (input under key 'x')."""
  return _family_module(family_of(name)).dummy_inputs(model, batch=batch)


def init_variables(name: str, model: nn.Module, rng: jax.Array, batch: int = 1):
  """Freshly initialized variables of `model` (all collections)."""
  inputs = dummy_inputs(name, model, batch)
  x = inputs.pop("x")
  return model.init(rng, x, train=False, **inputs)


def variable_shapes(name: str, model: nn.Module):
  """Variables' shapes and dtypes without allocating them (jax.eval_shape of init)."""
  return jax.eval_shape(lambda: init_variables(name, model, jax.random.key(0)))
