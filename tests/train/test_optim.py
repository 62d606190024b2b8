"""Optimizers: schedules, weight-decay mask, freezing, lr multipliers, clipping, accumulation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpretrain.train import losses, optim, step
from jaxpretrain.train.state import create_train_state
from tests.train import tiny

# Accumulated micro-batch means vs one full-batch mean: float32 sums in another order.
ACCUM_RTOL = 1e-5


def _params():
  return {"backbone": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
          "head": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
          "norm": {"scale": jnp.ones(2)}}


def _grads(value=1.0):
  return jax.tree.map(lambda p: jnp.full_like(p, value), _params())


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="lamb"), "unknown optimizer 'lamb'; known: \\['adamw', 'sgd'\\]"),
    (dict(schedule="step"), "unknown schedule 'step'; known"),
    (dict(schedule="cosine"), "total_steps=None; allowed: an int > warmup_steps=0"),
    (dict(name="sgd", momentum=1.5), "momentum=1.5; allowed: in \\[0, 1\\)"),
    (dict(name="sgd", momentum=0.0, nesterov=True), "nesterov=True; allowed"),
    (dict(learning_rate=-1.0), "learning_rate=-1.0; allowed: > 0"),
    (dict(accum_steps=0), "accum_steps=0; allowed: an int >= 1"),
    (dict(clip_norm=0.0), "clip_norm=0.0; allowed"),
    (dict(freeze=["("]), "bad parameter regex '\\('"),
    (dict(lr_mults={"head/.*": -1}), "lr multiplier for 'head/.\\*'=-1; allowed: >= 0"),
])
def test_bad_values_name_the_value_and_the_allowed_ones(kwargs, message):
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError, match=message):
    optim.make_optimizer(**kwargs)


@pytest.mark.parametrize("what", ["freeze", "lr_mults"])
def test_regex_matching_nothing_fails_at_init(what):
  arg = ["hed/.*"] if what == "freeze" else {"hed/.*": 0.1}
  tx = optim.make_optimizer(learning_rate=0.1, **{what: arg}).tx
  with pytest.raises(ValueError, match=f"{what} regex 'hed/.\\*' matches no parameter"):
    tx.init(_params())


def test_schedules():
  cos = optim.make_schedule("cosine", learning_rate=1.0, warmup_steps=10, total_steps=110,
                            end_lr_factor=0.1)
  np.testing.assert_allclose([cos(0), cos(5), cos(10), cos(60), cos(110), cos(200)],
                             [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6, atol=1e-7)
  lin = optim.make_schedule("linear", learning_rate=2.0, total_steps=4)
  np.testing.assert_allclose([lin(s) for s in range(5)], [2.0, 1.5, 1.0, 0.5, 0.0])
  const = optim.make_schedule("constant", learning_rate=3.0, warmup_steps=2)
  np.testing.assert_allclose([const(s) for s in range(4)], [0.0, 1.5, 3.0, 3.0])
  # With accumulation the schedule advances once per accum_steps train steps.
  opt = optim.make_optimizer(learning_rate=1.0, schedule="linear", total_steps=4,
                             accum_steps=2)
  np.testing.assert_allclose([opt.lr_fn(s) for s in range(4)], [1.0, 1.0, 0.75, 0.75])


def _one_update(grads, **kwargs):
  tx = optim.make_optimizer(**{"learning_rate": 0.1, **kwargs}).tx
  params = _params()
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_adamw_weight_decay_skips_biases_and_norm_scales():
  updates = _one_update(_grads(0.0), name="adamw", weight_decay=0.5)
  # Zero gradients: only decay moves params, by -lr * wd * p = -0.05 where it applies.
  np.testing.assert_allclose(updates["backbone"]["kernel"], -0.05)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.05)
  for leaf in (updates["backbone"]["bias"], updates["head"]["bias"], updates["norm"]["scale"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_sgd_weight_decay_is_l2_on_the_gradient():
  updates = _one_update(_grads(1.0), name="sgd", momentum=0.0, weight_decay=0.5)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.1 * (1.0 + 0.5))
  np.testing.assert_allclose(updates["head"]["bias"], -0.1)


def test_lr_multipliers_first_match_wins():
  base = _one_update(_grads(), name="sgd", momentum=0.0)
  mult = _one_update(_grads(), name="sgd", momentum=0.0,
                     lr_mults=[("backbone/kernel", 0.5), ("backbone/.*", 0.1)])
  np.testing.assert_allclose(mult["backbone"]["kernel"], 0.5 * base["backbone"]["kernel"])
  np.testing.assert_allclose(mult["backbone"]["bias"], 0.1 * base["backbone"]["bias"])
  np.testing.assert_array_equal(mult["head"]["kernel"], base["head"]["kernel"])


def test_clipping_by_global_norm():
  updates = _one_update(_grads(10.0), name="sgd", momentum=0.0, clip_norm=1.0,
                        learning_rate=1.0)
  np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-6)


def _train(model, opt, batches, batch_stats=True):
  batch = batches[0]
  variables = tiny.init(model, batch)
  state = create_train_state(variables, opt.tx, 0)
  fn = jax.jit(functools.partial(step.train_step, model=model, tx=opt.tx,
                                 loss_fn=losses.classification_loss_fn(), lr_fn=opt.lr_fn))
  for b in batches:
    state, _ = fn(state, b)
  return variables, state


def test_frozen_params_stay_bit_identical():
  model = tiny.TinyCNN()
  opt = optim.make_optimizer("adamw", learning_rate=0.1, weight_decay=0.1, clip_norm=1.0,
                             freeze=["conv/.*", "bn/scale"])
  before, state = _train(model, opt, [tiny.image_batch(i) for i in range(3)])
  p0, p1 = before["params"], state.params
  np.testing.assert_array_equal(p1["conv"]["kernel"], p0["conv"]["kernel"])
  np.testing.assert_array_equal(p1["conv"]["bias"], p0["conv"]["bias"])
  np.testing.assert_array_equal(p1["bn"]["scale"], p0["bn"]["scale"])
  assert not np.allclose(p1["bn"]["bias"], p0["bn"]["bias"])
  assert not np.allclose(p1["head"]["kernel"], p0["head"]["kernel"])


def test_accumulation_equals_one_big_batch():
  model = tiny.TinyMLP(num_classes=3)  # no BatchNorm: micro-batches see the same function
  big = tiny.image_batch(0, batch=8)
  halves = [{k: v[:4] for k, v in big.items()}, {k: v[4:] for k, v in big.items()}]
  kw = dict(name="adamw", learning_rate=0.05, weight_decay=0.1, clip_norm=0.5)
  _, one = _train(model, optim.make_optimizer(**kw), [big])
  _, acc = _train(model, optim.make_optimizer(accum_steps=2, **kw), halves)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=ACCUM_RTOL, atol=1e-7),
               acc.params, one.params)
  assert not np.allclose(acc.params["head"]["kernel"],
                         tiny.init(model, big)["params"]["head"]["kernel"])
