"""Hugging Face DINOv2 checkpoints (with or without registers) <-> jaxpretrain `dinov2`.

    python -m ports.convert path/to/dinov2-small out/dinov2
    python -m ports.export out/dinov2 exported/      # transformers.AutoModel loads it

Architectures: Dinov2Model, Dinov2ForImageClassification, Dinov2WithRegistersModel and
Dinov2WithRegistersForImageClassification (model_type "dinov2" / "dinov2_with_registers").
Tensor names are those transformers writes (`encoder.layer.{i}.attention.attention.query`,
`layer_scale1.lambda1`; it renames them only in memory). Backbone tensors carry the base prefix
(`dinov2.`, `dinov2_with_registers.`) in head models. Not covered, with an error naming the
field: SwiGLU MLPs (use_swiglu_ffn) and activations jaxpretrain does not have.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ports import hf_common
from ports.base import Converted, Exported
from ports.rules import CONV, PortError, Rule

MODEL = "dinov2"  # registry name (jaxpretrain/models/dinov2.py)
MODEL_TYPES = ("dinov2", "dinov2_with_registers")
PREFIX = {"dinov2": "dinov2.", "dinov2_with_registers": "dinov2_with_registers."}
ARCHITECTURES = {
    "Dinov2Model": ("dinov2", None),
    "Dinov2ForImageClassification": ("dinov2", "classification"),
    "Dinov2WithRegistersModel": ("dinov2_with_registers", None),
    "Dinov2WithRegistersForImageClassification": ("dinov2_with_registers", "classification"),
}
EXPORT_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()}
CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio",
                 "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                 "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias",
                 "layerscale_value", "initializer_range")
# facebook/dinov2-* preprocessor_config.json: crop 224, ImageNet mean/std.
DEFAULT_PREPROCESSING = {"image_size": [224, 224], "mean": [0.485, 0.456, 0.406],
                         "std": [0.229, 0.224, 0.225], "rescale": 1 / 255, "layout": "NHWC"}


def rules(prefix: str) -> list[Rule]:
  """The rule table: Hugging Face names (backbone under `prefix`, '' for bare) <-> Flax paths."""
  p, e = prefix, "params/embeddings/"
  layer, dst = prefix + "encoder.layer.{i}.", "params/encoder/layer_{i}/"
  return [
      Rule(p + "embeddings.cls_token", e + "cls_token"),
      Rule(p + "embeddings.mask_token", e + "mask_token"),
      Rule(p + "embeddings.register_tokens", e + "register_tokens"),
      Rule(p + "embeddings.position_embeddings", e + "position_embeddings"),
      Rule(p + "embeddings.patch_embeddings.projection.weight", e + "patch_embeddings/kernel",
           CONV),
      Rule(p + "embeddings.patch_embeddings.projection.bias", e + "patch_embeddings/bias"),
      *_norm(layer + "norm1", dst + "attention_norm"),
      *_dense(layer + "attention.attention.query", dst + "attention/query"),
      *_dense(layer + "attention.attention.key", dst + "attention/key"),
      *_dense(layer + "attention.attention.value", dst + "attention/value"),
      *_dense(layer + "attention.output.dense", dst + "attention/out"),
      Rule(layer + "layer_scale1.lambda1", dst + "layer_scale1"),
      *_norm(layer + "norm2", dst + "mlp_norm"),
      *_dense(layer + "mlp.fc1", dst + "mlp/fc1"),
      *_dense(layer + "mlp.fc2", dst + "mlp/fc2"),
      Rule(layer + "layer_scale2.lambda1", dst + "layer_scale2"),
      *_norm(p + "layernorm", "params/layernorm"),
      *_dense("classifier", "params/classifier"),
  ]


_dense, _norm = hf_common.dense, hf_common.norm


def architecture(hf_config: Mapping[str, Any], weights: Mapping[str, Any],
                 arch: str | None) -> str:
  """`arch`, else config.json's first architecture, else guessed from the head tensors."""
  model_type = hf_config["model_type"]
  name = arch or (hf_config.get("architectures") or [None])[0]
  if name is None:
    head = "classification" if "classifier.weight" in weights else None
    return EXPORT_ARCHITECTURE[(model_type, head)]
  if name not in ARCHITECTURES:
    raise PortError(f"config.json: architecture '{name}' is not supported; known: "
                    f"{sorted(ARCHITECTURES)}")
  if ARCHITECTURES[name][0] != model_type:
    raise PortError(f"config.json: architecture '{name}' does not fit model_type '{model_type}'")
  return name


def model_kwargs(hf_config: Mapping[str, Any], head: str | None) -> dict[str, Any]:
  """config.json -> `Dinov2` constructor arguments (every field spelled out)."""
  from jaxpretrain.models import dinov2, transformer  # noqa: PLC0415

  if hf_config.get("use_swiglu_ffn"):
    raise PortError(f"config.json: use_swiglu_ffn {hf_config['use_swiglu_ffn']!r} (SwiGLU MLP) "
                    "is not supported; known: false")
  defaults = dinov2.Dinov2()
  kw = {f: hf_config[f] if f in hf_config else getattr(defaults, f) for f in CONFIG_FIELDS}
  if kw["hidden_act"] not in transformer.ACTIVATIONS:
    raise PortError(f"config.json: hidden_act {kw['hidden_act']!r} is not supported; known: "
                    f"{sorted(transformer.ACTIVATIONS)}")
  for field in ("image_size", "patch_size"):
    if isinstance(kw[field], list):
      kw[field] = tuple(kw[field])
  if not isinstance(kw["patch_size"], int):
    if len(set(kw["patch_size"])) != 1:
      raise PortError(f"config.json: patch_size {list(kw['patch_size'])} is not supported; "
                      "known: square patches")
    kw["patch_size"] = kw["patch_size"][0]
  registers = hf_config["model_type"] == "dinov2_with_registers"
  kw.update(
      use_mask_token=True if registers else bool(hf_config.get("use_mask_token", True)),
      num_register_tokens=int(hf_config.get("num_register_tokens", 4)) if registers else 0,
      interpolate_antialias=registers,  # as each transformers model resizes its positions
      head=head, num_labels=hf_common.num_labels(hf_config) if head else defaults.num_labels)
  return kw


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: Mapping[str, Any] | None = None,
                   arch: str | None = None) -> Converted:
  """A Hugging Face DINOv2 state dict and its config.json -> Converted."""
  model_type = hf_common.checked_model_type(hf_config, "DINOv2", MODEL_TYPES)
  name = architecture(hf_config, weights, arch)
  prefixed = hf_common.detect_prefix(weights, PREFIX[model_type], "embeddings.cls_token")
  kw = model_kwargs(hf_config, ARCHITECTURES[name][1])
  size = kw["image_size"]
  return hf_common.converted(
      MODEL, kw, rules(PREFIX[model_type] if prefixed else ""), weights, hf_config, name=name,
      model_type=model_type, prefixed=prefixed,
      preprocessing={**DEFAULT_PREPROCESSING,
                     "trained_image_size": [size, size] if isinstance(size, int) else list(size)})


def folder_preprocessing(folder: str | os.PathLike) -> dict[str, Any]:
  """mean/std/rescale and the crop size from a folder's preprocessor_config.json ({} without)."""
  from ports import hf_vit  # noqa: PLC0415

  out = hf_vit.folder_preprocessing(folder)
  out.pop("image_size", None)  # BitImageProcessor's `size` is the shortest edge before cropping
  path = pathlib.Path(folder) / "preprocessor_config.json"
  if path.is_file():
    crop = json.loads(path.read_text()).get("crop_size")
    if isinstance(crop, dict) and {"height", "width"} <= set(crop):
      out["image_size"] = [crop["height"], crop["width"]]
  return out


def hf_config_for(model_kwargs: Mapping[str, Any], source: Mapping[str, Any],
                  class_names: list[str] | None = None) -> dict[str, Any]:
  """config.json for a `dinov2` model: the source's config updated with the model's fields."""
  registers = model_kwargs["num_register_tokens"] > 0
  model_type = "dinov2_with_registers" if registers else "dinov2"
  cfg = hf_common.export_config(
      model_kwargs, source, CONFIG_FIELDS, model_type=model_type,
      architecture=EXPORT_ARCHITECTURE[(model_type, model_kwargs.get("head"))],
      class_names=class_names)
  if isinstance(cfg["image_size"], tuple):
    cfg["image_size"] = list(cfg["image_size"])
  cfg["use_swiglu_ffn"] = False
  if registers:
    cfg["num_register_tokens"] = model_kwargs["num_register_tokens"]
  else:
    cfg["use_mask_token"] = model_kwargs["use_mask_token"]
  return cfg


def _export_rules(kw: Mapping[str, Any], source: Mapping[str, Any], prefixed: bool) -> list[Rule]:
  """The rule table export writes with; an error for a model no Hugging Face DINOv2 matches."""
  if kw["interpolate_antialias"] != (kw["num_register_tokens"] > 0):
    raise PortError("no Hugging Face DINOv2 resizes positions this way: "
                    f"interpolate_antialias={kw['interpolate_antialias']} with "
                    f"num_register_tokens={kw['num_register_tokens']}")
  model_type = "dinov2_with_registers" if kw["num_register_tokens"] else "dinov2"
  return rules(PREFIX[model_type] if prefixed else "")


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint's config.json and variables -> Hugging Face names and config."""
  from jaxpretrain.models import dinov2  # noqa: PLC0415

  return hf_common.exported(config, flat_variables, dinov2.build, _export_rules, hf_config_for)
