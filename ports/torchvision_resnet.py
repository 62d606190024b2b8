"""torchvision ResNet / ResNeXt / Wide ResNet state dicts <-> jaxpretrain.models.resnet.

    python -m ports.convert resnet50-11ad3fa6.pth out/resnet50 --arch resnet50
    python -m ports.export out/resnet50 resnet50.safetensors

One rule table serves both directions. `num_batches_tracked` is ignored when converting (the
Flax BatchNorm has no counter; torchvision's momentum=0.1 never reads it) and written back as
int64 zeros on export, so `load_state_dict(strict=True)` accepts the result. The round trip is
bit-exact for every other tensor. The checkpoint records torchvision's eval transforms for the
weights (`eval_preprocessing`) and, for a 1000-way fc, ImageNet's category names.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxpretrain.safe_io import check_value
from ports.base import Converted, Exported
from ports.rules import CONV, LINEAR, PortError, Rule, check_shapes, convert, export

# torchvision's resnet.py architectures; the model side is jaxpretrain.models.resnet.VARIANTS.
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
         "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")

# torchvision's ImageNet eval transforms (torchvision.transforms._presets.ImageClassification):
# resize the shorter side (bilinear, antialiased), center-crop, scale to [0, 1], normalize per
# RGB channel. Every ResNet's IMAGENET1K_V1 weights use resize 256 / crop 224, except
# resnext101_64x4d, whose only weights use 232 (torchvision/models/resnet.py).
RESIZE_SIZE, CROP_SIZE = 256, 224
ARCH_RESIZE_SIZE = {"resnext101_64x4d": 232}
# torchvision's weight files (the file name of each `url` in torchvision/models/resnet.py)
# whose transforms differ from their arch's default: the IMAGENET1K_V2 weights, resize 232.
# A file keeping its download name gets its own transforms; tests check this table against
# torchvision's weights enums.
FILE_RESIZE_SIZE = {
    "resnet50-11ad3fa6": 232, "resnet101-cd907fc2": 232, "resnet152-f82ba261": 232,
    "resnext50_32x4d-1a0047aa": 232, "resnext101_32x8d-110c445d": 232,
    "wide_resnet50_2-9ba9bcbe": 232, "wide_resnet101_2-d733dc28": 232,
}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# The 1,000 ImageNet-1k category names in class-index order, as torchvision ships them
# (torchvision.models._meta._IMAGENET_CATEGORIES), copied so that no conversion needs torch.
IMAGENET_CLASSES_FILE = pathlib.Path(__file__).with_name("imagenet_classes.json")
IMAGENET_NUM_CLASSES = 1000


def eval_preprocessing(arch: str, filename: str | None = None, *, resize_size: int | None = None,
                       crop_size: int | None = None) -> dict[str, Any]:
  """The preprocessing record (jaxpretrain.preprocess) of torchvision's eval transforms.

  Args:
    arch: one of ARCHS.
    filename: the weights file's name; torchvision's own names select their weights'
      transforms (FILE_RESIZE_SIZE).
    resize_size, crop_size: overrides (`python -m ports.convert --resize_size/--crop_size`).
  """
  stem = pathlib.Path(filename).name.split(".")[0] if filename else ""
  resize = resize_size or FILE_RESIZE_SIZE.get(stem) or ARCH_RESIZE_SIZE.get(arch, RESIZE_SIZE)
  crop = crop_size or CROP_SIZE
  for name, value in (("resize_size", resize), ("crop_size", crop)):
    if not isinstance(value, int) or not 1 <= value <= 8192:
      raise PortError(f"{name}={value!r}; allowed: an integer in [1, 8192]")
  return {"kind": "image", "resize": {"shorter": resize}, "interpolation": "bilinear",
          "antialias": True, "crop": [crop, crop], "crop_offset": "round", "rescale": 1 / 255,
          "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channels": 3,
          "image_size": crop}


def imagenet_classes() -> list[str]:
  """ImageNet-1k's category names (index = class id)."""
  names = json.loads(IMAGENET_CLASSES_FILE.read_text(encoding="utf-8"))
  if len(names) != IMAGENET_NUM_CLASSES or not all(isinstance(n, str) for n in names):
    raise PortError(f"{IMAGENET_CLASSES_FILE}: expected {IMAGENET_NUM_CLASSES} names")
  return names


PREPROCESSING = eval_preprocessing("resnet50")


def _bn(src: str, dst: str) -> list[Rule]:
  """torch BatchNorm2d (weight, bias, running stats) -> Flax params and batch_stats."""
  return [Rule(f"{src}.weight", f"params/{dst}/scale"),
          Rule(f"{src}.bias", f"params/{dst}/bias"),
          Rule(f"{src}.running_mean", f"batch_stats/{dst}/mean"),
          Rule(f"{src}.running_var", f"batch_stats/{dst}/var")]


TABLE = (
    Rule("conv1.weight", "params/conv1/kernel", CONV),
    *_bn("bn1", "bn1"),
    Rule("layer{i}.{j}.conv{k}.weight", "params/layer{i}_{j}/conv{k}/kernel", CONV),
    *_bn("layer{i}.{j}.bn{k}", "layer{i}_{j}/bn{k}"),
    Rule("layer{i}.{j}.downsample.0.weight", "params/layer{i}_{j}/downsample_conv/kernel", CONV),
    *_bn("layer{i}.{j}.downsample.1", "layer{i}_{j}/downsample_bn"),
    Rule("fc.weight", "params/fc/kernel", LINEAR),
    Rule("fc.bias", "params/fc/bias"),
)
IGNORED = (r"(.+\.)?num_batches_tracked",)


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: dict | None = None,
                   arch: str | None = None) -> Converted:
  """A torchvision ResNet state dict -> a Converted checkpoint (shapes checked by the caller).

  Args:
    weights: torchvision names -> arrays (conv weights [out, in/groups, kh, kw], fc [out, in]).
    hf_config: unused (torchvision files carry no config); must be None.
    arch: torchvision architecture name, one of ARCHS.
  Returns:
    A Converted for model `arch` with num_classes from fc.weight (None without an fc).
  """
  if hf_config is not None:
    raise PortError("torchvision state dicts have no Hugging Face config")
  if arch not in ARCHS:
    raise PortError(f"unknown torchvision arch {arch!r}; known: {', '.join(ARCHS)}")
  flat = convert(TABLE, weights, IGNORED)  # checks every tensor's dtype and rank first
  num_classes = int(np.shape(weights["fc.weight"])[0]) if "fc.weight" in weights else None
  check_value("num_classes", num_classes, "'fc.weight' rows", PortError)
  converted = Converted(
      model=arch, model_kwargs={"num_classes": num_classes}, flat_variables=flat,
      source={"format": "torchvision", "arch": arch}, preprocessing=eval_preprocessing(arch),
      # A 1000-way fc is taken to be ImageNet-1k's, as every torchvision ResNet's weights.
      class_names=imagenet_classes() if num_classes == IMAGENET_NUM_CLASSES else None)
  _check_structure(weights, converted)
  return converted


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint -> the torchvision state dict it came from (plus zero counters)."""
  del config  # the table alone names everything; num_classes travels in fc's shape
  state_dict = export(TABLE, flat_variables)
  for key in [k for k in state_dict if k.endswith(".running_mean")]:
    counter = key.removesuffix("running_mean") + "num_batches_tracked"
    state_dict[counter] = np.zeros((), np.int64)
  return Exported(state_dict=state_dict)


def describe(weights: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
  """The structure a state dict implies (block, stage_sizes, groups, width_per_group), or None.

  Read from key names and two shapes only, so a wrong --arch is named before any model is built.
  """
  last_block = {}
  for key in weights:
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.conv1\.weight", key)
    if m:
      i, j = int(m[1]), int(m[2])
      last_block[i] = max(last_block.get(i, 0), j)
  if sorted(last_block) != [1, 2, 3, 4] or "layer1.0.conv2.weight" not in weights:
    return None
  block = "bottleneck" if "layer1.0.conv3.weight" in weights else "basic"
  groups, width_per_group = 1, 64
  if block == "bottleneck":
    out, in_per_group = np.shape(weights["layer1.0.conv2.weight"])[:2]
    if not in_per_group:
      return None
    groups = out // in_per_group
    width_per_group = out // groups  # layer1's planes are 64: width = 64 * wpg / 64 * groups
  return {"block": block, "stage_sizes": tuple(last_block[i] + 1 for i in (1, 2, 3, 4)),
          "groups": groups, "width_per_group": width_per_group}


def _arch_structure(arch: str) -> dict[str, Any]:
  from jaxpretrain.models import resnet  # noqa: PLC0415

  variant = {"groups": 1, "width_per_group": 64, **resnet.VARIANTS[arch]}
  return {k: tuple(variant[k]) if k == "stage_sizes" else variant[k]
          for k in ("block", "stage_sizes", "groups", "width_per_group")}


def _check_structure(weights: Mapping[str, np.ndarray], converted: Converted) -> None:
  """When the state dict is another architecture, says which, then lists the keys."""
  found = describe(weights)
  arch = converted.model
  if found is None or found == _arch_structure(arch):
    return  # the shape check after conversion lists whatever else is wrong
  alike = [a for a in ARCHS if _arch_structure(a) == found]
  hint = (f"the state dict is not a torchvision {arch} ({_fmt(_arch_structure(arch))}): it has "
          f"{_fmt(found)}, " + (f"like {alike[0]}; pass --arch {alike[0]}" if alike
                                else "like no torchvision ResNet"))
  from ports.base import expected_shapes  # noqa: PLC0415

  try:
    check_shapes(converted.flat_variables, expected_shapes(arch, converted.model_kwargs))
  except PortError as e:
    raise PortError(f"{hint}\n{e}") from None
  raise PortError(hint)


def _fmt(structure: Mapping[str, Any]) -> str:
  return (f"{structure['block']} blocks {list(structure['stage_sizes'])}, groups "
          f"{structure['groups']}, width_per_group {structure['width_per_group']}")
