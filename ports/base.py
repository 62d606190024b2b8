"""What every port provides, and the generic steps around it (check, save, load back).

A port module (torchvision_resnet.py, hf_bert.py, hf_vit.py) defines:

  def to_jaxpretrain(weights, *, hf_config=None, arch=None) -> Converted
      source-named arrays (a Mapping, possibly memory-mapped) -> a Converted, using its rule
      table and `ports.rules.convert`.
  def from_jaxpretrain(config, flat_variables) -> Exported
      a checkpoint's config.json and its '/'-joined variables -> source-named arrays (the same
      table through `ports.rules.export`) and, for Hugging Face, a config.json dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ports.rules import PortError, check_shapes


@dataclasses.dataclass
class Converted:
  model: str                       # registry name, e.g. "resnet50", "bert", "vit"
  model_kwargs: dict[str, Any]     # constructor arguments
  flat_variables: dict[str, np.ndarray]  # {'params/...': array, 'batch_stats/...': array}
  source: dict[str, Any] = dataclasses.field(default_factory=dict)  # provenance, for export
  preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
  class_names: list[str] | None = None  # the head's class names (index = class id), if known


@dataclasses.dataclass
class Exported:
  state_dict: dict[str, np.ndarray]
  hf_config: dict[str, Any] | None = None  # None for torchvision state dicts


def expected_shapes(model: str, model_kwargs: Mapping[str, Any]) -> dict[str, tuple]:
  """'/'-joined variable paths of the built model -> shapes, from jax.eval_shape (no memory)."""
  from jaxpretrain import models, params  # noqa: PLC0415

  try:
    module = models.build_model(model, **model_kwargs)
  except TypeError as e:
    raise PortError(f"model '{model}' does not take arguments {dict(model_kwargs)}: {e}") from None
  shapes = models.variable_shapes(model, module)
  return {k: tuple(v.shape) for k, v in params.flatten(dict(shapes)).items()}


def check(converted: Converted) -> None:
  """Fails with every missing, unexpected and mis-shaped path listed."""
  check_shapes(converted.flat_variables, expected_shapes(converted.model, converted.model_kwargs))
