"""CPU suite: jaxpretrain against torch's best configuration on the same machine, in one run.

For every case and mode (inference, train step) the variants are timed interleaved
(`harness.interleaved`): jaxpretrain, torch eager (NCHW and, for ResNets, channels_last) and
torch.compile of the faster eager layout when it compiles within a time limit. The matmul
peak (a large float32 matmul in XLA and in torch) is measured at the start and the end of the
run, so the fraction of peak is against the same machine state, and a drift shows.

FLOPs per step come from XLA's cost analysis of the lowered JAX step (every HLO op, so
elementwise work is included; convolutions and dots dominate). torch runs the same model, so
its GFLOP/s uses the same count.

With `isolate=True` (`--isolate`) each framework of each (case, mode) runs in a fresh Python
process of its own (`python -m benchmarks.cpu --worker ...`), so one framework's allocator,
page-fault and thread-pool state cannot change the other's numbers (NOTES.md, attempt 16:
in one process, which framework ran first moved JAX's train steps by up to 45%). The
variants of one framework are still interleaved inside its process; the two frameworks are
not, so a machine whose speed drifts between them shows up as a difference -- the noise
line and the matmul peaks at the start and the end say whether it did.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import harness
from benchmarks.jax_cases import Case

CASES = (
    Case("resnet50_b8", "resnet50", batch=8, image=224),
    Case("resnet50_b32", "resnet50", batch=32, image=224),
    # CIFAR-sized input for the ImageNet architecture; 10 classes.
    Case("resnet18_b128_32px", "resnet18", batch=128, image=32, num_classes=10),
    Case("bert_base_b8", "bert_base", batch=8, seq=128, num_classes=2),
    Case("minilm_l6_b32", "minilm_l6", batch=32, seq=128, num_classes=2),
    # The newer families, inference only and JAX only (no torch twin in torch_cases).
    *(Case(f"{m}_b8", m, batch=8, image=224, modes=("infer",))
      for m in ("vgg16", "convnext_tiny", "efficientnet_b0", "dinov2_small",
                "clip_vit_base_patch32")),
    Case("distilbert_b8", "distilbert_base_uncased", batch=8, seq=128, num_classes=2,
         modes=("infer",)),
)
# --quick: the same code paths at sizes that run in a couple of minutes.
QUICK_CASES = (
    Case("resnet50_b8", "resnet50", batch=2, image=64),
    Case("resnet50_b32", "resnet50", batch=4, image=64),
    Case("resnet18_b128_32px", "resnet18", batch=16, image=32, num_classes=10),
    Case("bert_base_b8", "bert_base", batch=2, seq=32, num_classes=2),
    Case("minilm_l6_b32", "minilm_l6", batch=4, seq=32, num_classes=2),
    *(Case(f"{m}_b8", m, batch=2, image=64, modes=("infer",))
      for m in ("vgg16", "convnext_tiny", "efficientnet_b0", "dinov2_small",
                "clip_vit_base_patch32")),
    Case("distilbert_b8", "distilbert_base_uncased", batch=2, seq=32, num_classes=2,
         modes=("infer",)),
)
MODES = ("infer", "train")
FRAMEWORKS = ("jax", "torch")
PEAK_N, QUICK_PEAK_N = 4096, 1024
VERSIONS = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "torchvision", "transformers")


def matmul_peak(n: int, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
  """GFLOP/s of an n^3 float32 matmul in XLA and in torch (MKL), interleaved."""
  from benchmarks import jax_cases, torch_cases  # noqa: PLC0415

  jrun, _ = jax_cases.matmul(n)
  trun, _ = torch_cases.matmul(n)
  times, _ = harness.interleaved({"xla": jrun, "torch": trun}, reps=reps, warmup=2,
                                 target_s=0.5, log=log)
  flops = 2.0 * n**3
  out = {"n": n}
  for name, ts in times.items():
    stats = harness.summarize(ts)
    out[name] = {**stats, "gflops": flops / stats["median"] / 1e9}
  out["best_gflops"] = max(out["xla"]["gflops"], out["torch"]["gflops"])
  return out


def _variants(case: Case, mode: str, compile_limit_s: float | None, log,
              frameworks: Sequence[str] = FRAMEWORKS) -> tuple[dict, dict]:
  """name -> blocking callable, name -> build facts (compile times, FLOPs); failures skipped."""
  fns, facts = {}, {}
  if "jax" in frameworks:
    from benchmarks import jax_cases  # noqa: PLC0415

    build = jax_cases.inference if mode == "infer" else jax_cases.train
    fns["jax"], facts["jax"] = build(case)
    log(f"    jax: lower {facts['jax']['lower_s']:.1f}s, compile "
        f"{facts['jax']['compile_s']:.1f}s, {(facts['jax']['flops'] or 0) / 1e9:.1f} GFLOP/step")
  if "torch" not in frameworks or not case.torch_twin:
    return fns, facts
  from benchmarks import torch_cases  # noqa: PLC0415

  build = torch_cases.inference if mode == "infer" else torch_cases.train
  layouts = {"torch": False, "torch_cl": True} if case.family == "resnet" else {"torch": False}
  for name, channels_last in layouts.items():
    fns[name], facts[name] = build(case, channels_last=channels_last)
  if compile_limit_s is not None:
    fns, facts = _add_compiled(case, build, layouts, fns, facts, compile_limit_s, log)
  return fns, facts


def _add_compiled(case, torch_build, layouts, fns, facts, limit_s, log):
  """torch.compile of the faster eager layout (two quick calls each decide), if it compiles."""
  channels_last = False
  if len(layouts) > 1:
    quick = {n: harness.summarize(harness.interleaved({n: fns[n]}, reps=1, warmup=1)[0][n])
             for n in layouts}
    channels_last = min(quick, key=lambda n: quick[n]["median"]) == "torch_cl"
  try:
    fns["torch_compile"], facts["torch_compile"] = torch_build(
        case, channels_last=channels_last, compile_limit_s=limit_s)
    facts["torch_compile"]["channels_last"] = channels_last
    log(f"    torch.compile ({'channels_last' if channels_last else 'NCHW'}): first call "
        f"{facts['torch_compile']['compile_s']:.1f}s")
  except Exception as e:  # noqa: BLE001 -- compile failures are recorded, not fatal
    facts["torch_compile"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    log(f"    torch.compile failed: {facts['torch_compile']['error']}")
  return fns, facts


def run_case(case: Case, mode: str, *, reps: int, warmup: int, target_s: float,
             compile_limit_s: float | None, log, frameworks: Sequence[str] = FRAMEWORKS
             ) -> dict[str, Any]:
  """Times every variant of (case, mode), interleaved; returns the record of the case."""
  frameworks = tuple(f for f in frameworks if f == "jax" or case.torch_twin)
  log(f"  {case.name} {mode}: batch {case.batch}, "
      + (f"{case.image}px" if case.modality == "image" else f"seq {case.seq}")
      + ("" if tuple(frameworks) == FRAMEWORKS else f" ({'+'.join(frameworks)} only)"))
  fns, facts = _variants(case, mode, compile_limit_s, log, frameworks)
  share = harness.CpuShare()
  cpu_times: dict[str, list[float]] = {}
  times, iters = harness.interleaved(fns, reps=reps, warmup=warmup, target_s=target_s, log=log,
                                     cpu_times=cpu_times)
  others = share.others()
  flops = facts["jax"]["flops"] if "jax" in facts else None  # torch alone: set when merged
  variants = {}
  for name, ts in times.items():
    stats = harness.summarize(ts)
    variants[name] = {**stats, "calls_per_rep": iters[name], **facts.get(name, {}),
                      "cpu_s_per_call": harness.summarize(cpu_times[name]),
                      "items_per_s": case.batch / stats["median"],
                      "gflops": flops / stats["median"] / 1e9 if flops else None}
  for name, fact in facts.items():
    if name not in variants:  # a failed torch.compile
      variants[name] = dict(fact)
  del fns
  gc.collect()
  return {"case": case.name, "model": case.model, "mode": mode, "batch": case.batch,
          "image": case.image if case.modality == "image" else None,
          "seq": case.seq if case.modality != "image" else None, "unit": case.unit,
          "flops_per_step": flops, "flops_source": "xla cost analysis of the lowered step",
          "others_cpu_share": others, "variants": variants}


def run_case_isolated(case: Case, mode: str, *, reps: int, quick: bool,
                      compile_limit_s: float | None, log) -> dict[str, Any]:
  """run_case with each framework in a fresh process of its own; the records merged."""
  parts = {}
  for framework in FRAMEWORKS if case.torch_twin else ("jax",):
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "record.json")
      args = [sys.executable, "-m", "benchmarks.cpu", "--worker", "--case", case.name,
              "--mode", mode, "--framework", framework, "--reps", str(reps), "--out", out]
      if quick:
        args.append("--quick")
      if compile_limit_s is not None:
        args += ["--compile_limit_s", str(compile_limit_s)]
      log(f"  {case.name} {mode}: {framework} in a fresh process")
      proc = subprocess.run(args, env=os.environ.copy(), check=False)
      if proc.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"{framework} worker exited with status {proc.returncode}")
      with open(out) as f:
        parts[framework] = json.load(f)
  record = dict(parts["jax"])
  record["variants"] = {**parts["jax"]["variants"],
                        **parts.get("torch", {}).get("variants", {})}
  flops = record["flops_per_step"]
  for stats in parts["torch"]["variants"].values():  # the JAX step's count, as in one process
    if flops and "median" in stats:
      stats["gflops"] = flops / stats["median"] / 1e9
  record["others_cpu_share"] = max((p["others_cpu_share"] or 0) for p in parts.values())
  record["isolated"] = True
  return record


def _allocator(machine: dict[str, Any]) -> str:
  env = machine.get("allocator") or {}
  return ", ".join(f"{k}=`{v}`" for k, v in env.items()) if env else "glibc malloc (default)"


def add_ratios(record: dict[str, Any], peak_gflops: float | None) -> None:
  """torch's best eager variant, jax/torch throughput ratios and the fractions of peak."""
  v = record["variants"]
  eager = [n for n in ("torch", "torch_cl") if "median" in v.get(n, {})]
  best = min(eager, key=lambda n: v[n]["median"]) if eager else None
  record["torch_best"] = best
  jax_rate = v["jax"]["items_per_s"]
  record["jax_vs_torch_best"] = jax_rate / v[best]["items_per_s"] if best else None
  tc = v.get("torch_compile", {})
  record["jax_vs_torch_compile"] = jax_rate / tc["items_per_s"] if "items_per_s" in tc else None
  for stats in v.values():
    if peak_gflops and stats.get("gflops"):
      stats["frac_peak"] = stats["gflops"] / peak_gflops


def _noise_line(share: float | None, cores: int) -> str:
  """Says how busy the machine was with other work; warns when the numbers are suspect."""
  if share is None:
    return "Other processes' CPU share: unknown (no psutil)."
  line = f"Other processes used {100 * share:.0f}% of the machine's CPU time during the run"
  if share > 0.1:
    return (f"**WARNING: {line}; with {cores} cores every number below is disturbed (torch's "
            "OpenMP pool suffers most). Rerun on a quiet machine.**")
  return line + "."


def _options(report: dict[str, Any]) -> dict[str, Any]:
  """mode -> the compiler options jaxpretrain used (from the first case of that mode)."""
  out = {}
  for r in report["cases"]:
    out.setdefault(r["mode"], r["variants"]["jax"].get("compiler_options", {}))
  return out


def markdown(report: dict[str, Any]) -> str:
  m, peak = report["machine"], report["peak"]
  lines = [
      f"# CPU benchmark {report['date']}{' (quick)' if report['quick'] else ''}", "",
      f"{m['cpu']}, {m['cores']} cores ({m['host_cpus']} on the host), {m['memory_gib']} GiB; "
      f"load average {m['loadavg'][0]:.2f} at the start, {report['loadavg_end'][0]:.2f} at the "
      "end. " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
      f"XLA_FLAGS=`{m['xla_flags']}`; torch threads {report['settings']['torch_threads']}; "
      f"allocator: {_allocator(m)}. ISA: {', '.join(m.get('isa') or []) or 'unknown'}.", "",
      ("Mode: **isolated** -- each framework of each case timed in a fresh process of its "
       "own; variants of one framework interleaved." if report["settings"].get("isolate") else
       "Mode: **interleaved** -- both frameworks in one process, variants timed in turn."), "",
      _noise_line(report.get("others_cpu_share"), m["cores"]), "",
      f"Matmul peak ({peak['start']['n']}³ float32, median GFLOP/s): start XLA "
      f"{peak['start']['xla']['gflops']:.0f}, torch {peak['start']['torch']['gflops']:.0f}; "
      + (f"end XLA {peak['end']['xla']['gflops']:.0f}, torch {peak['end']['torch']['gflops']:.0f}"
         if peak.get("end") else "end not measured")
      + f". Fractions of peak are against {report['peak_gflops']:.0f} GFLOP/s "
      "(the best of these).", "",
      "jaxpretrain compiles with the XLA options of `jaxpretrain.perf.compiler_options`: "
      + "; ".join(f"{mode} `{opts}`" for mode, opts in _options(report).items()) + ".", "",
      "Throughput is the median over interleaved repetitions (±: interquartile range / median). "
      "FLOPs per step: XLA cost analysis of the lowered JAX step, used for both frameworks. "
      "torch best: the faster of NCHW and channels_last eager.", "",
  ]
  header = ["case", "mode", "jax", "torch best", "jax / torch", "torch.compile",
            "jax / compile", "GFLOP/step", "jax GFLOP/s (peak)", "torch GFLOP/s (peak)",
            "jax compile s", "others' CPU"]
  rows = []
  for r in report["cases"]:
    v = r["variants"]
    jx, best = v["jax"], v.get(r["torch_best"] or "", {})
    tc = v.get("torch_compile", {})
    rate = lambda s, unit=r["unit"]: (f"{s['items_per_s']:.1f} {unit} ±{100 * s['iqr_rel']:.0f}%"
                                      if "items_per_s" in s else None)
    gfl = lambda s: (f"{s['gflops']:.0f} ({100 * s['frac_peak']:.0f}%)"
                     if s.get("frac_peak") else None)
    ratio = lambda x: f"{x:.2f}×" if x else None
    compiled = rate(tc) or ("failed" if "error" in tc else None)
    rows.append([
        r["case"], r["mode"], rate(jx),
        (f"{rate(best)} ({r['torch_best']})" if best else None),
        ratio(r["jax_vs_torch_best"]), compiled, ratio(r["jax_vs_torch_compile"]),
        f"{r['flops_per_step'] / 1e9:.1f}" if r["flops_per_step"] else None,
        gfl(jx), gfl(best), f"{jx['lower_s'] + jx['compile_s']:.1f}",
        f"{100 * r['others_cpu_share']:.0f}%" if r.get("others_cpu_share") is not None else None])
  lines.append(harness.md_table(header, rows))
  if report["errors"]:
    lines += ["", "Errors:", ""] + [f"- {e}" for e in report["errors"]]
  return "\n".join(lines) + "\n"


def run(*, quick: bool, only: Sequence[str], reps: int | None, compile_limit_s: float | None,
        out_dir: str | None = None, isolate: bool = False) -> dict[str, Any]:
  """Runs the suite, writes results/cpu-*.md and .json, returns the report.

  Args:
    isolate: time each framework of each case in a fresh process of its own.
  """
  from benchmarks import torch_cases  # noqa: PLC0415

  log = harness.Log()
  started = harness.now()
  cases = harness.select(QUICK_CASES if quick else CASES, only)
  reps = reps or (2 if quick else 7)
  warmup, target_s = (1, 0.2) if quick else (2, 1.0)
  threads = harness.cores()
  torch_cases.set_threads(threads)
  report = {"suite": "cpu", "quick": quick, "date": started.isoformat(timespec="seconds"),
            "machine": harness.machine(), "versions": harness.versions(VERSIONS),
            "settings": {"reps": reps, "warmup": warmup, "target_block_s": target_s,
                         "torch_threads": threads, "compile_limit_s": compile_limit_s,
                         "isolate": isolate},
            "cases": [], "errors": []}
  log(f"cpu suite: {len(cases)} case(s) x {MODES}, {reps} reps, {threads} threads")
  share = harness.CpuShare()
  peak_n = QUICK_PEAK_N if quick else PEAK_N
  log(f"matmul peak {peak_n}^3")
  report["peak"] = {"start": matmul_peak(peak_n, reps, log)}
  for case in cases:
    for mode in case.modes:
      try:
        if isolate:
          record = run_case_isolated(case, mode, reps=reps, quick=quick,
                                     compile_limit_s=compile_limit_s, log=log)
        else:
          record = run_case(case, mode, reps=reps, warmup=warmup, target_s=target_s,
                            compile_limit_s=compile_limit_s, log=log)
        report["cases"].append(record)
      except Exception as e:  # noqa: BLE001 -- one broken case must not lose the others
        report["errors"].append(f"{case.name} {mode}: {type(e).__name__}: {e}")
        log(f"  FAILED: {report['errors'][-1]}")
  log("matmul peak again")
  report["peak"]["end"] = matmul_peak(peak_n, reps, log)
  report["peak_gflops"] = max(report["peak"]["start"]["best_gflops"],
                              report["peak"]["end"]["best_gflops"])
  report["loadavg_end"] = list(os.getloadavg())
  report["others_cpu_share"] = share.others()
  for record in report["cases"]:
    add_ratios(record, report["peak_gflops"])
  md = markdown(report)
  paths = harness.write_results("cpu-quick" if quick else "cpu", started, report, md, out_dir)
  print(md)
  log(f"wrote {paths[0]} and {paths[1]}")
  return report


def _worker(argv: Sequence[str] | None = None) -> None:
  """`python -m benchmarks.cpu --worker ...`: one framework of one case, a JSON record out."""
  parser = argparse.ArgumentParser(description=_worker.__doc__)
  parser.add_argument("--worker", action="store_true", required=True)
  parser.add_argument("--case", required=True)
  parser.add_argument("--mode", choices=MODES, required=True)
  parser.add_argument("--framework", choices=FRAMEWORKS, required=True)
  parser.add_argument("--reps", type=int, required=True)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--compile_limit_s", type=float, default=None)
  parser.add_argument("--out", required=True)
  a = parser.parse_args(argv)
  (case,) = harness.select(QUICK_CASES if a.quick else CASES, [a.case])
  warmup, target_s = (1, 0.2) if a.quick else (2, 1.0)
  if a.framework == "torch":
    from benchmarks import torch_cases  # noqa: PLC0415

    torch_cases.set_threads(harness.cores())
  record = run_case(case, a.mode, reps=a.reps, warmup=warmup, target_s=target_s,
                    compile_limit_s=a.compile_limit_s if a.framework == "torch" else None,
                    log=harness.Log(), frameworks=(a.framework,))
  with open(a.out, "w") as f:
    json.dump(record, f, default=harness._jsonable)


if __name__ == "__main__":
  _worker()
