"""Weighted means and (sum, count) evaluation, cross-entropy with label smoothing, MLM masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain.train import losses

# float32 logsumexp against a float64 NumPy reference.
F32_RTOL = 1e-6


def _np_smoothed_ce(logits, labels, s):
  logits = logits.astype(np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
  logp -= logits.max(-1, keepdims=True)
  k = logits.shape[-1]
  target = np.full(logits.shape, s / k)
  target[np.arange(len(labels)), labels] += 1 - s
  return -(target * logp).sum(-1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_with_label_smoothing(smoothing):
  rs = np.random.RandomState(0)
  logits, labels = rs.randn(6, 5).astype(np.float32) * 3, rs.randint(0, 5, 6)
  got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                     label_smoothing=smoothing)
  np.testing.assert_allclose(got, _np_smoothed_ce(logits, labels, smoothing), rtol=F32_RTOL)


def test_cross_entropy_is_float32_for_bf16_logits():
  logits = jnp.asarray(np.random.RandomState(0).randn(4, 7), jnp.bfloat16)
  out = losses.softmax_cross_entropy(logits, jnp.arange(4))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, losses.softmax_cross_entropy(
      logits.astype(jnp.float32), jnp.arange(4)), rtol=F32_RTOL)


def test_label_smoothing_out_of_range():
  with pytest.raises(ValueError, match="label_smoothing=1.0; allowed"):
    losses.classification_loss_fn(label_smoothing=1.0)


def test_weighted_mean_ignores_masked_examples():
  values = jnp.asarray([1.0, 2.0, 3.0, jnp.nan])  # the padded slot may hold garbage
  weights = jnp.asarray([1.0, 1.0, 1.0, 0.0])
  assert float(losses.weighted_mean(values, weights)) == 2.0
  assert float(losses.weighted_mean(jnp.zeros(3), jnp.zeros(3))) == 0.0


def test_eval_sums_over_padded_batches_equal_one_batch():
  rs = np.random.RandomState(1)
  logits, labels = rs.randn(10, 4).astype(np.float32), rs.randint(0, 4, 10).astype(np.int32)
  loss_fn = losses.classification_loss_fn()
  whole = losses.finalize(loss_fn(jnp.asarray(logits), {"label": jnp.asarray(labels)}))
  stats = None
  for start in range(0, 10, 4):  # batches of 4, the last holding 2 real and 2 padded examples
    lg, lb = logits[start:start + 4], labels[start:start + 4]
    pad = 4 - len(lb)
    batch = {"label": jnp.asarray(np.pad(lb, (0, pad))),
             "mask": jnp.asarray(np.r_[np.ones(len(lb)), np.zeros(pad)], jnp.float32)}
    stats = losses.add_stats(stats, loss_fn(jnp.asarray(np.pad(lg, ((0, pad), (0, 0)))), batch))
  assert float(stats["loss"][1]) == 10
  np.testing.assert_allclose(losses.finalize(stats)["loss"], whole["loss"], rtol=F32_RTOL)
  np.testing.assert_allclose(losses.finalize(stats)["accuracy"], whole["accuracy"],
                             rtol=F32_RTOL)


VOCAB, MASK_ID, PAD_ID, CLS_ID, SEP_ID = 50, 3, 0, 1, 2
# 100k eligible tokens: the standard error of a 15% rate is ~0.1%, of an 80% share ~0.3%.
MLM_STAT_ATOL = 0.01


@pytest.fixture(scope="module")
def masked():
  rs = np.random.RandomState(0)
  b, s = 256, 512
  ids = rs.randint(4, VOCAB, (b, s)).astype(np.int32)
  lengths = rs.randint(s // 2, s + 1, b)
  attn = (np.arange(s)[None] < lengths[:, None]).astype(np.int32)
  ids[:, 0] = CLS_ID
  ids[np.arange(b), lengths - 1] = SEP_ID
  ids[attn == 0] = PAD_ID
  out, labels = losses.mask_tokens(jax.random.key(0), ids, attn, vocab_size=VOCAB,
                                   mask_token_id=MASK_ID, special_ids=[PAD_ID, CLS_ID, SEP_ID])
  return ids, attn, np.asarray(out), np.asarray(labels)


def test_mask_tokens_rate_and_split(masked):
  ids, attn, out, labels = masked
  eligible = (attn == 1) & ~np.isin(ids, [PAD_ID, CLS_ID, SEP_ID])
  picked = labels != losses.IGNORE_LABEL
  assert abs(picked.sum() / eligible.sum() - 0.15) < MLM_STAT_ATOL
  np.testing.assert_array_equal(labels[picked], ids[picked])
  as_mask = (out == MASK_ID) & picked
  kept = (out == ids) & picked
  randomized = picked & ~as_mask & ~kept
  n = picked.sum()
  assert abs(as_mask.sum() / n - 0.8) < MLM_STAT_ATOL
  # A random replacement equals the original 1 / 46 of the time, so "kept" is a bit above 10%.
  assert abs(kept.sum() / n - 0.1) < MLM_STAT_ATOL
  assert abs(randomized.sum() / n - 0.1) < MLM_STAT_ATOL
  assert not np.isin(out[randomized], [PAD_ID, CLS_ID, SEP_ID, MASK_ID]).any()
  assert out[randomized].max() == VOCAB - 1 and out[randomized].min() == 4


def test_mask_tokens_never_touches_padding_or_special(masked):
  ids, attn, out, labels = masked
  untouchable = (attn == 0) | np.isin(ids, [PAD_ID, CLS_ID, SEP_ID])
  assert (labels[untouchable] == losses.IGNORE_LABEL).all()
  np.testing.assert_array_equal(out[untouchable], ids[untouchable])
  np.testing.assert_array_equal(out[labels == losses.IGNORE_LABEL],
                                ids[labels == losses.IGNORE_LABEL])


def test_mlm_loss_counts_masked_positions_of_real_examples():
  rs = np.random.RandomState(0)
  logits = jnp.asarray(rs.randn(2, 4, 6), jnp.float32)
  labels = jnp.asarray([[-100, 2, -100, 5], [1, -100, -100, -100]])
  stats = losses.mlm_loss_fn()(logits, {"mlm_labels": labels, "mask": jnp.asarray([1.0, 0.0])})
  ce = losses.softmax_cross_entropy(logits[0, jnp.asarray([1, 3])], jnp.asarray([2, 5]))
  assert float(stats["loss"][1]) == 2
  np.testing.assert_allclose(stats["loss"][0], ce.sum(), rtol=F32_RTOL)
