"""torchvision ConvNeXt state dicts <-> jaxpretrain.models.convnext.

    python -m ports.convert convnext_tiny.pth out/convnext_tiny --arch convnext_tiny

torchvision's `features` alternates stages (odd indices, CNBlocks) and downsamples (even
indices > 0: LayerNorm2d then a 2x2 conv); features.0 is the stem (conv then LayerNorm2d). The
stem's rules come first: the applier takes the first rule that matches, in both directions,
and `features.{s}.0.weight` (a downsample's LayerNorm) would match the stem's conv too. Each
block's `layer_scale` is [dim, 1, 1] in torch and [dim] here. Nothing is ignored: ConvNeXt
has no BatchNorm counters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxpretrain.models import convnext
from ports.base import Converted, Exported
from ports.rules import CONV, LINEAR, PortError, Rule, Transform, convert, export
from ports.torchvision_resnet import IMAGENET_NUM_CLASSES, imagenet_classes

ARCHS = tuple(convnext.VARIANTS)
PREPROCESSING = dict(convnext.FAMILY_INFO["preprocessing"])

# torch's layer_scale [dim, 1, 1] (broadcast over NCHW) <-> [dim] (over NHWC's last axis).
SQUEEZE_HW = Transform("squeeze_hw", lambda a: a.reshape(a.shape[0]),
                       lambda a: a.reshape(a.shape[0], 1, 1))


def _ln(src: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.weight", f"params/{dst}/scale"), Rule(f"{src}.bias", f"params/{dst}/bias")]


def _conv(src: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.weight", f"params/{dst}/kernel", CONV),
          Rule(f"{src}.bias", f"params/{dst}/bias")]


def _linear(src: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.weight", f"params/{dst}/kernel", LINEAR),
          Rule(f"{src}.bias", f"params/{dst}/bias")]


TABLE = (
    *_conv("features.0.0", "features_0_0"),  # stem first (see the module docstring)
    *_ln("features.0.1", "features_0_1"),
    *_conv("features.{s}.{j}.block.0", "features_{s}_{j}/block_0"),
    *_ln("features.{s}.{j}.block.2", "features_{s}_{j}/block_2"),
    *_linear("features.{s}.{j}.block.3", "features_{s}_{j}/block_3"),
    *_linear("features.{s}.{j}.block.5", "features_{s}_{j}/block_5"),
    Rule("features.{s}.{j}.layer_scale", "params/features_{s}_{j}/layer_scale", SQUEEZE_HW),
    *_ln("features.{s}.0", "features_{s}_0"),  # downsample
    *_conv("features.{s}.1", "features_{s}_1"),
    *_ln("classifier.0", "classifier_0"),
    *_linear("classifier.2", "classifier_2"),
)
IGNORED = ()


def describe(weights: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
  """(dims, depths) the keys and the block widths imply, or None when not a ConvNeXt."""
  blocks: dict[int, dict[int, int]] = {}
  for key, value in weights.items():
    m = re.fullmatch(r"features\.(\d+)\.(\d+)\.block\.0\.weight", key)
    if m:
      blocks.setdefault(int(m[1]), {})[int(m[2])] = int(np.shape(value)[0])
  if not blocks:
    return None
  stages = sorted(blocks)
  return {"dims": tuple(blocks[s][0] for s in stages),
          "depths": tuple(max(blocks[s]) + 1 for s in stages)}


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: dict | None = None,
                   arch: str | None = None) -> Converted:
  """A torchvision ConvNeXt state dict -> a Converted (num_classes from classifier.2)."""
  if hf_config is not None:
    raise PortError("torchvision state dicts have no Hugging Face config")
  if arch not in ARCHS:
    raise PortError(f"unknown torchvision arch {arch!r}; known: {', '.join(ARCHS)}")
  found = describe(weights)
  want = {k: tuple(convnext.VARIANTS[arch][k]) for k in ("dims", "depths")}
  if found is not None and found != want:
    alike = [a for a in ARCHS if {k: tuple(convnext.VARIANTS[a][k]) for k in want} == found]
    raise PortError(
        f"the state dict is not a torchvision {arch} (dims {list(want['dims'])}, blocks per "
        f"stage {list(want['depths'])}): it has dims {list(found['dims'])}, blocks per stage "
        f"{list(found['depths'])}" + (f"; pass --arch {alike[0]}" if alike else ""))
  num_classes = (int(np.shape(weights["classifier.2.weight"])[0])
                 if "classifier.2.weight" in weights else None)
  return Converted(model=arch, model_kwargs={"num_classes": num_classes},
                   flat_variables=convert(TABLE, weights, IGNORED),
                   source={"format": "torchvision", "arch": arch},
                   preprocessing=dict(PREPROCESSING,
                                      resize_size=_resize_size(arch)),
                   class_names=(imagenet_classes() if num_classes == IMAGENET_NUM_CLASSES
                                else None))


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint -> the torchvision state dict it came from."""
  del config  # the table alone names everything
  return Exported(state_dict=export(TABLE, flat_variables))


def _resize_size(arch: str) -> int:
  return convnext.FAMILY_INFO["resize_size_by_variant"][arch]
