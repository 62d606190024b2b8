"""The pure train/eval steps: learning a real task, one compilation, metrics, bf16 compute,
masked examples, MLM masking inside the step."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxpretrain.train import losses, optim, step
from jaxpretrain.train.state import create_train_state
from tests.train import tiny

# bfloat16 keeps 8 mantissa bits (relative error ~4e-3 per op); a tiny CNN's loss stays
# within a few of those of its float32 twin.
BF16_LOSS_RTOL = 3e-2
METRICS = {"loss", "accuracy", "lr", "grad_norm", "update_norm", "param_norm"}


def _step_fn(model, opt, loss_fn=None, **kw):
  return functools.partial(step.train_step, model=model, tx=opt.tx, lr_fn=opt.lr_fn,
                           loss_fn=loss_fn or losses.classification_loss_fn(), **kw)


def test_loss_falls_on_digits_and_compiles_once():
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
  y = y.astype(np.int32)
  train, test = slice(0, 1500), slice(1500, None)
  model = tiny.TinyMLP(num_classes=10, hidden=32)
  opt = optim.make_optimizer("adamw", learning_rate=1e-2, weight_decay=1e-4,
                             schedule="cosine", warmup_steps=5, total_steps=60)
  state = create_train_state(model.init(jax.random.key(0), x[:1]), opt.tx, 0)
  fn = _step_fn(model, opt)

  @jax.jit
  @chex.assert_max_traces(n=1)  # a second trace (a recompile) fails the test
  def train_step(state, batch):
    return fn(state, batch)

  rs = np.random.RandomState(0)
  history = []
  for _ in range(60):
    idx = rs.choice(1500, 64, replace=False) + train.start
    state, metrics = train_step(state, {"image": x[idx], "label": y[idx]})
    history.append(metrics)
  history = jax.device_get(history)
  assert set(history[0]) == METRICS
  first, last = np.mean([m["loss"] for m in history[:5]]), np.mean(
      [m["loss"] for m in history[-5:]])
  assert last < 0.5 * first, (first, last)
  np.testing.assert_allclose([m["lr"] for m in history[:3]], [0.0, 2e-3, 4e-3], rtol=1e-6)
  eval_step = jax.jit(functools.partial(step.eval_step, model=model,
                                        loss_fn=losses.classification_loss_fn()))
  stats = losses.finalize(eval_step(state, {"image": x[test], "label": y[test]}))
  assert stats["accuracy"] > 0.8, stats


def test_masked_examples_change_nothing():
  """Padding (mask 0) with garbage gives the same step as the batch without it."""
  model = tiny.TinyMLP(num_classes=3)
  opt = optim.make_optimizer("sgd", learning_rate=0.1)
  real = tiny.image_batch(0, batch=6)
  padded = {k: np.concatenate([v, v[:2] * 0 + 7]) for k, v in real.items()}
  padded["mask"][6:] = 0.0
  state = create_train_state(tiny.init(model, real), opt.tx, 0)
  fn = jax.jit(_step_fn(model, opt))
  a, ma = fn(state, real)
  b, mb = fn(state, padded)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7),
               a.params, b.params)
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)


def test_bf16_compute_keeps_float32_params_and_loss():
  batch = tiny.image_batch(0)
  opt = optim.make_optimizer("sgd", learning_rate=0.1)
  out = {}
  for name in ("float32", "bfloat16"):
    model = tiny.TinyCNN(dtype=step.compute_dtype(name))
    state = create_train_state(tiny.init(model, batch), opt.tx, 0)
    logits, _ = model.apply(state.variables, batch["image"])
    assert logits.dtype == step.compute_dtype(name)
    state, metrics = jax.jit(_step_fn(model, opt))(state, batch)
    assert {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats))} == {
        jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == jnp.float32
    out[name] = float(metrics["loss"])
  np.testing.assert_allclose(out["bfloat16"], out["float32"], rtol=BF16_LOSS_RTOL)
  with pytest.raises(ValueError, match="unknown compute dtype 'fp8'; known"):
    step.compute_dtype("fp8")


class _TinyMLM(nn.Module):
  """Token ids -> per-token logits over a 20-token vocabulary (embedding + dense)."""

  @nn.compact
  def __call__(self, input_ids, *, attention_mask=None, token_type_ids=None, train=False):
    del attention_mask, token_type_ids, train
    h = nn.Embed(20, 8, name="embed")(input_ids)
    logits = nn.Dense(20, name="head")(h)
    return logits, {}


def test_mlm_step_masks_inside_the_step():
  rs = np.random.RandomState(0)
  batch = {"input_ids": rs.randint(4, 20, (4, 16)).astype(np.int32),
           "attention_mask": np.ones((4, 16), np.int32)}
  model = _TinyMLM()
  opt = optim.make_optimizer("adamw", learning_rate=1e-2)
  state = create_train_state(model.init(jax.random.key(0), batch["input_ids"]), opt.tx, 0)
  fn = jax.jit(_step_fn(model, opt, losses.mlm_loss_fn(), batch_fn=losses.mask_batch(
      vocab_size=20, mask_token_id=3, special_ids=[0, 1, 2])))
  state, m1 = fn(state, batch)
  state, m2 = fn(state, batch)
  assert np.isfinite(m1["loss"]) and np.isfinite(m2["loss"])
  # fold_in(rng, step): a different set of positions each step, hence a different loss count.
  assert float(m1["loss"]) != float(m2["loss"])


def test_check_finite():
  step.check_finite({"loss": np.float32(1.0)}, 3)
  with pytest.raises(FloatingPointError, match="non-finite loss nan at step 3"):
    step.check_finite({"loss": np.float32(np.nan)}, 3)
