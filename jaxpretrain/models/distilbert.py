"""DistilBERT (Sanh et al. 2019) as Hugging Face's DistilBertModel computes it.

Fields carry the names of Hugging Face's DistilBertConfig. DistilBERT is BERT with half the
layers, no token types and no pooler: word + position embeddings, LayerNorm (eps 1e-12, fixed
in transformers), then post-LN blocks (the shared `transformer.EncoderBlock`), under the name
`transformer` as in the Hugging Face checkpoint. Head "classification"
(DistilBertForSequenceClassification): [CLS] -> pre_classifier -> ReLU -> dropout
(seq_classif_dropout) -> classifier.

    model = distilbert.build("distilbert_base_uncased")
    out, aux = model.apply(variables, input_ids, attention_mask=mask)  # out: [b, s, 768]
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain.models import registry
from jaxpretrain.models.transformer import Dtype, Encoder, layer_norm

HEADS = (None, "classification")
LAYER_NORM_EPS = 1e-12  # DistilBERT's LayerNorms are built with eps=1e-12, not from the config

# Literal variant table; every other field keeps the DistilBertConfig default.
VARIANTS: dict[str, dict[str, Any]] = {
    # Generic entry the Hugging Face port writes with every field from config.json.
    "distilbert": {},
    # distilbert-base-uncased config.json: 6 layers, dim 768, 12 heads, FFN 3072 (Sanh et al.).
    "distilbert_base_uncased": dict(vocab_size=30522, n_layers=6, n_heads=12, dim=768,
                                    hidden_dim=3072),
}


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
  """[n_pos, dim] fixed position embeddings (transformers' create_sinusoidal_embeddings)."""
  enc = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)]
                  for pos in range(n_pos)])
  out = np.zeros((n_pos, dim), np.float32)
  out[:, 0::2], out[:, 1::2] = np.sin(enc[:, 0::2]), np.cos(enc[:, 1::2])
  return out


class Embeddings(nn.Module):
  """Word + position embeddings, then LayerNorm and dropout."""
  vocab_size: int
  dim: int
  max_position_embeddings: int
  sinusoidal: bool
  dropout_rate: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, input_ids: jax.Array, *, train: bool = False) -> jax.Array:
    """[batch, seq] ids -> [batch, seq, dim]."""
    s = input_ids.shape[1]
    if s > self.max_position_embeddings:
      raise ValueError(f"sequence length {s} exceeds max_position_embeddings="
                       f"{self.max_position_embeddings}")
    normal = nn.initializers.normal(self.init_std)
    pos_init = (lambda *_: jnp.asarray(sinusoidal_table(self.max_position_embeddings, self.dim),
                                       self.param_dtype)) if self.sinusoidal else normal
    words = self.param("word_embeddings", normal, (self.vocab_size, self.dim), self.param_dtype)
    pos = self.param("position_embeddings", pos_init, (self.max_position_embeddings, self.dim),
                     self.param_dtype)
    x = (jnp.take(words, input_ids, axis=0) + pos[:s]).astype(self.dtype)
    x = layer_norm(LAYER_NORM_EPS, self.dtype, self.param_dtype, name="norm")(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class DistilBert(nn.Module):
  """DistilBERT encoder with an optional sequence-classification head."""
  vocab_size: int = 30522
  max_position_embeddings: int = 512
  sinusoidal_pos_embds: bool = False  # fixed sinusoidal initial positions (stored all the same)
  n_layers: int = 6
  n_heads: int = 12
  dim: int = 768
  hidden_dim: int = 3072
  dropout: float = 0.1
  attention_dropout: float = 0.1
  activation: str = "gelu"  # "gelu" | "relu" (transformers' get_activation names)
  initializer_range: float = 0.02
  seq_classif_dropout: float = 0.2
  pad_token_id: int = 0
  head: str | None = None  # None | "classification"
  num_labels: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes token ids.

    Args:
      input_ids: [batch, seq] int token ids.
      attention_mask: [batch, seq], 1 for tokens and 0 for padding; None means no padding.
      train: enables dropout (needs a 'dropout' rng).
    Returns:
      (out, aux): out is the last hidden state [batch, seq, dim] (head None) or the logits
      [batch, num_labels]. aux holds "embeddings", "layer_{i}", "last_hidden_state",
      "pre_logits" (the [CLS] hidden state), and with the head "pooled" (ReLU of
      pre_classifier, the classifier's input) and "logits".
    """
    if self.head not in HEADS:
      raise ValueError(f"unknown head {self.head!r}; known: {HEADS}")
    x = Embeddings(self.vocab_size, self.dim, self.max_position_embeddings,
                   self.sinusoidal_pos_embds, self.dropout, dtype=self.dtype,
                   param_dtype=self.param_dtype, init_std=self.initializer_range,
                   name="embeddings")(input_ids, train=train)
    aux = {"embeddings": x}
    x, layers = Encoder(
        self.n_layers, self.n_heads, self.hidden_dim, pre_norm=False, act=self.activation,
        dropout_rate=self.dropout, attention_dropout_rate=self.attention_dropout,
        layer_norm_eps=LAYER_NORM_EPS, dtype=self.dtype, param_dtype=self.param_dtype,
        init_std=self.initializer_range, name="transformer",
    )(x, attention_mask, train=train)
    aux.update(layers)
    aux["last_hidden_state"] = x
    aux["pre_logits"] = x[:, 0]
    if self.head is None:
      return x, aux
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.normal(self.initializer_range))
    h = nn.relu(dense(self.dim, name="pre_classifier")(x[:, 0]))
    aux["pooled"] = h
    h = nn.Dropout(self.seq_classif_dropout)(h, deterministic=not train)
    logits = dense(self.num_labels, name="classifier")(h)
    aux["logits"] = logits
    return logits, aux


def build(name: str, **kwargs: Any) -> DistilBert:
  """The variant `name` of VARIANTS with fields overridden by `kwargs`."""
  if name not in VARIANTS:
    raise ValueError(f"unknown DistilBERT variant '{name}'; known: {sorted(VARIANTS)}")
  return DistilBert(**{**VARIANTS[name], **kwargs})


def dummy_inputs(model: DistilBert, batch: int = 1) -> dict[str, Any]:
  """{"x": input_ids [batch, seq], "attention_mask": [batch, seq]}, seq = 8 or fewer."""
  seq = max(1, min(8, model.max_position_embeddings))
  token = (model.pad_token_id + 1) % model.vocab_size  # any id but padding
  return {"x": jnp.full((batch, seq), token, jnp.int32),
          "attention_mask": jnp.ones((batch, seq), jnp.int32)}


# What a family descriptor needs (jaxpretrain/models/registry.py, to come), stated once.
FAMILY_INFO = {
    "modality": "text",
    # Regexes over '/'-joined variable paths of the heads a new task replaces (both layers of
    # DistilBertForSequenceClassification's head are task-specific).
    "heads": [r"params/pre_classifier/.*", r"params/classifier/.*"],
    "num_classes": {"head": "classification", "field": "num_labels"},
    # features: masked mean of last_hidden_state (no pooler; aux["pre_logits"] is [CLS]).
    "pooling": "mean",
    # The tokenizer travels with the checkpoint; no token types (inputs: ids and mask).
    "preprocessing": {"tokenizer": "tokenizer.json", "max_len": 512, "pad_token_id": 0},
}


def _inputs(batch):
  """(input_ids,), {attention_mask}: DistilBERT has no token types."""
  kw = {"attention_mask": batch["attention_mask"]} if "attention_mask" in batch else {}
  return (batch["input_ids"],), kw


# The family descriptor (jaxpretrain/models/registry.py).
FAMILY = registry.register(registry.Family(
    name="distilbert", modality="text", build=build, variants=VARIANTS,
    dummy_inputs=dummy_inputs,
    heads={"classification": registry.Head(
        patterns=tuple(FAMILY_INFO["heads"]),
        set=lambda kw, n: ({**kw, "head": None} if n is None else
                           {**kw, "head": "classification", "num_labels": n}),
        size=lambda kw: kw.get("num_labels") if kw.get("head") == "classification" else None)},
    inputs=_inputs,
    preprocessing=lambda model: {"max_len": model.max_position_embeddings,
                                 "pad_token_id": model.pad_token_id},
    ports={"huggingface": "ports.hf_distilbert"}, hf_model_types=("distilbert",)))
