"""Hugging Face CLIP checkpoints <-> jaxpretrain `clip` (models/clip.py).

    python -m ports.convert path/to/clip-vit-base-patch32 out/clip
    python -m ports.export out/clip exported/      # transformers.AutoModel loads it

Architectures: CLIPModel (both towers, projections, logit_scale) and
CLIPForImageClassification (the image tower and a classifier). config.json nests
`text_config` and `vision_config`; their fields become the model's `text_*` / `vision_*` fields
(missing ones take transformers' defaults). Not covered, with an error naming the field:
activations jaxpretrain does not have, a list of eos_token_ids, non-square image or patch sizes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ports import hf_common
from ports.base import Converted, Exported
from ports.rules import CONV, LINEAR, PortError, Rule

MODEL = "clip"  # registry name (jaxpretrain/models/clip.py)
ARCHITECTURES = {"CLIPModel": None, "CLIPForImageClassification": "classification"}
EXPORT_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()}
# (config.json sub-config, field) per model field `{prefix}{field}`.
TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
               "attention_dropout", "eos_token_id", "pad_token_id")
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps",
                 "attention_dropout")
TOP_FIELDS = ("projection_dim", "logit_scale_init_value")
# openai/clip-* preprocessor_config.json (CLIPImageProcessor), for a folder without one; its
# crop is the vision tower's image_size (224, or 336 for clip-vit-large-patch14-336).
DEFAULT_PREPROCESSING = {"mean": [0.48145466, 0.4578275, 0.40821073],
                         "std": [0.26862954, 0.26130258, 0.27577711], "rescale": 1 / 255,
                         "layout": "NHWC"}


def _tower(src: str, dst: str) -> list[Rule]:
  """Rules of one encoder stack: `{src}.layers.{i}.` <-> `{dst}/layer_{i}/`."""
  layer, out = src + ".layers.{i}.", dst + "/layer_{i}/"
  return [
      *_norm(layer + "layer_norm1", out + "attention_norm"),
      *_dense(layer + "self_attn.q_proj", out + "attention/query"),
      *_dense(layer + "self_attn.k_proj", out + "attention/key"),
      *_dense(layer + "self_attn.v_proj", out + "attention/value"),
      *_dense(layer + "self_attn.out_proj", out + "attention/out"),
      *_norm(layer + "layer_norm2", out + "mlp_norm"),
      *_dense(layer + "mlp.fc1", out + "mlp/fc1"),
      *_dense(layer + "mlp.fc2", out + "mlp/fc2"),
  ]


def rules() -> list[Rule]:
  """The rule table: Hugging Face names <-> Flax paths (both architectures)."""
  t, v = "text_model.", "vision_model."
  pt, pv = "params/text_model/", "params/vision_model/"
  return [
      Rule(t + "embeddings.token_embedding.weight", pt + "embeddings/token_embedding"),
      Rule(t + "embeddings.position_embedding.weight", pt + "embeddings/position_embedding"),
      *_tower(t + "encoder", pt + "encoder"),
      *_norm(t + "final_layer_norm", pt + "final_layer_norm"),
      Rule(v + "embeddings.class_embedding", pv + "embeddings/class_embedding"),
      Rule(v + "embeddings.patch_embedding.weight", pv + "embeddings/patch_embedding/kernel",
           CONV),
      Rule(v + "embeddings.position_embedding.weight", pv + "embeddings/position_embedding"),
      *_norm(v + "pre_layrnorm", pv + "pre_layrnorm"),
      *_tower(v + "encoder", pv + "encoder"),
      *_norm(v + "post_layernorm", pv + "post_layernorm"),
      Rule("visual_projection.weight", "params/visual_projection/kernel", LINEAR),
      Rule("text_projection.weight", "params/text_projection/kernel", LINEAR),
      Rule("logit_scale", "params/logit_scale"),
      *_dense("classifier", "params/classifier"),
  ]


# arange buffers older checkpoints store.
IGNORED = [r"(text|vision)_model\.embeddings\.position_ids"]


_dense, _norm = hf_common.dense, hf_common.norm


# The largest image_size / patch_size a config may give (CLIP models use 224-448 and 14-32).
MAX_IMAGE_SIZE = 4096


def _square(cfg_name: str, field: str, value: Any) -> int:
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise PortError(f"config.json: {cfg_name}.{field} {list(value)} is not supported; "
                      "known: square sizes")
    value = value[0]
  if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_IMAGE_SIZE:
    raise PortError(f"config.json: {cfg_name}.{field} {value!r} is not supported; known: an "
                    f"integer 1-{MAX_IMAGE_SIZE}")
  return value


def model_kwargs(hf_config: Mapping[str, Any], head: str | None) -> dict[str, Any]:
  """config.json -> `CLIP` constructor arguments (every field spelled out)."""
  from jaxpretrain.models import clip, transformer  # noqa: PLC0415

  defaults = clip.CLIP()
  kw = {}
  for cfg_name, prefix, fields in (("text_config", "text_", TEXT_FIELDS),
                                   ("vision_config", "vision_", VISION_FIELDS)):
    sub = hf_config.get(cfg_name) or {}
    if not isinstance(sub, Mapping):
      raise PortError(f"config.json: {cfg_name} is a {type(sub).__name__}, not an object")
    for f in fields:
      kw[prefix + f] = sub[f] if sub.get(f) is not None else getattr(defaults, prefix + f)
    if kw[prefix + "hidden_act"] not in transformer.ACTIVATIONS:
      raise PortError(f"config.json: {cfg_name}.hidden_act {kw[prefix + 'hidden_act']!r} is not "
                      f"supported; known: {sorted(transformer.ACTIVATIONS)}")
  for f in ("image_size", "patch_size"):
    kw["vision_" + f] = _square("vision_config", f, kw["vision_" + f])
  eos = kw["text_eos_token_id"]
  if not isinstance(eos, int) or isinstance(eos, bool):
    raise PortError(f"config.json: text_config.eos_token_id {eos!r} is not supported; known: "
                    "one integer")
  for f in TOP_FIELDS:
    kw[f] = hf_config[f] if hf_config.get(f) is not None else getattr(defaults, f)
  kw.update(initializer_range=(hf_config.get("text_config") or {}).get(
      "initializer_range", defaults.initializer_range), head=head,
      num_labels=hf_common.num_labels(hf_config) if head else defaults.num_labels)
  return kw


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: Mapping[str, Any] | None = None,
                   arch: str | None = None) -> Converted:
  """A Hugging Face CLIP state dict and its config.json -> Converted."""
  model_type = hf_common.checked_model_type(hf_config, "CLIP", ("clip",))
  name = hf_common.architecture_name(hf_config, arch, weights, ARCHITECTURES)
  kw = model_kwargs(hf_config, ARCHITECTURES[name])
  return hf_common.converted(
      MODEL, kw, rules(), weights, hf_config, name=name, model_type=model_type, prefixed=False,
      ignored=IGNORED,
      preprocessing={**DEFAULT_PREPROCESSING, "image_size": [kw["vision_image_size"]] * 2,
                     "tokenizer": "tokenizer.json",
                     "max_len": kw["text_max_position_embeddings"],
                     "pad_token_id": kw["text_pad_token_id"]})


def folder_preprocessing(folder: str | os.PathLike) -> dict[str, Any]:
  """mean/std/rescale and the crop size from a folder's preprocessor_config.json ({} without)."""
  from ports import hf_dinov2  # noqa: PLC0415

  return hf_dinov2.folder_preprocessing(folder)


def hf_config_for(model_kwargs: Mapping[str, Any], source: Mapping[str, Any],
                  class_names: list[str] | None = None) -> dict[str, Any]:
  """config.json for a `clip` model: the source's config updated with the model's fields."""
  cfg = hf_common.export_config(
      model_kwargs, source, TOP_FIELDS, model_type="clip",
      architecture=EXPORT_ARCHITECTURE[model_kwargs.get("head")], class_names=class_names)
  for cfg_name, prefix, fields in (("text_config", "text_", TEXT_FIELDS),
                                   ("vision_config", "vision_", VISION_FIELDS)):
    sub = dict(cfg.get(cfg_name) or {})
    sub.update({f: model_kwargs[prefix + f] for f in fields})
    sub["initializer_range"] = model_kwargs["initializer_range"]
    cfg[cfg_name] = sub
  return cfg


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint's config.json and variables -> Hugging Face names and config."""
  from jaxpretrain.models import clip  # noqa: PLC0415

  return hf_common.exported(config, flat_variables, clip.build,
                            lambda kw, source, prefixed: rules(), hf_config_for)
