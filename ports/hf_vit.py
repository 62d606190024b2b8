"""Hugging Face ViT checkpoints <-> jaxpretrain `vit` (models/vit.py).

    python -m ports.convert path/to/vit-base-patch16-224 out/vit
    python -m ports.export out/vit exported/      # transformers.AutoModel loads it

Architectures: ViTModel (with or without its pooler) and ViTForImageClassification. Tensor
names are those transformers writes (`encoder.layer.{i}.attention.attention.query`, …; it
renames them to `layers.{i}.attention.q_proj` only in memory). Backbone tensors may carry the
`vit.` prefix (head models) or not (ViTModel); export writes back what came in. The patch
projection is a torch Conv2d (OIHW -> HWIO). A classifier's id2label becomes the checkpoint's
`class_names`, and export writes a checkpoint's class_names back as id2label/label2id.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxpretrain import safe_io
from jaxpretrain.safe_io import short
from ports import hf_common
from ports.base import Converted, Exported
from ports.rules import CONV, PortError, Rule

MODEL = "vit"  # registry name (jaxpretrain/models/vit.py)
ARCHITECTURES = {"ViTModel": None, "ViTForImageClassification": "classification"}
EXPORT_ARCHITECTURE = {None: "ViTModel", "classification": "ViTForImageClassification"}
CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                 "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias",
                 "pooler_output_size", "pooler_act", "initializer_range")
# ViTImageProcessor's defaults when a folder has no preprocessor_config.json.
DEFAULT_MEAN, DEFAULT_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def rules(prefixed: bool) -> list[Rule]:
  """The rule table: Hugging Face names (with `vit.` if `prefixed`) <-> Flax paths."""
  p = "vit." if prefixed else ""
  layer, dst = p + "encoder.layer.{i}.", "params/encoder/layer_{i}/"
  return [
      Rule(p + "embeddings.cls_token", "params/embeddings/cls_token"),
      Rule(p + "embeddings.position_embeddings", "params/embeddings/position_embeddings"),
      Rule(p + "embeddings.patch_embeddings.projection.weight",
           "params/embeddings/patch_embeddings/kernel", CONV),
      Rule(p + "embeddings.patch_embeddings.projection.bias",
           "params/embeddings/patch_embeddings/bias"),
      *_norm(layer + "layernorm_before", dst + "attention_norm"),
      *_dense(layer + "attention.attention.query", dst + "attention/query"),
      *_dense(layer + "attention.attention.key", dst + "attention/key"),
      *_dense(layer + "attention.attention.value", dst + "attention/value"),
      *_dense(layer + "attention.output.dense", dst + "attention/out"),
      *_norm(layer + "layernorm_after", dst + "mlp_norm"),
      *_dense(layer + "intermediate.dense", dst + "mlp/fc1"),
      *_dense(layer + "output.dense", dst + "mlp/fc2"),
      *_norm(p + "layernorm", "params/final_norm"),
      *_dense(p + "pooler.dense", "params/pooler"),
      *_dense("classifier", "params/classifier"),
  ]


_dense, _norm = hf_common.dense, hf_common.norm


def model_kwargs(hf_config: Mapping[str, Any], head: str | None, pooler: bool) -> dict[str, Any]:
  """config.json -> `ViT` constructor arguments (every field spelled out)."""
  from jaxpretrain.models import transformer, vit  # noqa: PLC0415

  defaults = vit.ViT()
  kw = {f: hf_config[f] if f in hf_config else getattr(defaults, f) for f in CONFIG_FIELDS}
  for field in ("hidden_act", "pooler_act"):
    if kw[field] not in transformer.ACTIVATIONS:
      raise PortError(f"config.json: {field} {short(kw[field])} is not supported; known: "
                      f"{sorted(transformer.ACTIVATIONS)}")
  kw.update(pooler=pooler, head=head,
            num_labels=hf_common.num_labels(hf_config) if head else defaults.num_labels)
  return kw


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: Mapping[str, Any] | None = None,
                   arch: str | None = None) -> Converted:
  """A Hugging Face ViT state dict and its config.json -> Converted."""
  model_type = hf_common.checked_model_type(hf_config, "ViT", ("vit",))
  name = hf_common.architecture_name(hf_config, arch, weights, ARCHITECTURES)
  prefixed = hf_common.detect_prefix(weights, "vit.", "embeddings.cls_token")
  p = "vit." if prefixed else ""
  kw = model_kwargs(hf_config, ARCHITECTURES[name], pooler=p + "pooler.dense.weight" in weights)
  return hf_common.converted(
      MODEL, kw, rules(prefixed), weights, hf_config, name=name, model_type=model_type,
      prefixed=prefixed, preprocessing=preprocessing(kw["image_size"], kw["num_channels"]),
      class_names=hf_common.class_names(hf_config, kw["num_labels"]) if kw["head"] else None)


# PIL resampling ids (`resample` in preprocessor_config.json) -> jaxpretrain.preprocess names.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
MAX_PROCESSOR_CONFIG_BYTES = safe_io.MAX_CONFIG_BYTES  # a side file like config.json


def preprocessing(image_size: Any, num_channels: int = 3) -> dict[str, Any]:
  """ViTImageProcessor's defaults for a model of `image_size` (no preprocessor_config.json)."""
  size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
  return {"kind": "image", "resize": {"size": size}, "interpolation": "bilinear",
          "antialias": True, "crop": None, "crop_offset": "floor", "rescale": 1 / 255,
          "mean": DEFAULT_MEAN[:num_channels], "std": DEFAULT_STD[:num_channels],
          "channels": num_channels, "image_size": size}


def folder_preprocessing(folder: str | os.PathLike) -> dict[str, Any]:
  """The preprocessing record of a folder's preprocessor_config.json ({} without one).

  Reads what Hugging Face's image processors (ViTImageProcessor and the like) apply:
  do_resize/size (height x width or shortest_edge)/resample, do_center_crop/crop_size,
  do_rescale/rescale_factor, do_normalize/image_mean/image_std. Values are validated (types,
  ranges, sizes); anything this cannot reproduce is an error naming the key.
  """
  from jaxpretrain import preprocess  # noqa: PLC0415
  from ports import readers  # noqa: PLC0415

  real = readers.side_file(folder, PREPROCESSOR_CONFIG)  # inside the folder, regular
  if real is None:
    return {}
  path = pathlib.Path(folder) / PREPROCESSOR_CONFIG
  cfg = safe_io.read_json(real, MAX_PROCESSOR_CONFIG_BYTES, readers.CheckpointError,
                          where=str(path))
  if not isinstance(cfg, dict):
    raise PortError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
  try:
    return preprocess.normalize_record(_record(cfg))
  except (PortError, ValueError) as e:  # values from a stranger: never echoed at length
    raise PortError(f"{path}: {short(str(e), 200)}") from None


def _record(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """preprocessor_config.json (a dict) -> a preprocessing record (validated by the caller)."""
  for key in ("crop_pct", "do_pad", "longest_edge"):
    if cfg.get(key) not in (None, False):
      raise PortError(f"{key}={cfg[key]!r} is not supported")
  resize = None
  if _flag(cfg, "do_resize", True):
    size = cfg.get("size", {"height": 224, "width": 224})
    if isinstance(size, int) and not isinstance(size, bool):
      resize = {"size": [size, size]}
    elif isinstance(size, dict) and set(size) >= {"height", "width"}:
      resize = {"size": [size["height"], size["width"]]}
    elif isinstance(size, dict) and "shortest_edge" in size and "longest_edge" not in size:
      resize = {"shorter": size["shortest_edge"]}
    else:
      raise PortError(f"size={size!r}; allowed: N, {{height, width}} or {{shortest_edge}}")
  resample = cfg.get("resample", 2)
  if isinstance(resample, bool) or resample not in PIL_RESAMPLE:
    raise PortError(f"resample={resample!r}; allowed: {PIL_RESAMPLE}")
  crop = None
  if _flag(cfg, "do_center_crop", False):
    crop = cfg.get("crop_size")
    if isinstance(crop, dict) and set(crop) >= {"height", "width"}:
      crop = [crop["height"], crop["width"]]
  rescale = cfg.get("rescale_factor", 1 / 255) if _flag(cfg, "do_rescale", True) else 1.0
  mean, std = cfg.get("image_mean", DEFAULT_MEAN), cfg.get("image_std", DEFAULT_STD)
  if not _flag(cfg, "do_normalize", True):
    mean, std = [0.0], [1.0]
  return {"kind": "image", "resize": resize, "interpolation": PIL_RESAMPLE[resample],
          "antialias": True, "crop": crop, "crop_offset": "floor", "rescale": rescale,
          "mean": mean, "std": std, "channels": 3}


def _flag(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
  value = cfg.get(key)
  if value is None:
    return default
  if not isinstance(value, bool):
    raise PortError(f"{key}={value!r}; allowed: true, false")
  return value


def hf_config_for(model_kwargs: Mapping[str, Any], source: Mapping[str, Any],
                  class_names: list[str] | None = None) -> dict[str, Any]:
  """config.json for a `vit` model: the source's config updated with the model's fields."""
  cfg = hf_common.export_config(
      model_kwargs, source, CONFIG_FIELDS, model_type="vit",
      architecture=EXPORT_ARCHITECTURE[model_kwargs.get("head")], class_names=class_names)
  if cfg["pooler_output_size"] is None:
    cfg["pooler_output_size"] = model_kwargs["hidden_size"]
  return cfg


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint's config.json and variables -> Hugging Face names and config."""
  from jaxpretrain.models import vit  # noqa: PLC0415

  return hf_common.exported(config, flat_variables, vit.build,
                            lambda kw, source, prefixed: rules(prefixed), hf_config_for)
