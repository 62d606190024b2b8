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

import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxpretrain import safe_io
from jaxpretrain.safe_io import short
from ports import hf_common
from ports.base import Converted, Exported, expected_shapes
from ports.rules import CONV, LINEAR, PortError, Rule, convert, export

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


def _dense(src: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.weight", f"{dst}/kernel", LINEAR), Rule(f"{src}.bias", f"{dst}/bias")]


def _norm(src: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.weight", f"{dst}/scale"), Rule(f"{src}.bias", f"{dst}/bias")]


def architecture(hf_config: Mapping[str, Any], weights: Mapping[str, Any],
                 arch: str | None) -> str:
  """`arch`, else config.json's first architecture, else guessed from the head tensors."""
  name = arch or (hf_config.get("architectures") or [None])[0]
  if name is None:
    return "ViTForImageClassification" if "classifier.weight" in weights else "ViTModel"
  if name not in ARCHITECTURES:
    raise PortError(f"config.json: architecture '{name}' is not supported; known: "
                    f"{sorted(ARCHITECTURES)}")
  return name


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
  if not hf_config:
    raise PortError("a Hugging Face ViT checkpoint needs its config.json")
  if hf_config.get("model_type") != "vit":
    raise PortError(f"config.json: model_type {hf_config.get('model_type')!r} is not 'vit'")
  where = hf_common.describe(weights)
  name = architecture(hf_config, weights, arch)
  prefixed = hf_common.detect_prefix(weights, "vit.", "embeddings.cls_token")
  p = "vit." if prefixed else ""
  kw = model_kwargs(hf_config, ARCHITECTURES[name], pooler=p + "pooler.dense.weight" in weights)
  table = rules(prefixed)
  hf_common.check_against_config(
      weights, hf_common.source_shapes(table, expected_shapes(MODEL, kw)), (), where)
  size = kw["image_size"]
  return Converted(
      model=MODEL, model_kwargs=kw, flat_variables=convert(table, weights),
      source={"format": "huggingface", "model_type": "vit",
              "architectures": list(hf_config.get("architectures") or [name]),
              "hf_config": dict(hf_config), "prefixed": prefixed},
      preprocessing={"image_size": [size, size] if isinstance(size, int) else list(size),
                     "mean": DEFAULT_MEAN, "std": DEFAULT_STD, "rescale": 1 / 255,
                     "layout": "NHWC"},
      class_names=hf_common.class_names(hf_config, kw["num_labels"]) if kw["head"] else None)


def folder_preprocessing(folder: str | os.PathLike) -> dict[str, Any]:
  """mean/std/image_size/rescale from a folder's preprocessor_config.json ({} without one).

  Read through the same validating layer as config.json; every value used is checked.
  """
  from ports import readers  # noqa: PLC0415

  real = readers.side_file(folder, PREPROCESSOR_CONFIG)
  if real is None:
    return {}
  where = str(pathlib.Path(folder) / PREPROCESSOR_CONFIG)
  cfg = safe_io.read_json(real, safe_io.MAX_CONFIG_BYTES, readers.CheckpointError, where=where)
  if not isinstance(cfg, dict):
    raise PortError(f"{where}: a JSON {type(cfg).__name__}, not an object of settings")
  out = {}
  for src, dst in (("image_mean", "mean"), ("image_std", "std")):
    if src in cfg:
      out[dst] = _channel_values(cfg[src], f"{where}: {src}")
  if cfg.get("do_normalize") is False:
    out["mean"], out["std"] = [0.0] * 3, [1.0] * 3
  size = cfg.get("size")
  if isinstance(size, dict) and {"height", "width"} <= set(size):
    out["image_size"] = [size["height"], size["width"]]
  elif size is not None and not isinstance(size, dict):
    out["image_size"] = [size, size]
  if "image_size" in out:
    safe_io.check_value("image_size", out["image_size"], f"{where}: size", PortError)
  if "rescale_factor" in cfg:
    factor = cfg["rescale_factor"]
    if not (isinstance(factor, (int, float)) and not isinstance(factor, bool)
            and math.isfinite(factor) and 0 < factor <= 1):
      raise PortError(f"{where}: rescale_factor={short(factor)}; allowed: a number in (0, 1]")
    out["rescale"] = factor if cfg.get("do_rescale", True) else 1.0
  return out


def _channel_values(values: Any, where: str) -> list[float]:
  """image_mean / image_std: 1 to 4 finite numbers (one per channel)."""
  if not (isinstance(values, list) and 1 <= len(values) <= 4
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  for v in values)):
    raise PortError(f"{where}={short(values)}; allowed: a list of 1-4 finite numbers")
  return [float(v) for v in values]


def hf_config_for(model_kwargs: Mapping[str, Any], source: Mapping[str, Any],
                  class_names: list[str] | None = None) -> dict[str, Any]:
  """config.json for a `vit` model: the source's config updated with the model's fields."""
  head = model_kwargs.get("head")
  cfg = dict(source.get("hf_config") or {})
  cfg.update({f: model_kwargs[f] for f in CONFIG_FIELDS})
  if cfg["pooler_output_size"] is None:
    cfg["pooler_output_size"] = model_kwargs["hidden_size"]
  cfg["model_type"] = "vit"
  cfg["architectures"] = [EXPORT_ARCHITECTURE[head]]
  if head == "classification":
    hf_common.set_num_labels(cfg, model_kwargs["num_labels"], class_names)
  return cfg


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint's config.json and variables -> Hugging Face names and config."""
  from jaxpretrain.models import vit  # noqa: PLC0415

  kw = hf_common.module_fields(vit.build(config["model"], **config["model_kwargs"]))
  source = config.get("source") or {}
  # ViTForImageClassification needs `vit.` for transformers to find the backbone.
  prefixed = bool(source.get("prefixed")) or kw["head"] is not None
  state = export(rules(prefixed), flat_variables)
  return Exported(state_dict=state,
                  hf_config=hf_config_for(kw, source, config.get("class_names")))
