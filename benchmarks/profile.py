"""Where a step's time goes: a jax.profiler trace of a few steps, summed per HLO operation.

    python -m benchmarks.profile --case resnet50_b32 --mode train          # CPU suite sizes
    python -m benchmarks.profile --suite gpu --case bert_base_b64 --dtype bfloat16
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python -m benchmarks.profile ...

Prints the top operations of the optimized module (ms per step, share, what each fusion
contains: convolution, dot, reduce...) and a total per category, and leaves the trace (for
TensorBoard / Perfetto) and the optimized HLO in --out. Reads the trace with
`jax.profiler.ProfileData`, so it needs no TensorBoard. On CPU, thunks run on several threads
at once, so shares are of the summed op time, not of the wall time.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from absl import app, flags

_SUITE = flags.DEFINE_enum("suite", "cpu", ["cpu", "gpu"], "Whose case table to use.")
_CASE = flags.DEFINE_string("case", "resnet50_b32", "Case name from the suite's table.")
_MODE = flags.DEFINE_enum("mode", "train", ["infer", "train"], "Forward pass or train step.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_QUICK = flags.DEFINE_bool("quick", False, "Use the suite's --quick sizes.")
_STEPS = flags.DEFINE_integer("steps", 3, "Profiled steps (after two warm-up steps).")
_TOP = flags.DEFINE_integer("top", 25, "Operations to list.")
_OUT = flags.DEFINE_string("out", None, "Folder for the trace and HLO (default: a temp dir).")
_PATCH = flags.DEFINE_list("patch", [], "Candidate model changes from benchmarks/patches.py.")

# Opcodes worth naming inside a fusion: they decide what kind of work the fusion is.
HEAVY = ("convolution", "dot", "reduce-window", "select-and-scatter", "reduce", "scatter",
         "gather", "rng-bit-generator", "sort", "custom-call", "transpose", "copy")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*.+?\s([a-z][a-z0-9\-]*)\((.*)$")


def hlo_index(hlo_text: str) -> dict[str, str]:
  """Instruction name -> a category: opcode, fusion kind and the heavy ops it calls."""
  computations: dict[str, set[str]] = collections.defaultdict(set)
  current = None
  instrs = {}
  for line in hlo_text.splitlines():
    head = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode, rest = m.groups()
    computations[current].add(opcode)
    instrs[name] = (opcode, rest)
  index = {}
  for name, (opcode, rest) in instrs.items():
    label = opcode
    kind = re.search(r"kind=(\w+)", rest)
    if kind:
      label += f":{kind.group(1)}"
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    if target:
      label += f":{target.group(1)}"
    calls = re.search(r"calls=%?([\w.\-]+)", rest)
    if calls:
      inner = sorted(op for op in computations.get(calls.group(1), ()) if op in HEAVY)
      if inner:
        label += "[" + ",".join(inner) + "]"
    index[name] = label
  return index


def op_times(xplane_path: str) -> tuple[dict[str, float], str]:
  """HLO op name -> summed nanoseconds, from device planes if any, else host threads."""
  from jax.profiler import ProfileData  # noqa: PLC0415

  data = ProfileData.from_file(xplane_path)
  device = [p for p in data.planes if p.name.startswith("/device:")]
  totals: dict[str, float] = collections.defaultdict(float)
  if device:
    for plane in device:
      for line in plane.lines:
        if line.name == "XLA Ops":
          for ev in line.events:
            totals[ev.name] += ev.duration_ns
    if totals:
      return dict(totals), "device 'XLA Ops'"
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        stats = dict(ev.stats)
        if "hlo_op" in stats:
          totals[str(stats["hlo_op"])] += ev.duration_ns
  return dict(totals), "threads, events with an hlo_op"


def report(totals: dict[str, float], index: dict[str, str], steps: int, top: int) -> str:
  total = sum(totals.values()) or 1.0
  lines = [f"{'op':40s} {'ms/step':>9s} {'share':>6s}  category"]
  for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    lines.append(f"{name[:40]:40s} {ns / steps / 1e6:9.2f} {100 * ns / total:5.1f}%  "
                 f"{index.get(name, '?')}")
  by_cat: dict[str, float] = collections.defaultdict(float)
  for name, ns in totals.items():
    by_cat[_family(index.get(name, name))] += ns
  lines += ["", f"{'category':40s} {'ms/step':>9s} {'share':>6s}"]
  for cat, ns in sorted(by_cat.items(), key=lambda kv: -kv[1]):
    lines.append(f"{cat[:40]:40s} {ns / steps / 1e6:9.2f} {100 * ns / total:5.1f}%")
  lines.append(f"summed op time {total / steps / 1e6:.1f} ms/step over {len(totals)} ops")
  return "\n".join(lines)


def _family(label: str) -> str:
  """A coarse category: what heavy op a fusion holds, else its opcode."""
  inner = re.search(r"\[(.*)\]", label)
  if inner:
    for op in ("convolution", "dot", "reduce-window", "select-and-scatter", "scatter",
               "gather", "reduce", "rng-bit-generator"):
      if op in inner.group(1).split(","):
        return f"fusion with {op}"
    return f"fusion with {inner.group(1)}"
  return label.split(":")[0] if not label.startswith("fusion") else "elementwise fusion"


def profile(suite: str, case_name: str, mode: str, dtype_name: str, quick: bool, steps: int,
            top: int, out: str | None, patch_names: Sequence[str] = ()) -> str:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from benchmarks import cpu, gpu, harness, jax_cases, patches  # noqa: PLC0415

  table = {"cpu": (cpu.QUICK_CASES if quick else cpu.CASES),
           "gpu": (gpu.QUICK_CASES if quick else gpu.CASES)}[suite]
  (case,) = harness.select(table, [case_name])
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
  out = out or tempfile.mkdtemp(prefix="jaxpretrain-profile-")
  os.makedirs(out, exist_ok=True)
  build = jax_cases.train if mode == "train" else jax_cases.inference
  with patches.applied(list(patch_names), case) as variant:
    run, info = build(variant, dtype=dtype)
  hlo = run.compiled.as_text()
  with open(os.path.join(out, "optimized_hlo.txt"), "w") as f:
    f.write(hlo)
  for _ in range(2):
    run()
  t0 = time.perf_counter()
  with jax.profiler.trace(os.path.join(out, "trace")):
    for _ in range(steps):
      run()
  wall = (time.perf_counter() - t0) / steps
  (xplane,) = glob.glob(os.path.join(out, "trace", "**", "*.xplane.pb"), recursive=True)
  totals, source = op_times(xplane)
  text = (f"{case.name} {mode} {dtype_name} on {jax.devices()[0].device_kind}: "
          f"{wall * 1e3:.1f} ms/step wall (profiled), compile {info['compile_s']:.1f}s, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, patches {list(patch_names)}; "
          f"op times from {source}\n"
          + report(totals, hlo_index(hlo), steps, top) + f"\ntrace and HLO in {out}")
  with open(os.path.join(out, "summary.txt"), "w") as f:
    f.write(text + "\n")
  return text


def main(argv: Any):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  print(profile(_SUITE.value, _CASE.value, _MODE.value, _DTYPE.value, _QUICK.value, _STEPS.value,
                _TOP.value, _OUT.value, _PATCH.value))


if __name__ == "__main__":
  app.run(main)
