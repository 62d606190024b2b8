"""Losses and metrics as weighted sums, so padding never changes a mean.

Every loss here is first a per-example (or per-token) value; reductions go through
`weighted_sum`, which returns a `(sum, count)` pair. A training step divides the sum by the
*global* count (over all devices and hosts); evaluation adds pairs over batches and divides
once at the end (`finalize`). Padded examples carry weight 0 (the batch's "mask"), so a
partial last batch is neither dropped nor double-counted.

Softmax and log-probabilities are always computed in float32, whatever the compute dtype of
the logits (bf16 logits lose too much in `logsumexp`).

A loss function, as the steps take it, maps `(logits, batch) -> {name: (sum, count)}` and must
contain the key "loss"; `classification_loss_fn` and `mlm_loss_fn` build the standard ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

Batch = Mapping[str, Any]
Stats = dict[str, tuple[jax.Array, jax.Array]]
LossFn = Callable[[jax.Array, Batch], Stats]

# Positions of `mask_tokens`'s labels that are not predicted.
IGNORE_LABEL = -100  # the value torch.nn.CrossEntropyLoss and HF use


def example_weights(batch: Batch, batch_size: int | None = None) -> jax.Array:
  """The batch's "mask" as float32 [batch], or ones when the batch has none."""
  if "mask" in batch:
    return jnp.asarray(batch["mask"], jnp.float32)
  if batch_size is None:
    batch_size = len(next(iter(batch.values())))
  return jnp.ones([batch_size], jnp.float32)


def weighted_sum(values: jax.Array, weights: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """(sum of values * weights, sum of weights), both float32 scalars.

  Args:
    values: [batch, ...] per-example (or per-token) values.
    weights: same shape as `values` (or broadcastable), 0 for padding; None = all ones.
  Returns:
    (sum, count): float32 scalars.
  """
  values = jnp.asarray(values, jnp.float32)
  if weights is None:
    weights = jnp.ones_like(values)
  weights = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), values.shape)
  # `where` keeps a NaN/inf in a padded slot from leaking into the sum (0 * inf = nan).
  total = jnp.sum(jnp.where(weights > 0, values * weights, 0.0))
  return total, jnp.sum(weights)


def weighted_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean of `values` over examples with weight; 0 when every weight is 0.

  Args:
    values: [batch, ...] per-example values.
    weights: broadcastable to `values`; None = all ones.
  Returns:
    float32 scalar.
  """
  total, count = weighted_sum(values, weights)
  return total / jnp.maximum(count, 1e-12) * (count > 0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy with integer labels, computed in float32.

  With label smoothing `s` the target is `(1 - s) * one_hot + s / num_classes` (as in
  torch.nn.CrossEntropyLoss(label_smoothing=s)).

  Args:
    logits: [..., num_classes], any float dtype.
    labels: [...] int class indices.
    label_smoothing: in [0, 1).
  Returns:
    [...] float32 losses.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing={label_smoothing}; allowed: 0 <= value < 1")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if label_smoothing == 0.0:
    return nll
  smooth = -jnp.mean(logp, axis=-1)
  return (1.0 - label_smoothing) * nll + label_smoothing * smooth


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[...] float32: 1 where the arg-max of logits [..., classes] equals the label."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def classification_loss_fn(*, label_smoothing: float = 0.0) -> LossFn:
  """Loss for batches with "label" [batch] (and optional "mask"): loss and accuracy sums."""
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing={label_smoothing}; allowed: 0 <= value < 1")

  def loss_fn(logits: jax.Array, batch: Batch) -> Stats:
    labels = batch["label"]
    w = example_weights(batch, labels.shape[0])
    ce = softmax_cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return {"loss": weighted_sum(ce, w), "accuracy": weighted_sum(correct(logits, labels), w)}

  return loss_fn


def mlm_loss_fn() -> LossFn:
  """Masked-LM loss over masked positions only (batch from `mask_batch`).

  Needs "mlm_labels" [batch, seq] (IGNORE_LABEL where not masked) and uses "mask" [batch] to
  drop padded examples. Counts are masked tokens, so the loss is a mean over tokens.
  """

  def loss_fn(logits: jax.Array, batch: Batch) -> Stats:
    labels = batch["mlm_labels"]
    w = (labels != IGNORE_LABEL).astype(jnp.float32)
    w = w * example_weights(batch, labels.shape[0])[:, None]
    safe = jnp.where(labels == IGNORE_LABEL, 0, labels)
    ce = softmax_cross_entropy(logits, safe)
    return {"loss": weighted_sum(ce, w), "accuracy": weighted_sum(correct(logits, safe), w)}

  return loss_fn


def mask_tokens(rng: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, *,
                vocab_size: int, mask_token_id: int, special_ids: Iterable[int],
                rate: float = 0.15) -> tuple[jax.Array, jax.Array]:
  """BERT's masking: picks `rate` of the real, non-special tokens; 80/10/10 replacement.

  Of the picked tokens 80% become `mask_token_id`, 10% a uniformly random token id and 10%
  stay unchanged (Devlin et al. 2019, section 3.1). Padding (attention_mask 0) and
  `special_ids` ([CLS], [SEP], [PAD], ...) are never picked. Random replacements are drawn
  from the non-special ids.

  Args:
    rng: a PRNG key.
    input_ids: [batch, seq] int token ids.
    attention_mask: [batch, seq], 1 for real tokens, 0 for padding.
    vocab_size: number of token ids.
    mask_token_id: the [MASK] id.
    special_ids: ids never to pick (and never to draw as random replacements).
    rate: probability of picking each eligible token.
  Returns:
    (masked_ids, labels): [batch, seq] int32; labels hold the original id at picked positions
    and IGNORE_LABEL elsewhere.
  """
  if not 0.0 < rate < 1.0:
    raise ValueError(f"rate={rate}; allowed: 0 < rate < 1")
  special_list = sorted({int(i) for i in special_ids} | {int(mask_token_id)})
  if special_list[0] < 0 or special_list[-1] >= vocab_size:
    raise ValueError(f"special ids {special_list} must lie in [0, vocab_size={vocab_size})")
  special = jnp.asarray(special_list, jnp.int32)
  ids = jnp.asarray(input_ids, jnp.int32)
  eligible = (jnp.asarray(attention_mask) > 0) & ~jnp.isin(ids, special)
  k_pick, k_how, k_tok = jax.random.split(rng, 3)
  picked = eligible & jax.random.bernoulli(k_pick, rate, ids.shape)
  u = jax.random.uniform(k_how, ids.shape)
  to_mask = picked & (u < 0.8)
  to_random = picked & (u >= 0.8) & (u < 0.9)
  # Uniform over non-special ids: draw an index among them, then skip over the special ones.
  r = jax.random.randint(k_tok, ids.shape, 0, vocab_size - len(special_list))
  for s in special_list:  # ascending: each special id at or below r shifts it up by one
    r = r + (r >= s)
  masked = jnp.where(to_mask, mask_token_id, jnp.where(to_random, r, ids))
  labels = jnp.where(picked, ids, IGNORE_LABEL)
  return masked.astype(jnp.int32), labels.astype(jnp.int32)


def mask_batch(*, vocab_size: int, mask_token_id: int, special_ids: Iterable[int],
               rate: float = 0.15) -> Callable[[jax.Array, Batch], dict[str, Any]]:
  """A `batch_fn(rng, batch) -> batch` for the train step: masks "input_ids", adds
  "mlm_labels" (see `mask_tokens`)."""
  special_ids = tuple(special_ids)

  def batch_fn(rng: jax.Array, batch: Batch) -> dict[str, Any]:
    ids, labels = mask_tokens(rng, batch["input_ids"], batch["attention_mask"],
                              vocab_size=vocab_size, mask_token_id=mask_token_id,
                              special_ids=special_ids, rate=rate)
    return {**batch, "input_ids": ids, "mlm_labels": labels}

  return batch_fn


def add_stats(a: Stats | None, b: Stats) -> Stats:
  """Adds two {name: (sum, count)} dicts (a None `a` is empty), e.g. over eval batches."""
  if a is None:
    return dict(b)
  return {k: (a[k][0] + b[k][0], a[k][1] + b[k][1]) for k in b}


def finalize(stats: Stats) -> dict[str, float]:
  """{name: (sum, count)} -> {name: sum / count} as Python floats (nan when count is 0)."""
  out = {}
  for k, (total, count) in stats.items():
    total, count = float(total), float(count)
    out[k] = total / count if count > 0 else float("nan")
  return out
