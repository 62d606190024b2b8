"""GPU suite: jaxpretrain against torch's best on one accelerator, bf16, in one process.

    python -m benchmarks.run --suite gpu            # on the GPU machine (< 9 minutes)
    python -m benchmarks.run --suite gpu --quick    # tiny sizes, runs on CPU too (a smoke test)
    python -m benchmarks.run --suite gpu --notorch  # jaxpretrain alone (no torch installed)

Cases (issue 18): ResNet-50 at 224² training and inference, batch 256; BERT-base at sequence
128, training batch 64 and inference batch 256. Every case times, interleaved block by block
(`harness.interleaved`, one sync per block and variant):
- `jax`: the library's step (SGD momentum for ResNet, AdamW for BERT) or forward pass, bf16
  compute with float32 master parameters (`dtype=bfloat16, param_dtype=float32`), state
  donated, compiled ahead of time;
- `torch`: eager torch in its best setting -- channels_last for the ResNet, SDPA attention for
  BERT (flash / memory-efficient kernels), `torch.autocast(bfloat16)` over float32 parameters,
  fused SGD/AdamW (`benchmarks/torch_cases.py`);
- `torch_compile`: the same under `torch.compile(mode=--torch_compile_mode)` (default
  max-autotune-no-cudagraphs), given up after `--compile_limit_s` (then recorded as failed).
MFU = model FLOP/s / the bf16 matmul peak measured in the same script (an 8192³ bf16 matmul,
median of blocks). Model FLOPs come from XLA's cost analysis of the lowered (unoptimized) JAX
step, the same count for every variant.

JAX does not preallocate GPU memory here (`XLA_PYTHON_CLIENT_PREALLOCATE=false`, set before the
backend starts), so that torch, in the same process, finds memory too. Every case and variant is
guarded: a failure leaves the others and the result files; a case is skipped when the time
budget is nearly spent.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import harness, jax_cases  # noqa: E402
from benchmarks.jax_cases import Case  # noqa: E402

CASES = (
    Case("resnet50_b256", "resnet50", batch=256, image=224),
    Case("bert_base_b64", "bert_base", batch=64, seq=128, num_classes=2),
    Case("bert_base_b256", "bert_base", batch=256, seq=128, num_classes=2),
)
QUICK_CASES = (
    Case("resnet50_b256", "resnet50", batch=2, image=64),
    Case("bert_base_b64", "bert_base", batch=2, seq=32, num_classes=2,
         model_kwargs=(("num_hidden_layers", 2),)),
    Case("bert_base_b256", "bert_base", batch=4, seq=32, num_classes=2,
         model_kwargs=(("num_hidden_layers", 2),)),
)
# (case name, mode) in the order they run: the four measurements.
RUNS = (("resnet50_b256", "train"), ("resnet50_b256", "infer"), ("bert_base_b64", "train"),
        ("bert_base_b256", "infer"))
PEAK_N, QUICK_PEAK_N = 8192, 256
BUDGET_S = 480.0  # start no case after this; the whole script must stay under 9 minutes
# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity), for
# a second MFU column; the measured matmul peak is the primary reference.
SPEC_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "GH200": 989.4, "B200": 2250.0}
VERSIONS = ("jax", "jaxlib", "flax", "optax", "numpy", "jax-cuda12-plugin", "jax-cuda13-plugin",
            "jax-cuda12-pjrt", "jax-cuda13-pjrt", "torch", "torchvision", "transformers")
# The JAX side must not pull these in (torch only arrives with the torch columns).
FORBIDDEN = ("tokenizers", "grain", "tensorflow_datasets", "safetensors", "tensorflow")
DEFAULT_COMPILE_MODE = "max-autotune-no-cudagraphs"


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


def _torch_variants(case: Case, mode: str, device: str, compile_mode: str | None,
                    compile_limit_s: float | None, log) -> tuple[dict, dict, dict]:
  """name -> launching callable, name -> sync, name -> facts for torch eager and compiled."""
  from benchmarks import torch_cases  # noqa: PLC0415 -- only with the torch columns

  build = torch_cases.train if mode == "train" else torch_cases.inference
  common = dict(channels_last=case.family == "resnet", device=device, bf16=True)
  fns, syncs, facts = {}, {}, {}
  try:
    fns["torch"], facts["torch"] = build(case, **common)
    syncs["torch"] = torch_cases.sync
  except Exception as e:  # noqa: BLE001 -- recorded, the other variants still run
    facts["torch"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    log(f"    torch eager failed: {facts['torch']['error']}")
  if compile_limit_s is not None:
    try:
      fns["torch_compile"], facts["torch_compile"] = build(
          case, **common, compile_limit_s=compile_limit_s, compile_mode=compile_mode)
      syncs["torch_compile"] = torch_cases.sync
      facts["torch_compile"]["mode"] = compile_mode
      log(f"    torch.compile ({compile_mode}): first call "
          f"{facts['torch_compile']['compile_s']:.1f}s")
    except Exception as e:  # noqa: BLE001
      facts["torch_compile"] = {"error": f"{type(e).__name__}: {str(e)[:300]}",
                                "mode": compile_mode}
      log(f"    torch.compile failed: {facts['torch_compile']['error']}")
  return fns, syncs, facts


def run_case(case: Case, mode: str, *, reps: int, quick: bool, peak_tflops: float | None,
             spec_tflops: float | None, torch_device: str | None, compile_mode: str | None,
             compile_limit_s: float | None, log) -> dict[str, Any]:
  """Times jaxpretrain and the torch variants of (case, mode), interleaved; returns a record."""
  log(f"{case.name} {mode}: {case.model} batch {case.batch}, "
      + (f"{case.image}px" if case.family == "resnet" else f"seq {case.seq}") + ", bf16 compute")
  build = jax_cases.train if mode == "train" else jax_cases.inference
  jrun, info = build(case, dtype=jnp.bfloat16)
  log(f"  jax: lower {info['lower_s']:.1f}s, compile {info['compile_s']:.1f}s, "
      f"{(info['flops'] or 0) / 1e12:.3f} TFLOP/step")
  fns = {"jax": functools.partial(jrun, block=False)}
  syncs = {"jax": jax.block_until_ready}
  facts = {"jax": info}
  if torch_device is not None:
    tf, ts, tfacts = _torch_variants(case, mode, torch_device, compile_mode, compile_limit_s,
                                     log)
    fns.update(tf)
    syncs.update(ts)
    facts.update(tfacts)
  times, iters = harness.interleaved(fns, reps=reps, warmup=3, target_s=0.2 if quick else 1.0,
                                     sync=syncs, log=log)
  flops = info["flops"]
  variants = {}
  for name, fact in facts.items():
    if name not in times:
      variants[name] = dict(fact)
      continue
    stats = harness.summarize(times[name])
    v = {**fact, "step": stats, "calls_per_rep": iters[name],
         "items_per_s": case.batch / stats["median"]}
    if flops:
      v["tflops"] = flops / stats["median"] / 1e12
      v["mfu"] = v["tflops"] / peak_tflops if peak_tflops else None
      v["mfu_spec"] = v["tflops"] / spec_tflops if spec_tflops else None
    variants[name] = v
  record = {"case": case.name, "mode": mode, "model": case.model, "batch": case.batch,
            "image": case.image if case.family == "resnet" else None,
            "seq": case.seq if case.family != "resnet" else None, "unit": case.unit,
            "dtype": "bfloat16 compute, float32 params", "flops_per_step": flops,
            "variants": variants, "memory": _memory_stats()}
  add_ratios(record)
  return record


def add_ratios(record: dict[str, Any]) -> None:
  """jax / torch throughput for each torch variant and against the faster of them."""
  v = record["variants"]
  rate = lambda n: v.get(n, {}).get("items_per_s")
  jax_rate = rate("jax")
  for name in ("torch", "torch_compile"):
    record[f"jax_vs_{name}"] = jax_rate / rate(name) if jax_rate and rate(name) else None
  torch_rates = [r for r in (rate("torch"), rate("torch_compile")) if r]
  record["jax_vs_torch_best"] = jax_rate / max(torch_rates) if jax_rate and torch_rates else None


def _release_torch_memory() -> None:
  if "torch" in sys.modules:
    import torch  # noqa: PLC0415

    if torch.cuda.is_available():
      torch.cuda.empty_cache()
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
    rows.append([f"matmul {peak['n']}³ bf16", "-", "jax", None,
                 f"{peak['median'] * 1e3:.2f} ms ±{100 * peak['iqr_rel']:.1f}%",
                 f"{peak['tflops']:.4g}", "(peak)", None, None, f"{peak['compile_s']:.1f}"])
  pct = lambda x: f"{100 * x:.1f}%" if x else None
  ratio = lambda x: f"{x:.2f}×" if x else None
  for r in report["cases"]:
    if "error" in r:
      rows.append([r["case"], r.get("mode"), "failed: " + r["error"][:80]] + [None] * 7)
      continue
    for name, v in r["variants"].items():
      if "step" not in v:
        rows.append([r["case"], r["mode"], name, "failed: " + v.get("error", "?")[:80]]
                    + [None] * 6)
        continue
      first = "lower_s" in v and "compile_s" in v
      compile_s = v["lower_s"] + v["compile_s"] if first else v.get("compile_s")
      rows.append([r["case"], r["mode"], name, f"{v['items_per_s']:.4g} {r['unit']}",
                   f"{v['step']['median'] * 1e3:.1f} ms ±{100 * v['step']['iqr_rel']:.1f}%",
                   f"{v['tflops']:.4g}" if v.get("tflops") else None, pct(v.get("mfu")),
                   pct(v.get("mfu_spec")),
                   ratio(r[f"jax_vs_{name}"]) if name != "jax" else
                   (f"best {ratio(r['jax_vs_torch_best'])}" if r.get("jax_vs_torch_best")
                    else None),
                   f"{compile_s:.1f}" if compile_s is not None else None])
  header = ["case", "mode", "variant", "throughput", "step (median, IQR)", "TFLOP/s",
            "MFU (measured peak)", f"MFU (spec {report['spec_tflops'] or '?'} TF)",
            "jax / this", "compile s"]
  return harness.md_table(header, rows)


def markdown(report: dict[str, Any]) -> str:
  m = report["machine"]
  return "\n".join([
      f"# GPU benchmark {report['date']}{' (quick)' if report['quick'] else ''}", "",
      f"Device: {report['device']} ({report['backend']}); host {m['cpu']}, {m['cores']} cores. "
      + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
      f"XLA_FLAGS=`{m['xla_flags']}`. Total wall time {report['wall_s']:.0f} s.", "",
      "bf16 compute with float32 master parameters in both frameworks; the library's train "
      "step (SGD momentum for ResNet, AdamW for BERT), state donated; torch eager with "
      "channels_last / SDPA, autocast bf16 and fused optimizers"
      + (f", and torch.compile (`{report['torch_compile_mode']}`)"
         if report.get("torch_compile_mode") else " (no torch.compile column)")
      + ". Variants are interleaved block by block; each "
      "block is dispatched back to back and synchronized once; median over blocks, warm-up "
      "excluded. FLOPs: XLA cost analysis of the lowered JAX step, used for every variant. "
      "MFU against the bf16 matmul peak measured here, and against the datasheet's dense bf16 "
      "peak. `jax / this`: jaxpretrain's throughput over this variant's (on the jax row: over "
      "the faster torch variant).", "",
      table(report),
  ] + ([f"Errors: {e}" for e in report["errors"]] if report["errors"] else [])) + "\n"


def run(*, quick: bool, only: Sequence[str], reps: int | None, out_dir: str | None = None,
        use_torch: bool = True, compile_mode: str | None = DEFAULT_COMPILE_MODE,
        compile_limit_s: float | None = 180.0) -> dict[str, Any]:
  """Runs the suite, prints the table, writes results/gpu-*.md and .json.

  Args:
    use_torch: add the torch columns (eager, and torch.compile unless compile_limit_s is None).
    compile_mode: torch.compile's mode (None: its default).
    compile_limit_s: give up on a torch.compile whose first call takes longer; None: no
      torch.compile column (the default with `quick`).
  """
  log = harness.Log()
  t0 = time.perf_counter()
  started = harness.now()
  device = jax.devices()[0]
  reps = reps or (2 if quick else 5)
  if device.platform == "cpu" and not quick:
    log("WARNING: no accelerator; this full-size suite is meant for a GPU (use --quick on CPU)")
  torch_device = _torch_device(device.platform) if use_torch else None
  if quick:
    compile_limit_s = None
  spec = spec_peak(device.device_kind)
  report = {"suite": "gpu", "quick": quick, "date": started.isoformat(timespec="seconds"),
            "machine": harness.machine(), "versions": harness.versions(VERSIONS),
            "device": device.device_kind, "backend": device.platform,
            "device_count": jax.device_count(), "spec_tflops": spec, "reps": reps,
            "torch_device": torch_device,
            "torch_compile_mode": compile_mode if compile_limit_s is not None else None,
            "cases": [], "errors": []}
  log(f"gpu suite on {device.device_kind} ({device.platform}), {reps} reps, torch on "
      f"{torch_device or 'none'}")
  try:
    report["peak"] = matmul_peak(QUICK_PEAK_N if quick else PEAK_N, max(reps, 5), log)
    log(f"bf16 matmul peak {report['peak']['tflops']:.4g} TFLOP/s")
  except Exception as e:  # noqa: BLE001
    report["errors"].append(f"matmul peak: {type(e).__name__}: {e}")
  peak = (report.get("peak") or {}).get("tflops")
  cases = {c.name: c for c in harness.select(QUICK_CASES if quick else CASES, only)}
  for name, mode in RUNS:
    if name not in cases:
      continue
    if time.perf_counter() - t0 > BUDGET_S:
      report["cases"].append({"case": name, "mode": mode,
                              "error": "skipped: time budget spent"})
      continue
    try:
      report["cases"].append(run_case(
          cases[name], mode, reps=reps, quick=quick, peak_tflops=peak, spec_tflops=spec,
          torch_device=torch_device, compile_mode=compile_mode,
          compile_limit_s=compile_limit_s, log=log))
    except Exception as e:  # noqa: BLE001 -- keep the other cases and the files
      report["cases"].append({"case": name, "mode": mode, "error": f"{type(e).__name__}: {e}"})
      log(f"  FAILED: {report['cases'][-1]['error']}")
    jax.clear_caches()
    _release_torch_memory()
  report["wall_s"] = time.perf_counter() - t0
  report["forbidden_imports"] = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
  md = markdown(report)
  paths = harness.write_results("gpu-quick" if quick else "gpu", started, report, md, out_dir)
  print(md, flush=True)
  log(f"wrote {paths[0]} and {paths[1]}")
  return report


def _torch_device(platform: str) -> str | None:
  """'cuda' beside a JAX GPU, 'cpu' beside a JAX CPU (smoke runs); None without torch."""
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    return None
  if platform == "gpu":
    return "cuda" if torch.cuda.is_available() else None
  return "cpu"
