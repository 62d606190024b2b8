"""Hugging Face DistilBERT checkpoints <-> jaxpretrain `distilbert` (models/distilbert.py).

    python -m ports.convert path/to/distilbert-base-uncased out/distilbert
    python -m ports.export out/distilbert exported/      # transformers.AutoModel loads it

Architectures: DistilBertModel and DistilBertForSequenceClassification (pre_classifier + ReLU +
classifier). Backbone tensors carry the `distilbert.` prefix in head models; export writes back
what came in. Sinusoidal position embeddings are stored like learned ones, so one rule serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ports import hf_common
from ports.base import Converted, Exported
from ports.rules import PortError, Rule

MODEL = "distilbert"  # registry name (jaxpretrain/models/distilbert.py)
ARCHITECTURES = {"DistilBertModel": None, "DistilBertForSequenceClassification": "classification"}
EXPORT_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()}
CONFIG_FIELDS = ("vocab_size", "max_position_embeddings", "sinusoidal_pos_embds", "n_layers",
                 "n_heads", "dim", "hidden_dim", "dropout", "attention_dropout", "activation",
                 "initializer_range", "seq_classif_dropout", "pad_token_id")
ACTIVATIONS = ("gelu", "relu")  # transformers' get_activation names DistilBERT uses


def rules(prefixed: bool) -> list[Rule]:
  """The rule table: Hugging Face names (with `distilbert.` if `prefixed`) <-> Flax paths."""
  p = "distilbert." if prefixed else ""
  layer, dst = p + "transformer.layer.{i}.", "params/transformer/layer_{i}/"
  return [
      Rule(p + "embeddings.word_embeddings.weight", "params/embeddings/word_embeddings"),
      Rule(p + "embeddings.position_embeddings.weight", "params/embeddings/position_embeddings"),
      *_norm(p + "embeddings.LayerNorm", "params/embeddings/norm"),
      *_dense(layer + "attention.q_lin", dst + "attention/query"),
      *_dense(layer + "attention.k_lin", dst + "attention/key"),
      *_dense(layer + "attention.v_lin", dst + "attention/value"),
      *_dense(layer + "attention.out_lin", dst + "attention/out"),
      *_norm(layer + "sa_layer_norm", dst + "attention_norm"),
      *_dense(layer + "ffn.lin1", dst + "mlp/fc1"),
      *_dense(layer + "ffn.lin2", dst + "mlp/fc2"),
      *_norm(layer + "output_layer_norm", dst + "mlp_norm"),
      *_dense("pre_classifier", "params/pre_classifier"),
      *_dense("classifier", "params/classifier"),
  ]


def ignored(prefixed: bool) -> list[str]:
  """Source keys (regexes) deliberately not converted: the arange buffer older files store."""
  return [("distilbert\\." if prefixed else "") + r"embeddings\.position_ids"]


_dense, _norm = hf_common.dense, hf_common.norm


def model_kwargs(hf_config: Mapping[str, Any], head: str | None) -> dict[str, Any]:
  """config.json -> `DistilBert` constructor arguments (every field spelled out)."""
  from jaxpretrain.models import distilbert  # noqa: PLC0415

  defaults = distilbert.DistilBert()
  kw = {f: hf_config[f] if f in hf_config else getattr(defaults, f) for f in CONFIG_FIELDS}
  if kw["pad_token_id"] is None:
    kw["pad_token_id"] = 0
  if kw["activation"] not in ACTIVATIONS:
    raise PortError(f"config.json: activation {kw['activation']!r} is not supported; known: "
                    f"{list(ACTIVATIONS)}")
  kw.update(head=head, num_labels=hf_common.num_labels(hf_config) if head else 2)
  return kw


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: Mapping[str, Any] | None = None,
                   arch: str | None = None) -> Converted:
  """A Hugging Face DistilBERT state dict and its config.json -> Converted."""
  model_type = hf_common.checked_model_type(hf_config, "DistilBERT", ("distilbert",))
  name = hf_common.architecture_name(hf_config, arch, weights, ARCHITECTURES)
  prefixed = hf_common.detect_prefix(weights, "distilbert.", "embeddings.word_embeddings.weight")
  kw = model_kwargs(hf_config, ARCHITECTURES[name])
  return hf_common.converted(
      MODEL, kw, rules(prefixed), weights, hf_config, name=name, model_type=model_type,
      prefixed=prefixed, ignored=ignored(prefixed),
      preprocessing={"tokenizer": "tokenizer.json", "max_len": kw["max_position_embeddings"],
                     "pad_token_id": kw["pad_token_id"]})


def hf_config_for(model_kwargs: Mapping[str, Any], source: Mapping[str, Any],
                  class_names: list[str] | None = None) -> dict[str, Any]:
  """config.json for a `distilbert` model: the source's config updated with the model's fields."""
  return hf_common.export_config(
      model_kwargs, source, CONFIG_FIELDS, model_type="distilbert",
      architecture=EXPORT_ARCHITECTURE[model_kwargs.get("head")], class_names=class_names)


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint's config.json and variables -> Hugging Face names and config."""
  from jaxpretrain.models import distilbert  # noqa: PLC0415

  return hf_common.exported(config, flat_variables, distilbert.build,
                            lambda kw, source, prefixed: rules(prefixed), hf_config_for)
