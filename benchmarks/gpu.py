"""GPU suite: bf16 training throughput and MFU on one accelerator, in under five minutes.

    python -m benchmarks.run --suite gpu            # on the GPU machine
    python -m benchmarks.run --suite gpu --quick    # tiny sizes, runs on CPU too (a smoke test)

ResNet-50 (224², batch 256) and BERT-base (seq 128, batch 64) train steps with bf16 compute
and float32 master parameters (`dtype=bfloat16, param_dtype=float32`), the library's own step
(SGD momentum for ResNet, AdamW for BERT), state donated. MFU = model FLOP/s / the bf16 matmul
peak measured in the same script (an 8192³ bf16 matmul, median of blocks). Model FLOPs come
from XLA's cost analysis of the lowered (unoptimized) step, the same count on every backend.

Needs nothing but jax, flax, optax and numpy (absl for the command line): no torch,
tokenizers, grain, tfds or safetensors. Every case is guarded, so a failure still leaves the
others and the result files; a case is skipped when the time budget is nearly spent.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import harness, jax_cases
from benchmarks.jax_cases import Case

CASES = (
    Case("resnet50_b256", "resnet50", batch=256, image=224),
    Case("bert_base_b64", "bert_base", batch=64, seq=128, num_classes=2),
)
QUICK_CASES = (
    Case("resnet50_b256", "resnet50", batch=2, image=64),
    Case("bert_base_b64", "bert_base", batch=2, seq=32, num_classes=2,
         model_kwargs=(("num_hidden_layers", 2),)),
)
PEAK_N, QUICK_PEAK_N = 8192, 256
BUDGET_S = 270.0  # start no case after this; the whole script must stay under 5 minutes
# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity), for
# a second MFU column; the measured matmul peak is the primary reference.
SPEC_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "GH200": 989.4, "B200": 2250.0}
VERSIONS = ("jax", "jaxlib", "flax", "optax", "numpy", "jax-cuda12-plugin", "jax-cuda13-plugin",
            "jax-cuda12-pjrt", "jax-cuda13-pjrt")
FORBIDDEN = ("torch", "tokenizers", "grain", "tensorflow_datasets", "safetensors", "tensorflow")


def spec_peak(device_kind: str) -> float | None:
  for name, tflops in SPEC_BF16_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return tflops
  return None


def timed(run, *, reps: int, warmup: int, target_s: float, log) -> dict[str, Any]:
  """Median per-call seconds; blocks of calls dispatched back to back, synced at the end."""
  times, iters = harness.interleaved({"x": functools.partial(run, block=False)}, reps=reps,
                                     warmup=warmup, target_s=target_s,
                                     sync=jax.block_until_ready, log=log)
  return {**harness.summarize(times["x"]), "calls_per_rep": iters["x"]}


def matmul_peak(n: int, reps: int, log) -> dict[str, Any]:
  run, info = jax_cases.matmul(n, jnp.bfloat16)
  stats = timed(run, reps=reps, warmup=3, target_s=0.3, log=log)
  return {"n": n, "dtype": "bfloat16", "compile_s": info["compile_s"], **stats,
          "tflops": info["flops"] / stats["median"] / 1e12}


def train_case(case: Case, reps: int, quick: bool, peak_tflops: float | None,
               spec_tflops: float | None, log) -> dict[str, Any]:
  log(f"{case.name}: {case.model} batch {case.batch}, "
      + (f"{case.image}px" if case.family == "resnet" else f"seq {case.seq}") + ", bf16 compute")
  run, info = jax_cases.train(case, dtype=jnp.bfloat16)
  log(f"  lower {info['lower_s']:.1f}s, compile {info['compile_s']:.1f}s, "
      f"{(info['flops'] or 0) / 1e12:.3f} TFLOP/step")
  stats = timed(run, reps=reps, warmup=3, target_s=0.2 if quick else 1.0, log=log)
  record = {"case": case.name, "model": case.model, "batch": case.batch,
            "image": case.image if case.family == "resnet" else None,
            "seq": case.seq if case.family != "resnet" else None, "unit": case.unit,
            "dtype": "bfloat16 compute, float32 params", **info, "step": stats,
            "items_per_s": case.batch / stats["median"]}
  if info["flops"]:
    record["tflops"] = info["flops"] / stats["median"] / 1e12
    record["mfu"] = record["tflops"] / peak_tflops if peak_tflops else None
    record["mfu_spec"] = record["tflops"] / spec_tflops if spec_tflops else None
  record["memory"] = _memory_stats()
  return record


def _memory_stats() -> dict[str, int] | None:
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 -- not every backend reports memory
    return None
  return {k: v for k, v in stats.items() if k in ("peak_bytes_in_use", "bytes_limit")}


def table(report: dict[str, Any]) -> str:
  peak = report.get("peak") or {}
  rows = []
  if "tflops" in peak:
    rows.append([f"matmul {peak['n']}³ bf16", None, f"{peak['median'] * 1e3:.2f} ms",
                 f"±{100 * peak['iqr_rel']:.1f}%", f"{peak['tflops']:.4g}", "(peak)", None,
                 f"{peak['compile_s']:.1f}"])
  pct = lambda x: f"{100 * x:.1f}%" if x else None
  for r in report["cases"]:
    if "error" in r:
      rows.append([r["case"], "failed: " + r["error"][:80]] + [None] * 6)
      continue
    rows.append([r["case"], f"{r['items_per_s']:.0f} {r['unit']}",
                 f"{r['step']['median'] * 1e3:.1f} ms", f"±{100 * r['step']['iqr_rel']:.1f}%",
                 f"{r['tflops']:.4g}" if r.get("tflops") else None, pct(r.get("mfu")),
                 pct(r.get("mfu_spec")), f"{r['lower_s'] + r['compile_s']:.1f}"])
  header = ["case", "throughput", "step (median)", "IQR", "TFLOP/s", "MFU (measured peak)",
            f"MFU (spec {report['spec_tflops'] or '?'} TF)", "compile s"]
  return harness.md_table(header, rows)


def markdown(report: dict[str, Any]) -> str:
  m = report["machine"]
  return "\n".join([
      f"# GPU benchmark {report['date']}{' (quick)' if report['quick'] else ''}", "",
      f"Device: {report['device']} ({report['backend']}); host {m['cpu']}, {m['cores']} cores. "
      + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
      f"XLA_FLAGS=`{m['xla_flags']}`. Total wall time {report['wall_s']:.0f} s.", "",
      "bf16 compute with float32 master parameters; the library's train step (SGD momentum "
      "for ResNet, AdamW for BERT), state donated. Steps are dispatched back to back and "
      "synchronized once per timed block; median over blocks, warm-up excluded. FLOPs: XLA "
      "cost analysis of the lowered step. MFU against the bf16 matmul peak measured here, and "
      "against the datasheet's dense bf16 peak.", "",
      table(report),
  ] + ([f"Errors: {e}" for e in report["errors"]] if report["errors"] else [])) + "\n"


def run(*, quick: bool, only: Sequence[str], reps: int | None, out_dir: str | None = None
        ) -> dict[str, Any]:
  """Runs the suite, prints the table, writes results/gpu-*.md and .json."""
  log = harness.Log()
  t0 = time.perf_counter()
  started = harness.now()
  device = jax.devices()[0]
  reps = reps or (2 if quick else 5)
  if device.platform == "cpu" and not quick:
    log("WARNING: no accelerator; this full-size suite is meant for a GPU (use --quick on CPU)")
  spec = spec_peak(device.device_kind)
  report = {"suite": "gpu", "quick": quick, "date": started.isoformat(timespec="seconds"),
            "machine": harness.machine(), "versions": harness.versions(VERSIONS),
            "device": device.device_kind, "backend": device.platform,
            "device_count": jax.device_count(), "spec_tflops": spec, "reps": reps,
            "cases": [], "errors": []}
  log(f"gpu suite on {device.device_kind} ({device.platform}), {reps} reps")
  try:
    report["peak"] = matmul_peak(QUICK_PEAK_N if quick else PEAK_N, max(reps, 5), log)
    log(f"bf16 matmul peak {report['peak']['tflops']:.4g} TFLOP/s")
  except Exception as e:  # noqa: BLE001
    report["errors"].append(f"matmul peak: {type(e).__name__}: {e}")
  peak = (report.get("peak") or {}).get("tflops")
  for case in harness.select(QUICK_CASES if quick else CASES, only):
    if time.perf_counter() - t0 > BUDGET_S:
      report["cases"].append({"case": case.name, "error": "skipped: time budget spent"})
      continue
    try:
      report["cases"].append(train_case(case, reps, quick, peak, spec, log))
    except Exception as e:  # noqa: BLE001 -- keep the other case and the files
      report["cases"].append({"case": case.name, "error": f"{type(e).__name__}: {e}"})
      log(f"  FAILED: {report['cases'][-1]['error']}")
    jax.clear_caches()
  report["wall_s"] = time.perf_counter() - t0
  report["forbidden_imports"] = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
  md = markdown(report)
  paths = harness.write_results("gpu-quick" if quick else "gpu", started, report, md, out_dir)
  print(md, flush=True)
  log(f"wrote {paths[0]} and {paths[1]}")
  return report
