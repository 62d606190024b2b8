"""Candidate cost: XLA FLOPs against arithmetic, timing with a fake clock, a tiny ResNet,
budgets and the Pareto front."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import models
from jaxpretrain.select import cost
from jaxpretrain.select import features as features_lib


def _dense(v, x):
  return x @ v["params"]["w"]


def test_flops_params_and_memory_of_a_matmul():
  v = {"params": {"w": jnp.ones((32, 16))}}
  x = jnp.ones((8, 32))
  c = cost.measure_cost(_dense, (v, x), batch_size=8, repeats=2, warmup=0)
  assert c.flops_per_example == 2 * 32 * 16  # XLA counts a multiply-add as 2 FLOPs
  assert c.gflops_per_example == 2 * 32 * 16 / 1e9
  assert c.params == 32 * 16 and c.batch_size == 8 and c.repeats == 2
  # Arguments (w and x) and the output, float32; XLA may add temporaries.
  assert c.peak_memory_bytes >= (32 * 16 + 8 * 32 + 8 * 16) * 4
  assert c.device == jax.devices()[0].platform == "cpu" and c.device_peak_bytes is None
  assert c.latency_ms > 0 and c.throughput == pytest.approx(8 / (c.latency_ms / 1e3))


def test_latency_is_the_median_of_timed_calls_after_warmup():
  calls = []

  def fn(v, x):
    jax.debug.callback(lambda: calls.append(1))
    return _dense(v, x)

  ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # timed calls of 1 s, 3 s and 2 s
  args = ({"params": {"w": jnp.ones((4, 2))}}, jnp.ones((8, 4)))
  c = cost.measure_cost(fn, args, batch_size=8, repeats=3, warmup=2, clock=lambda: next(ticks))
  assert len(calls) == 5  # 2 warm-up + 3 timed, none during compilation
  assert (c.latency_ms, c.latency_ms_min, c.latency_ms_max) == (2000.0, 1000.0, 3000.0)
  assert c.throughput == 4.0 and c.warmup == 2
  with pytest.raises(ValueError, match="need repeats >= 1, warmup >= 0"):
    cost.measure_cost(fn, args, batch_size=8, repeats=0)


def test_cost_of_a_tiny_resnet():
  model = models.build_model("resnet_tiny", num_classes=None)
  variables = models.init_variables("resnet_tiny", model, jax.random.key(0))
  fn = features_lib.make_extract_fn(model, models.get_family("resnet"), "pooled")
  images = jnp.zeros((4, 16, 16, 3))
  c = cost.measure_cost(fn, (variables, {"image": images}), batch_size=4, repeats=2)
  n = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
  assert c.params == n  # batch_stats are not parameters
  # At least the stem convolution's multiply-adds at every output pixel, counted twice (the
  # whole network does more; XLA counts it all): 7 x 7 x 3 x 8 weights, stride 2 -> 8 x 8.
  stem = variables["params"]["conv1"]["kernel"]
  assert c.flops_per_example >= 2 * np.size(stem) * 8 * 8
  assert c.latency_ms > 0 and c.throughput == pytest.approx(4e3 / c.latency_ms)
  assert c.peak_memory_bytes >= 4 * n  # float32 parameters are arguments of the call
  assert cost.Cost.from_json(c.to_json()) == c


def _cost(**kw):
  base = dict(params=1000, flops_per_example=2e9, batch_size=8, latency_ms=20.0,
              latency_ms_min=19.0, latency_ms_max=25.0, throughput=400.0,
              peak_memory_bytes=2**20, device_peak_bytes=None, device="cpu", repeats=3,
              warmup=1)
  return cost.Cost(**{**base, **kw})


def test_over_budget_names_each_budget_broken():
  c = _cost()
  assert cost.over_budget(c, {}) == []
  assert cost.over_budget(c, {"max_latency_ms": 20.0, "max_params": 1000, "max_gflops": 2}) == []
  assert cost.over_budget(c, {"max_latency_ms": 10.0, "max_params": 999, "max_gflops": 1.5}) == [
      "latency 20 ms > max_latency_ms=10 (batch 8, cpu)",
      "1,000 parameters > max_params=999",
      "2 GFLOPs per example > max_gflops=1.5"]
  assert cost.over_budget(_cost(flops_per_example=None), {"max_gflops": 1e-9}) == []  # unknown


def test_check_budgets():
  assert cost.check_budgets({"max_params": 5e6, "max_gflops": None}) == {"max_params": 5e6}
  with pytest.raises(ValueError, match="unknown budget 'max_flops'; known"):
    cost.check_budgets({"max_flops": 1.0})
  for bad in (0, -1.0, float("nan"), float("inf"), "5"):
    with pytest.raises(ValueError, match="budget max_latency_ms must be a positive number"):
      cost.check_budgets({"max_latency_ms": bad})


def test_cost_record_is_validated():
  d = _cost().to_json()
  del d["params"]
  with pytest.raises(ValueError, match="lacks field 'params'"):
    cost.Cost.from_json(d)
  with pytest.raises(ValueError, match="params must be an int >= 0; got -3"):
    cost.Cost.from_json({**_cost().to_json(), "params": -3})


def test_pareto_front():
  # (throughput, score): b is faster and better than a; c is fastest; d is best; e ties c.
  pts = [(100, 0.5), (200, 0.6), (900, 0.2), (50, 0.9), (900, 0.1)]
  assert cost.pareto_front(pts) == [3, 1, 2]  # by increasing throughput
  assert cost.pareto_front([(1, 1), (1, 1)]) == [0, 1]  # equal points dominate neither
