"""Hugging Face BERT, RoBERTa and XLM-RoBERTa checkpoints <-> jaxpretrain `bert` (models/bert.py).

    python -m ports.convert path/to/all-MiniLM-L6-v2 out/minilm
    python -m ports.export out/minilm exported/      # transformers.AutoModel loads it

Architectures (config.json `architectures`): BertModel, BertForSequenceClassification,
BertForMaskedLM, BertForPreTraining (its next-sentence head is dropped), RobertaModel,
RobertaForSequenceClassification, RobertaForMaskedLM and the same three XLMRoberta… ones
(model_type "xlm-roberta": RoBERTa's architecture under another name; its tensors carry the
`roberta.` prefix). Backbone tensors may or may not carry the `bert.` / `roberta.` prefix;
the port detects which and export writes it back. The masked-LM decoder weight is the word
embedding matrix (tied): a stored copy is checked to be equal and skipped. RoBERTa models get
RobertaClassificationHead (classifier="roberta") as their classifier, also when converted
without one, so that a fine-tuned RoBERTa exports as RobertaForSequenceClassification.
config.json's id2label becomes the checkpoint's `class_names`.
A sentence-transformers folder's pooling and normalization are recorded in the
checkpoint's preprocessing (`folder_preprocessing`).
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
from ports.rules import PortError, Rule

MODEL = "bert"  # registry name (jaxpretrain/models/bert.py)
MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
# model_type -> the base-model prefix of its head checkpoints (transformers' base_model_prefix).
PREFIX = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}
ROBERTA_TYPES = ("roberta", "xlm-roberta")  # RoBERTa's positions, LM head and classifier
# Class-name prefix of each model_type's architectures.
ARCH_PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}

# Hugging Face architecture -> jaxpretrain head.
ARCHITECTURES = {
    "BertModel": None,
    "BertForSequenceClassification": "classification",
    "BertForMaskedLM": "mlm",
    "BertForPreTraining": "mlm",
    "RobertaModel": None,
    "RobertaForSequenceClassification": "classification",
    "RobertaForMaskedLM": "mlm",
    "XLMRobertaModel": None,
    "XLMRobertaForSequenceClassification": "classification",
    "XLMRobertaForMaskedLM": "mlm",
}
# (model_type, head) -> the architecture written on export.
EXPORT_ARCHITECTURE = {
    ("bert", None): "BertModel", ("bert", "classification"): "BertForSequenceClassification",
    ("bert", "mlm"): "BertForMaskedLM", ("roberta", None): "RobertaModel",
    ("roberta", "mlm"): "RobertaForMaskedLM",
    ("roberta", "classification"): "RobertaForSequenceClassification",
    ("xlm-roberta", None): "XLMRobertaModel", ("xlm-roberta", "mlm"): "XLMRobertaForMaskedLM",
    ("xlm-roberta", "classification"): "XLMRobertaForSequenceClassification",
}
# config.json fields that are Bert module fields under the same name.
CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "hidden_act", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                 "layer_norm_eps", "pad_token_id", "initializer_range", "classifier_dropout")


def rules(model_type: str, prefixed: bool) -> list[Rule]:
  """The rule table: Hugging Face names (with the base prefix if `prefixed`) <-> Flax paths."""
  p = f"{PREFIX[model_type]}." if prefixed else ""
  layer, dst = p + "encoder.layer.{i}.", "params/encoder/layer_{i}/"
  table = [
      Rule(p + "embeddings.word_embeddings.weight", "params/embeddings/word_embeddings/embedding"),
      Rule(p + "embeddings.position_embeddings.weight",
           "params/embeddings/position_embeddings/embedding"),
      Rule(p + "embeddings.token_type_embeddings.weight",
           "params/embeddings/token_type_embeddings/embedding"),
      *_norm(p + "embeddings.LayerNorm", "params/embeddings/norm"),
      *_dense(layer + "attention.self.query", dst + "attention/query"),
      *_dense(layer + "attention.self.key", dst + "attention/key"),
      *_dense(layer + "attention.self.value", dst + "attention/value"),
      *_dense(layer + "attention.output.dense", dst + "attention/out"),
      *_norm(layer + "attention.output.LayerNorm", dst + "attention_norm"),
      *_dense(layer + "intermediate.dense", dst + "mlp/fc1"),
      *_dense(layer + "output.dense", dst + "mlp/fc2"),
      *_norm(layer + "output.LayerNorm", dst + "mlp_norm"),
      *_dense(p + "pooler.dense", "params/pooler"),
  ]
  if model_type in ROBERTA_TYPES:  # RobertaLMHead: dense, gelu, layer_norm, tied decoder + bias
    return table + [*_dense("lm_head.dense", "params/mlm_transform"),
                    *_norm("lm_head.layer_norm", "params/mlm_norm"),
                    Rule("lm_head.bias", "params/mlm_bias"),
                    # RobertaClassificationHead: dense + tanh, out_proj (classifier="roberta")
                    *_dense("classifier.dense", "params/classifier/dense"),
                    *_dense("classifier.out_proj", "params/classifier/out_proj")]
  return table + [*_dense("classifier", "params/classifier"),
                  *_dense("cls.predictions.transform.dense", "params/mlm_transform"),
                  *_norm("cls.predictions.transform.LayerNorm", "params/mlm_norm"),
                  Rule("cls.predictions.bias", "params/mlm_bias")]


_dense, _norm = hf_common.dense, hf_common.norm


def ignored(model_type: str, prefixed: bool) -> list[str]:
  """Source keys (regexes) deliberately not converted."""
  p = f"{PREFIX[model_type]}\\." if prefixed else ""
  return [
      p + r"embeddings\.position_ids", p + r"embeddings\.token_type_ids",  # arange/zero buffers
      r"cls\.seq_relationship\.(weight|bias)",  # BertForPreTraining's next-sentence head
      *_TIED[model_type],  # checked equal to what they are tied to before they are skipped
  ]


# Tied copies some checkpoints store: decoder weight = word embeddings, decoder bias = bias.
_TIED = {"bert": [r"cls\.predictions\.decoder\.weight", r"cls\.predictions\.decoder\.bias"],
         "roberta": [r"lm_head\.decoder\.weight", r"lm_head\.decoder\.bias"],
         "xlm-roberta": [r"lm_head\.decoder\.weight", r"lm_head\.decoder\.bias"]}


def _check_tied(weights: Mapping[str, Any], model_type: str, prefixed: bool, where: str) -> None:
  p = f"{PREFIX[model_type]}." if prefixed else ""
  head = "lm_head" if model_type in ROBERTA_TYPES else "cls.predictions"
  pairs = [(f"{head}.decoder.weight", p + "embeddings.word_embeddings.weight"),
           (f"{head}.decoder.bias", f"{head}.bias")]
  for copy, original in pairs:
    if copy in weights and not (original in weights
                                and np.array_equal(weights[copy], weights[original])):
      raise PortError(f"{where}: '{copy}' differs from '{original}'; the masked-LM decoder must "
                      "be tied to it (an untied decoder is not supported)")


def architecture(hf_config: Mapping[str, Any], weights: Mapping[str, Any],
                 arch: str | None) -> str:
  """`arch`, else config.json's first architecture, else guessed from the head tensors."""
  model_type = hf_config["model_type"]
  name = arch or (hf_config.get("architectures") or [None])[0]
  if name is None:
    prefix = ARCH_PREFIX[model_type]
    if "classifier.weight" in weights or "classifier.out_proj.weight" in weights:
      return prefix + "ForSequenceClassification"
    mlm = "lm_head.bias" if model_type in ROBERTA_TYPES else "cls.predictions.bias"
    return prefix + ("ForMaskedLM" if mlm in weights else "Model")
  if name not in ARCHITECTURES:
    raise PortError(f"config.json: architecture '{name}' is not supported; known: "
                    f"{sorted(ARCHITECTURES)}")
  return name


def model_kwargs(hf_config: Mapping[str, Any], head: str | None, pooler: bool) -> dict[str, Any]:
  """config.json -> `Bert` constructor arguments (every field spelled out)."""
  from jaxpretrain.models import bert, transformer  # noqa: PLC0415

  defaults = bert.Bert()
  kw = {f: hf_config[f] if f in hf_config else getattr(defaults, f) for f in CONFIG_FIELDS}
  if kw["pad_token_id"] is None:
    kw["pad_token_id"] = 0
  if kw["hidden_act"] not in transformer.ACTIVATIONS:
    raise PortError(f"config.json: hidden_act {short(kw['hidden_act'])} is not supported; known: "
                    f"{sorted(transformer.ACTIVATIONS)}")
  if hf_config.get("position_embedding_type", "absolute") != "absolute":
    raise PortError(f"config.json: position_embedding_type "
                    f"{short(hf_config['position_embedding_type'])} is not supported; known: "
                    "absolute")
  if hf_config.get("is_decoder"):
    raise PortError("config.json: is_decoder=true (causal BERT) is not supported; only encoders")
  roberta = hf_config["model_type"] in ROBERTA_TYPES
  kw["position_style"] = "roberta" if roberta else "absolute"
  kw["mlm_act"] = "gelu" if roberta else None  # RobertaLMHead calls gelu, not hidden_act
  kw["classifier"] = "roberta" if roberta else "pooler"
  kw.update(pooler=pooler, head=head,
            num_labels=hf_common.num_labels(hf_config) if head == "classification" else 2)
  return kw


def to_jaxpretrain(weights: Mapping[str, np.ndarray], *, hf_config: Mapping[str, Any] | None = None,
                   arch: str | None = None) -> Converted:
  """A Hugging Face BERT/RoBERTa state dict and its config.json -> Converted."""
  model_type = hf_common.checked_model_type(hf_config, "BERT", MODEL_TYPES, "BERT-like")
  name = architecture(hf_config, weights, arch)
  if _model_type_of(name) != model_type:
    raise PortError(f"config.json: architecture '{name}' does not fit model_type '{model_type}'")
  prefix = f"{PREFIX[model_type]}."
  prefixed = hf_common.detect_prefix(weights, prefix, "embeddings.word_embeddings.weight")
  p = prefix if prefixed else ""
  kw = model_kwargs(hf_config, ARCHITECTURES[name], pooler=p + "pooler.dense.weight" in weights)
  offset = kw["pad_token_id"] + 1 if model_type in ROBERTA_TYPES else 0
  return hf_common.converted(
      MODEL, kw, rules(model_type, prefixed), weights, hf_config, name=name,
      model_type=model_type, prefixed=prefixed, ignored=ignored(model_type, prefixed),
      check=lambda where: _check_tied(weights, model_type, prefixed, where),
      preprocessing={"kind": "text", "tokenizer": "tokenizer.json",
                     "max_len": kw["max_position_embeddings"] - offset,
                     "pad_token_id": kw["pad_token_id"], "pooling": None, "normalize": False},
      class_names=hf_common.class_names(hf_config, kw["num_labels"])
      if ARCHITECTURES[name] == "classification" else None)


def _model_type_of(architecture_name: str) -> str:
  """The model_type whose architectures `architecture_name` belongs to (by class prefix)."""
  return max((t for t, p in ARCH_PREFIX.items() if architecture_name.startswith(p)),
             key=lambda t: len(ARCH_PREFIX[t]), default="?")


def hf_config_for(model_kwargs: Mapping[str, Any], source: Mapping[str, Any],
                  class_names: list[str] | None = None) -> dict[str, Any]:
  """config.json for a `bert` model: the source's config updated with the model's fields."""
  model_type = source.get("model_type", "bert")
  head = model_kwargs.get("head")
  if (model_type, head) not in EXPORT_ARCHITECTURE:
    raise PortError(f"no Hugging Face architecture for model_type '{model_type}' with head "
                    f"{head!r}; known: {sorted(EXPORT_ARCHITECTURE, key=str)}")
  want = "roberta" if model_type in ROBERTA_TYPES else "pooler"
  if head == "classification" and model_kwargs.get("classifier", "pooler") != want:
    raise PortError(f"a '{model_type}' model with classifier "
                    f"{model_kwargs.get('classifier', 'pooler')!r} has no Hugging Face "
                    f"architecture; {EXPORT_ARCHITECTURE[(model_type, head)]} has classifier "
                    f"{want!r} (convert the base checkpoint again and fine-tune from it)")
  return hf_common.export_config(
      model_kwargs, source, CONFIG_FIELDS, model_type=model_type,
      architecture=EXPORT_ARCHITECTURE[(model_type, head)], class_names=class_names)


def from_jaxpretrain(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray]
                     ) -> Exported:
  """A converted checkpoint's config.json and variables -> Hugging Face names and config."""
  from jaxpretrain.models import bert  # noqa: PLC0415

  return hf_common.exported(
      config, flat_variables, bert.build,
      lambda kw, source, prefixed: rules(source.get("model_type", "bert"), prefixed),
      hf_config_for)



# sentence-transformers folders (modules.json): what `SentenceTransformer(folder).encode` does
# after the transformer. Pooling modes (1_Pooling/config.json) -> jaxpretrain.preprocess names.
ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
              "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens":
              "mean_sqrt_len"}
ST_UNSUPPORTED_POOLING = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
ST_MODULES = ("Transformer", "Pooling", "Normalize")
MAX_ST_CONFIG_BYTES = 1 << 20  # each of these files is a few hundred bytes


def folder_preprocessing(folder: str | os.PathLike) -> dict[str, Any]:
  """Pooling, normalization, max length and lowercasing of a sentence-transformers folder.

  Reads modules.json (Transformer, Pooling, Normalize), the Pooling module's config.json and
  sentence_bert_config.json (max_seq_length, do_lower_case). A plain Hugging Face folder gives
  {}. A folder with modules this does not port (Dense, ...) records no pooling: `embed` would
  not be what sentence-transformers computes.
  """
  folder = pathlib.Path(folder)
  modules = _st_json(folder, "modules.json")
  if modules is None:
    return {}
  if not isinstance(modules, list) or not all(
      isinstance(m, dict) and isinstance(m.get("type"), str) and isinstance(m.get("path", ""), str)
      for m in modules):
    raise PortError(f"{folder / 'modules.json'}: expected a list of {{type, path}} objects")
  kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
  out: dict[str, Any] = {}
  bert_cfg = _st_json(folder, "sentence_bert_config.json") or {}
  if not isinstance(bert_cfg, dict):
    raise PortError(f"{folder / 'sentence_bert_config.json'}: expected a JSON object")
  if bert_cfg.get("max_seq_length") is not None:
    out["max_len"] = bert_cfg["max_seq_length"]
  if bert_cfg.get("do_lower_case") is not None:
    out["lowercase"] = bert_cfg["do_lower_case"]
  unknown = [k for k in kinds if k not in ST_MODULES]
  if unknown:
    return out  # see the docstring
  pooling = [m for m, k in zip(modules, kinds, strict=True) if k == "Pooling"]
  if len(pooling) == 1:
    out["pooling"] = _st_pooling(folder, pooling[0]["path"])
  out["normalize"] = "Normalize" in kinds
  return out


def _st_pooling(folder: pathlib.Path, path: str) -> str:
  cfg = _st_json(folder, str(pathlib.PurePosixPath(path, "config.json")))
  where = folder / path / "config.json"
  if not isinstance(cfg, dict):
    raise PortError(f"{where}: missing or not a JSON object")
  on = [k for k in (*ST_POOLING, *ST_UNSUPPORTED_POOLING) if cfg.get(k) is True]
  if len(on) != 1 or on[0] not in ST_POOLING:
    raise PortError(f"{where}: pooling modes {on}; supported: exactly one of "
                    f"{sorted(ST_POOLING)}")
  return ST_POOLING[on[0]]


def _st_json(folder: pathlib.Path, name: str):
  """A small JSON file inside `folder` (None if absent): plain names, inside the folder (or an
  HF cache's blobs), a regular file of at most MAX_ST_CONFIG_BYTES, strict JSON."""
  real = safe_io.resolve_relative(folder, name, PortError)  # refused before any look
  if not os.path.lexists(folder / name):
    return None
  return safe_io.read_json(real, MAX_ST_CONFIG_BYTES, PortError, where=str(folder / name))
