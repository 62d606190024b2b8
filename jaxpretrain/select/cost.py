"""What a candidate costs to run: parameters, FLOPs, latency, throughput and peak memory.

    cost = measure_cost(extract_fn, (variables, batch), batch_size=64, repeats=5)

Measured on the device JAX runs on (`jax.devices()[0]`), for one compiled forward pass at
the batch size of the ranking's feature extraction:

  params              trainable parameters (the leaves of `variables["params"]`);
  flops_per_example   XLA's cost analysis of the compiled computation (`compiled.cost_analysis()
                      ["flops"]`, multiply-adds counted as 2) divided by the batch size;
  latency_ms          median wall time of one call on the batch, after `warmup` calls that are
                      not timed (the first one compiles nothing: the call is pre-compiled, but
                      caches and allocators warm up), each call waited on (block_until_ready);
  throughput          examples per second, batch_size / median latency;
  peak_memory_bytes   what XLA's memory analysis says one call holds at once: arguments
                      (parameters and batch) + outputs + temporaries - aliased bytes. This is
                      what is reported on every backend; on CPU it is the only figure (CPU
                      devices keep no memory statistics).
  device_peak_bytes   on accelerators that keep memory statistics (GPU, TPU), the device's
                      `peak_bytes_in_use` after the timed calls: the process-wide high-water
                      mark, so an upper bound that includes anything allocated before.

Timings on a shared machine vary from run to run; `repeats` and `warmup` are small by default
(quick, for tests and CPU runs) and configurable.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

DEFAULT_REPEATS = 5
DEFAULT_WARMUP = 1
BUDGETS = ("max_latency_ms", "max_params", "max_gflops")


@dataclasses.dataclass(frozen=True)
class Cost:
  """One candidate's cost on one device at one batch size."""
  params: int
  flops_per_example: float | None  # None: the backend's cost analysis gives no FLOPs
  batch_size: int
  latency_ms: float  # median over `repeats` timed calls
  latency_ms_min: float
  latency_ms_max: float
  throughput: float  # examples / s at the median latency
  peak_memory_bytes: int | None  # XLA memory analysis of the compiled call
  device_peak_bytes: int | None  # device.memory_stats()["peak_bytes_in_use"], where kept
  device: str  # e.g. "cpu" or "NVIDIA H200"
  repeats: int
  warmup: int

  @property
  def gflops_per_example(self) -> float | None:
    return None if self.flops_per_example is None else self.flops_per_example / 1e9

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "gflops_per_example": self.gflops_per_example}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> Cost:
    """The inverse of `to_json`; raises ValueError on a missing or mistyped field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:
      values = {name: d[name] for name in fields}
    except KeyError as e:
      raise ValueError(f"cost record lacks field {e}") from None
    for name in ("params", "batch_size", "repeats", "warmup"):
      if not isinstance(values[name], int) or values[name] < 0:
        raise ValueError(f"cost field {name} must be an int >= 0; got {values[name]!r}")
    return cls(**values)


def count_params(variables: Mapping[str, Any]) -> int:
  """Number of trainable parameters: the leaves under "params" (all leaves if none)."""
  tree = variables.get("params", variables) if isinstance(variables, Mapping) else variables
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def _flops(compiled: Any, lowered: Any) -> float | None:
  """FLOPs of one call from XLA's cost analysis (compiled, else the lowered HLO's)."""
  for stage in (compiled, lowered):
    try:
      analysis = stage.cost_analysis()
    except Exception:  # noqa: BLE001 -- optional per backend; absence is reported as None
      continue
    if isinstance(analysis, Sequence) and not isinstance(analysis, Mapping):
      analysis = analysis[0] if analysis else None  # older jax: one dict per computation
    flops = (analysis or {}).get("flops")
    if flops is not None and math.isfinite(flops) and flops > 0:
      return float(flops)
  return None


def _xla_peak_bytes(compiled: Any) -> int | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 -- not every backend implements it
    return None
  if m is None:
    return None
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return int(total)


def _device_name(device: Any) -> str:
  kind = getattr(device, "device_kind", "") or ""
  return device.platform if device.platform == "cpu" or not kind else kind


def measure_cost(fn: Callable[..., Any], args: Sequence[Any], *, batch_size: int,
                 params: int | None = None, repeats: int = DEFAULT_REPEATS,
                 warmup: int = DEFAULT_WARMUP, clock: Callable[[], float] = time.perf_counter
                 ) -> Cost:
  """Compiles `fn(*args)` once, reads XLA's analyses, then times `repeats` calls.

  Args:
    fn: the forward pass; a `jax.jit`-wrapped function is used as is (its compiler options
      kept), anything else is jitted here.
    args: its arguments, e.g. (variables, batch); moved to the device once before timing.
    batch_size: examples in the batch, for per-example FLOPs and throughput.
    params: parameter count to report; default `count_params(args[0])`.
    repeats: timed calls (the median is reported), >= 1.
    warmup: untimed calls before them, >= 0.
    clock: seconds, monotonic (for tests).

  Returns:
    The `Cost`.
  """
  if repeats < 1 or warmup < 0 or batch_size < 1:
    raise ValueError(f"need repeats >= 1, warmup >= 0, batch_size >= 1; got repeats={repeats}, "
                     f"warmup={warmup}, batch_size={batch_size}")
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
  args = jax.device_put(tuple(args))
  lowered = jitted.lower(*args)
  compiled = lowered.compile()
  flops = _flops(compiled, lowered)
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = clock()
    jax.block_until_ready(compiled(*args))
    times.append(clock() - start)
  median = statistics.median(times)
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return Cost(
      params=count_params(args[0]) if params is None else int(params),
      flops_per_example=None if flops is None else flops / batch_size,
      batch_size=batch_size, latency_ms=1e3 * median, latency_ms_min=1e3 * min(times),
      latency_ms_max=1e3 * max(times),
      throughput=batch_size / median if median > 0 else math.inf,
      peak_memory_bytes=_xla_peak_bytes(compiled),
      device_peak_bytes=(int(stats["peak_bytes_in_use"])
                         if stats and "peak_bytes_in_use" in stats else None),
      device=_device_name(device), repeats=repeats, warmup=warmup)


# ------------------------------------------------------------------------------------------
# Budgets.
# ------------------------------------------------------------------------------------------


def check_budgets(budgets: Mapping[str, float | None]) -> dict[str, float]:
  """The budgets that are set, validated: known names, positive finite values."""
  out = {}
  for name, value in budgets.items():
    if name not in BUDGETS:
      raise ValueError(f"unknown budget '{name}'; known: {list(BUDGETS)}")
    if value is None:
      continue
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ValueError(f"budget {name} must be a positive number; got {value!r}")
    out[name] = float(value)
  return out


def over_budget(cost: Cost, budgets: Mapping[str, float]) -> list[str]:
  """Why `cost` breaks `budgets` (one phrase per budget exceeded), [] when within all.

  A FLOPs budget cannot judge a candidate whose backend gave no FLOPs figure; it is not
  applied to it (the report shows the figure as "n/a").
  """
  reasons = []
  limit = budgets.get("max_latency_ms")
  if limit is not None and cost.latency_ms > limit:
    reasons.append(f"latency {cost.latency_ms:.3g} ms > max_latency_ms={limit:g} "
                   f"(batch {cost.batch_size}, {cost.device})")
  limit = budgets.get("max_params")
  if limit is not None and cost.params > limit:
    reasons.append(f"{cost.params:,} parameters > max_params={limit:,.0f}")
  limit = budgets.get("max_gflops")
  gflops = cost.gflops_per_example
  if limit is not None and gflops is not None and gflops > limit:
    reasons.append(f"{gflops:.3g} GFLOPs per example > max_gflops={limit:g}")
  return reasons


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of the points no other point beats in both coordinates (higher is better).

  A point is dominated when another is >= in both and > in at least one. Returned in order
  of increasing first coordinate.
  """
  pts = [(float(a), float(b)) for a, b in points]
  front = [i for i, (a, b) in enumerate(pts)
           if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for a2, b2 in pts)]
  return sorted(front, key=lambda i: pts[i])
