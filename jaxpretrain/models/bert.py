"""BERT (Devlin et al. 2019) and RoBERTa-style encoders, with Hugging Face's field names.

Fields carry the names of Hugging Face's BertConfig, so a config.json maps onto them one to one.
Heads follow Hugging Face: `BertModel` (head None), `BertForSequenceClassification`
(head "classification": dropout + dense on the pooled [CLS]), `RobertaForSequenceClassification`
(head "classification" with classifier="roberta": dense + tanh + out_proj on <s>, no pooler) and
`BertForMaskedLM` (head "mlm": dense + activation + LayerNorm, then the word embeddings as the
decoder plus a bias).

    model = bert.build("minilm_l6")
    out, aux = model.apply(variables, input_ids, attention_mask=mask)  # out: [b, s, d]
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.models import registry
from jaxpretrain.models.transformer import Dtype, Encoder, activation, dense_dot, layer_norm

HEADS = (None, "classification", "mlm")
CLASSIFIERS = ("pooler", "roberta")  # BertForSequenceClassification's | RobertaClassificationHead
POSITION_STYLES = ("absolute", "roberta")

# Literal variant table; every other field keeps the Bert default.
VARIANTS: dict[str, dict[str, Any]] = {
    # Generic entry the Hugging Face port writes with every field from config.json.
    "bert": {},
    # bert-base-uncased: 12 layers, d=768, 12 heads, MLP 3072 (Devlin et al. 2019, BERT-Base).
    "bert_base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072),
    # sentence-transformers/all-MiniLM-L6-v2 config.json (nreimers/MiniLM-L6-H384-uncased).
    "minilm_l6": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                      num_attention_heads=12, intermediate_size=1536),
    # roberta-base config.json: positions start after padding_idx=1, one token type, eps 1e-5.
    # Its classifier is RobertaForSequenceClassification's (dense + tanh + out_proj on <s>).
    "roberta_base": dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                         pad_token_id=1, layer_norm_eps=1e-5, position_style="roberta",
                         classifier="roberta"),
}


def position_ids(input_ids: jax.Array, style: str, pad_token_id: int) -> jax.Array:
  """[batch, seq] token ids -> [batch, seq] position ids.

  "absolute" (BERT): 0..seq-1. "roberta": pad+1, pad+2, ... counting only non-padding tokens,
  and pad itself at padding (transformers' create_position_ids_from_input_ids).
  """
  if style == "absolute":
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
  if style == "roberta":
    keep = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(keep, axis=1) * keep + pad_token_id
  raise ValueError(f"unknown position_style '{style}'; known: {POSITION_STYLES}")


class Embeddings(nn.Module):
  """Word + token type + position embeddings, then LayerNorm and dropout."""
  vocab_size: int
  hidden_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float
  dropout_rate: float
  pad_token_id: int
  position_style: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  def setup(self):
    embed = functools.partial(nn.Embed, features=self.hidden_size, dtype=self.dtype,
                              param_dtype=self.param_dtype,
                              embedding_init=nn.initializers.normal(self.init_std))
    self.word_embeddings = embed(self.vocab_size)
    self.position_embeddings = embed(self.max_position_embeddings)
    self.token_type_embeddings = embed(self.type_vocab_size)
    self.norm = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """[batch, seq] ids -> [batch, seq, hidden_size]."""
    pos = position_ids(input_ids, self.position_style, self.pad_token_id)
    last = input_ids.shape[1] + (self.pad_token_id if self.position_style == "roberta" else -1)
    if last >= self.max_position_embeddings:  # jnp.take would silently read NaN
      raise ValueError(f"sequence length {input_ids.shape[1]} needs position {last}; the model "
                       f"has max_position_embeddings={self.max_position_embeddings}")
    # Lookups read the param_dtype tables and the sum is cast to `dtype` once, so no gradient
    # is a scatter-add in bf16: on an H200, the bf16 scatter of 8192 token-type gradients into
    # one row took 56 of a 98 ms BERT-base step (benchmarks/NOTES.md). Types are a one-hot
    # product (a matmul in the backward pass, exact at "highest"); absolute positions a slice.
    types = self.token_type_embeddings.embedding
    if token_type_ids is None:
      types = types[0]
    else:
      onehot = jax.nn.one_hot(token_type_ids, types.shape[0], dtype=types.dtype)
      types = jnp.einsum("bsv,vd->bsd", onehot, types, precision=jax.lax.Precision.HIGHEST)
    positions = self.position_embeddings.embedding
    if self.position_style == "absolute":
      positions = positions[:input_ids.shape[1]]  # == take(positions, pos), without a scatter
    else:
      positions = jnp.take(positions, pos, axis=0)
    # Summed in Hugging Face's order: (word + token type) + position.
    x = jnp.take(self.word_embeddings.embedding, input_ids, axis=0) + types
    x = (x + positions).astype(self.dtype)
    return self.dropout(self.norm(x), deterministic=not train)

  def attend(self, h: jax.Array) -> jax.Array:
    """[..., hidden_size] -> [..., vocab_size] logits against the word embeddings (tied)."""
    return self.word_embeddings.attend(h)


class RobertaClassificationHead(nn.Module):
  """Hugging Face's RobertaClassificationHead: dropout, dense + tanh, dropout, out_proj on <s>."""
  hidden_size: int
  num_labels: int
  dropout_rate: float
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  cpu_forms: bool = True  # implementation: Dense layers as 2-D matmuls on a CPU (`ops`)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """[batch, seq, hidden_size] -> [batch, num_labels] logits from the first token."""
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              dot_general=dense_dot(self.cpu_forms),
                              kernel_init=nn.initializers.normal(self.init_std))
    h = nn.Dropout(self.dropout_rate)(x[:, 0], deterministic=not train)
    h = jnp.tanh(dense(self.hidden_size, name="dense")(h))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    return dense(self.num_labels, name="out_proj")(h)


class Bert(nn.Module):
  """BERT / RoBERTa encoder with optional pooler and classification or masked-LM head."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"  # "gelu" (exact) | "gelu_new" | "gelu_pytorch_tanh" | "relu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  position_style: str = "absolute"  # "absolute" (BERT) | "roberta" (offset by pad_token_id+1)
  pooler: bool = True  # Hugging Face's add_pooling_layer: dense + tanh on [CLS]
  head: str | None = None  # None | "classification" | "mlm"
  num_labels: int = 2
  classifier_dropout: float | None = None  # None: hidden_dropout_prob, as Hugging Face
  # "pooler": dropout + dense on the pooled [CLS] (BERT); "roberta": RobertaClassificationHead.
  classifier: str = "pooler"
  mlm_act: str | None = None  # None: hidden_act (BERT); RoBERTa's LM head is always "gelu"
  initializer_range: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  cpu_forms: bool = True  # implementation: Dense layers as 2-D matmuls on a CPU (`ops`)

  @nn.compact
  def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes token ids.

    Args:
      input_ids: [batch, seq] int token ids.
      attention_mask: [batch, seq], 1 for tokens and 0 for padding; None means no padding.
      token_type_ids: [batch, seq] segment ids; None means all 0.
      train: enables dropout (needs a 'dropout' rng).
    Returns:
      (out, aux): out is the last hidden state [batch, seq, hidden_size] (head None), or the
      logits [batch, num_labels] ("classification") or [batch, seq, vocab_size] ("mlm").
      aux holds "embeddings", "layer_{i}" (each layer's output), "last_hidden_state",
      "pooled" [batch, hidden_size] (with a pooler) and "logits" (with a head).
    """
    if self.head not in HEADS:
      raise ValueError(f"unknown head {self.head!r}; known: {HEADS}")
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              dot_general=dense_dot(self.cpu_forms),
                              kernel_init=nn.initializers.normal(self.initializer_range))
    embeddings = Embeddings(
        self.vocab_size, self.hidden_size, self.max_position_embeddings, self.type_vocab_size,
        self.layer_norm_eps, self.hidden_dropout_prob, self.pad_token_id, self.position_style,
        dtype=self.dtype, param_dtype=self.param_dtype, init_std=self.initializer_range,
        name="embeddings")
    x = embeddings(input_ids, token_type_ids, train=train)
    aux = {"embeddings": x}
    x, layers = Encoder(
        self.num_hidden_layers, self.num_attention_heads, self.intermediate_size,
        pre_norm=False, act=self.hidden_act, dropout_rate=self.hidden_dropout_prob,
        attention_dropout_rate=self.attention_probs_dropout_prob,
        layer_norm_eps=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
        init_std=self.initializer_range, cpu_forms=self.cpu_forms, name="encoder",
    )(x, attention_mask, train=train)
    aux.update(layers)
    aux["last_hidden_state"] = x
    if self.pooler:
      aux["pooled"] = jnp.tanh(dense(self.hidden_size, name="pooler")(x[:, 0]))
    if self.head is None:
      return x, aux
    if self.head == "classification":
      rate = self.classifier_dropout
      rate = self.hidden_dropout_prob if rate is None else rate
      if self.classifier == "roberta":
        logits = RobertaClassificationHead(
            self.hidden_size, self.num_labels, rate, self.initializer_range, dtype=self.dtype,
            param_dtype=self.param_dtype, cpu_forms=self.cpu_forms,
            name="classifier")(x, train=train)  # [b, num_labels]
      elif self.classifier != "pooler":
        raise ValueError(f"unknown classifier {self.classifier!r}; known: {CLASSIFIERS}")
      elif not self.pooler:
        raise ValueError("head 'classification' reads the pooler output; set pooler=True")
      else:
        h = nn.Dropout(rate)(aux["pooled"], deterministic=not train)
        logits = dense(self.num_labels, name="classifier")(h)  # [b, num_labels]
    else:  # "mlm": the decoder is the word embedding matrix (tied), plus its own bias.
      act = activation(self.mlm_act or self.hidden_act)
      h = act(dense(self.hidden_size, name="mlm_transform")(x))
      h = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="mlm_norm")(h)
      bias = self.param("mlm_bias", nn.initializers.zeros, (self.vocab_size,), self.param_dtype)
      logits = embeddings.attend(h) + bias.astype(self.dtype)  # [b, s, vocab_size]
    aux["logits"] = logits
    return logits, aux


def build(name: str, **kwargs: Any) -> Bert:
  """The variant `name` of VARIANTS with fields overridden by `kwargs`."""
  if name not in VARIANTS:
    raise ValueError(f"unknown BERT variant '{name}'; known: {sorted(VARIANTS)}")
  return Bert(**{**VARIANTS[name], **kwargs})


def dummy_inputs(model: Bert, batch: int = 1) -> dict[str, Any]:
  """{"x": input_ids [batch, seq], "attention_mask": [batch, seq]}, seq = 8 or fewer."""
  offset = model.pad_token_id + 1 if model.position_style == "roberta" else 0
  seq = max(1, min(8, model.max_position_embeddings - offset))
  token = (model.pad_token_id + 1) % model.vocab_size  # any id but padding
  return {"x": jnp.full((batch, seq), token, jnp.int32),
          "attention_mask": jnp.ones((batch, seq), jnp.int32)}


# ------------------------------------------------------------------------------------------
# The family descriptor (jaxpretrain/models/registry.py).
# ------------------------------------------------------------------------------------------

FAMILY = registry.register(registry.Family(
    name="bert", modality="text", build=build, variants=VARIANTS, dummy_inputs=dummy_inputs,
    heads={
        # BertForSequenceClassification: the classifier reads the pooler, so it turns it on;
        # RobertaClassificationHead (classifier="roberta") reads <s> itself: no pooler, as in
        # Hugging Face's RobertaForSequenceClassification.
        "classification": registry.Head(
            patterns=("params/classifier/.*",),
            set=lambda kw, n: ({**kw, "head": None} if n is None else
                               {**kw, "head": "classification", "num_labels": n,
                                "pooler": kw.get("classifier", "pooler") == "pooler"}),
            size=lambda kw: kw.get("num_labels") if kw.get("head") == "classification"
            else None),
        # BertForMaskedLM: its size is the vocabulary's (n is ignored).
        "mlm": registry.Head(
            patterns=("params/mlm_.*",),
            set=lambda kw, n: {**kw, "head": "mlm"},
            size=lambda kw: kw.get("vocab_size", 30522) if kw.get("head") == "mlm" else None),
    },
    # A pooler the checkpoint lacks (sentence-transformers' BertModel) starts fresh.
    fresh_when_added={"pooler": ("params/pooler/.*",)},
    preprocessing=lambda model: {"max_len": model.max_position_embeddings,
                                 "pad_token_id": model.pad_token_id},
    ports={"huggingface": "ports.hf_bert"}, hf_model_types=("bert", "roberta", "xlm-roberta")))
