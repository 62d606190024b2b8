"""Timing and reporting shared by every suite: interleaved repetitions, statistics, machine facts.

Variants of one case (jaxpretrain, torch NCHW, torch channels_last, torch.compile...) are timed
in the same process, one repetition of each in turn, so that a slow minute of a shared machine
hits all of them alike. Warm-up calls are excluded; the figure of merit is the median over
repetitions, the spread is the interquartile range relative to the median.

    times, iters = interleaved({"jax": f, "torch": g}, reps=5, warmup=2, target_s=1.0)
    stats = summarize(times["jax"])   # {"median": s, "iqr_rel": ..., "min": ..., "times": [...]}

This module imports neither JAX nor torch, so the GPU suite can use it on a machine without torch.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

RESULTS = pathlib.Path(__file__).parent / "results"
# Pause between two timed blocks: lets the thread pools of the previous variant (OpenMP spins
# for a few ms after a parallel region) go idle before the next one starts.
SETTLE_S = 0.05


def cores() -> int:
  """CPU cores this process may run on (the affinity mask, not the host's count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def interleaved(fns: Mapping[str, Callable[[], Any]], *, reps: int, warmup: int = 1,
                target_s: float = 1.0,
                sync: Callable[[Any], Any] | Mapping[str, Callable[[Any], Any]] | None = None,
                log: Callable[[str], None] | None = None,
                cpu_times: dict[str, list[float]] | None = None
                ) -> tuple[dict[str, list[float]], dict[str, int]]:
  """Seconds per call of each function over `reps` timed blocks, the variants interleaved.

  Every function must block until its work is done (block_until_ready for JAX; torch on CPU
  is synchronous), unless `sync` is given: then functions may only dispatch, and `sync` is
  called on the last result of each block (on a GPU, in-order execution makes that wait for
  the whole block, without a host round trip per call). Warm-up calls run first, per
  function, and are not timed; the last one sizes the function's timed block to about
  `target_s` (at least one call). Repetition r starts at a different function (a rotation),
  so no variant always runs first or last.

  Args:
    fns: name -> zero-argument callable doing one step.
    reps: timed repetitions per function.
    warmup: untimed calls per function before the first repetition (at least 1).
    target_s: wanted duration of one timed block.
    sync: waits for a function's result (e.g. jax.block_until_ready), or name -> such a
      function (JAX and torch variants of one GPU case); None: fns block.
    log: called with a progress line after each repetition.
    cpu_times: if given, filled with name -> [CPU seconds of this process per call] (all its
      threads): the work done, which other processes on a shared machine disturb less than
      the wall time (spinning thread pools count as work, though).
  Returns:
    (name -> [seconds per call] of length reps in repetition order, name -> calls per block).
  """
  names = list(fns)
  syncs = {n: sync.get(n) if isinstance(sync, Mapping) else sync for n in names}
  iters = {}
  for name in names:
    for _ in range(max(warmup, 1) - 1):
      _sync(syncs[name], fns[name]())
    iters[name] = calls_per_rep(_timed_block(fns[name], 1, syncs[name])[0], target_s)
  times: dict[str, list[float]] = {n: [] for n in names}
  for r in range(reps):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      wall, cpu = _timed_block(fns[name], iters[name], syncs[name])
      times[name].append(wall)
      if cpu_times is not None:
        cpu_times.setdefault(name, []).append(cpu)
    if log:
      log(f"    rep {r + 1}/{reps}: " + ", ".join(f"{n} {times[n][-1]:.4f}s" for n in names))
  return times, iters


def _sync(sync: Callable[[Any], Any] | None, out: Any) -> None:
  if sync is not None:
    sync(out)


def _timed_block(fn: Callable[[], Any], iters: int,
                 sync: Callable[[Any], Any] | None = None) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) per call over `iters` calls."""
  gc.collect()
  time.sleep(SETTLE_S)
  gc.disable()  # a collection inside a timed block would be charged to whoever triggered it
  try:
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
      out = fn()
    _sync(sync, out)
    return (time.perf_counter() - t0) / iters, (time.process_time() - c0) / iters
  finally:
    gc.enable()


def summarize(times: Sequence[float]) -> dict[str, Any]:
  """Median, quartiles, min, max and the relative interquartile range of per-call seconds."""
  xs = sorted(times)
  med = statistics.median(xs)
  if len(xs) >= 4:
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
  else:
    q1, q3 = xs[0], xs[-1]
  return {"median": med, "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1],
          "iqr_rel": (q3 - q1) / med if med else float("nan"), "count": len(xs),
          "times": list(times)}


def calls_per_rep(seconds_per_call: float, target_s: float) -> int:
  """How many calls make a timed block of about `target_s` (at least one)."""
  return max(1, round(target_s / max(seconds_per_call, 1e-9)))


def select(cases: Sequence[Any], only: Sequence[str]) -> list[Any]:
  """Cases whose name is in `only` (all when empty); unknown names fail with the known ones."""
  if not only:
    return list(cases)
  known = [c.name for c in cases]
  bad = [n for n in only if n not in known]
  if bad:
    raise ValueError(f"unknown case(s) {bad}; known: {known}")
  return [c for c in cases if c.name in only]


def versions(packages: Sequence[str]) -> dict[str, str]:
  """Installed versions of the packages that are installed (distribution names)."""
  out = {}
  for name in packages:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      out[name] = importlib.metadata.version(name)
  return out


def cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def memory_gib() -> float | None:
  try:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemTotal:"):
        return round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  return None


# Instruction-set features that decide which kernels XLA and oneDNN/MKL can use (a ratio
# against torch is a property of the machine: README, "Speed against torch").
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_bf16", "amx_int8")


def isa_features() -> list[str]:
  """The ISA_FLAGS this CPU reports in /proc/cpuinfo (empty where it cannot be read)."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        have = set(line.split(":", 1)[1].split())
        return [f for f in ISA_FLAGS if f in have]
  except OSError:
    pass
  return []


def machine() -> dict[str, Any]:
  """Where the numbers come from: CPU, cores, memory, OS, Python, XLA_FLAGS, load."""
  return {
      "cpu": cpu_model(), "isa": isa_features(), "cores": cores(), "host_cpus": os.cpu_count(),
      "memory_gib": memory_gib(), "os": platform.platform(), "python": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "loadavg": list(os.getloadavg()),
      # The memory allocator changes CPU step times by up to 1.6x here (NOTES.md, attempt 16).
      "allocator": {k: os.environ[k] for k in ("LD_PRELOAD", "MALLOC_CONF") if k in os.environ},
  }


def now() -> datetime.datetime:
  return datetime.datetime.now().astimezone()


def result_paths(suite: str, started: datetime.datetime, out_dir: str | os.PathLike | None = None
                 ) -> tuple[pathlib.Path, pathlib.Path]:
  """results/{suite}-{YYYY-MM-DD_HHMM}.md and .json (the time keeps runs of a day apart)."""
  folder = pathlib.Path(out_dir) if out_dir else RESULTS
  folder.mkdir(parents=True, exist_ok=True)
  stem = f"{suite}-{started.strftime('%Y-%m-%d_%H%M')}"
  return folder / f"{stem}.md", folder / f"{stem}.json"


def write_results(suite: str, started: datetime.datetime, report: Mapping[str, Any],
                  markdown: str, out_dir: str | os.PathLike | None = None
                  ) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes the markdown table and the JSON (raw times included); returns their paths."""
  md_path, json_path = result_paths(suite, started, out_dir)
  md_path.write_text(markdown)
  json_path.write_text(json.dumps(report, indent=1, sort_keys=False, default=_jsonable) + "\n")
  return md_path, json_path


def _jsonable(x: Any) -> Any:
  if hasattr(x, "tolist"):
    return x.tolist()
  return str(x)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table; cells are str()-ed, None prints as an en dash."""
  cell = lambda v: "–" if v is None else str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def fmt_time(stats: Mapping[str, Any] | None) -> str | None:
  """'123.4 ms ±2.1%' (median, relative IQR)."""
  if not stats:
    return None
  med = stats["median"]
  value = f"{med * 1e3:.1f} ms" if med < 10 else f"{med:.2f} s"
  return f"{value} ±{100 * stats['iqr_rel']:.1f}%"


class CpuShare:
  """How much CPU other processes took while this one ran: the noise of a shared machine.

  `others` = (busy CPU time of the whole machine - this process's, children included) /
  (wall time x host CPUs). Needs psutil; without it the share is None.
  """

  def __init__(self):
    self.t0, self.sys0, self.own0 = time.perf_counter(), *self._sample()

  @staticmethod
  def _sample() -> tuple[float, float]:
    try:
      import psutil  # noqa: PLC0415 -- optional (absent on some GPU machines)
    except ImportError:
      return float("nan"), float("nan")
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    own = psutil.Process().cpu_times()
    return busy, own.user + own.system + own.children_user + own.children_system

  def others(self) -> float | None:
    sys1, own1 = self._sample()
    wall = time.perf_counter() - self.t0
    share = ((sys1 - self.sys0) - (own1 - self.own0)) / (wall * (os.cpu_count() or 1))
    return None if share != share else max(share, 0.0)  # NaN without psutil


class Log:
  """Progress lines on stdout with the seconds since the start, flushed at once."""

  def __init__(self):
    self.t0 = time.perf_counter()

  def __call__(self, msg: str) -> None:
    print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)
