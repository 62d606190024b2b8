"""A/B of jaxpretrain variants in one process, interleaved: XLA options and model patches.

    python -m benchmarks.ab --case resnet50_b8 --mode train \\
        --variant base --variant 'noynn:xla_cpu_experimental_ynn_fusion_type='


A variant is `NAME[:ITEM;ITEM...]` (quote it for the shell); an item `key=value` is an XLA
debug option for that compilation only (`jax.jit(...).lower(...).compile(compiler_options=...)`:
the XLA_FLAGS name without dashes; repeated enums take full names, comma-separated, e.g.
`xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE`), an item `@patch` applies
a candidate model change from benchmarks/patches.py (model kwargs the variant is built with).
All variants are compiled first, then timed in rotation (`harness.interleaved`), so machine
noise hits them alike; the table gives each one's median wall and CPU time per step and their
ratios to the first variant. Results go to stdout (for benchmarks/NOTES.md). A variant
without options gets the library's (`jaxpretrain.perf.compiler_options`); one with options
gets only those.
"""

from __future__ import annotations

from typing import Any

from absl import app, flags

from benchmarks import patches as patches_lib

_SUITE = flags.DEFINE_enum("suite", "cpu", ["cpu", "gpu"], "Whose case table to use.")
_CASE = flags.DEFINE_string("case", "resnet50_b8", "Case name from the suite's table.")
_MODE = flags.DEFINE_enum("mode", "train", ["infer", "train"], "Forward pass or train step.")
_QUICK = flags.DEFINE_bool("quick", False, "Use the suite's --quick sizes.")
_VARIANTS = flags.DEFINE_multi_string("variant", ["base"], "NAME[:key=value;...;@patch;...]")
_REPS = flags.DEFINE_integer("reps", 5, "Timed repetitions per variant.")
_TARGET = flags.DEFINE_float("target_s", 1.0, "Seconds per timed block.")



def parse_variant(spec: str) -> tuple[str, dict[str, Any], list[str]]:
  """'name:a=1;b=x,y;@p' -> ('name', {'a': 1, 'b': 'x,y'}, ['p'])."""
  name, _, rest = spec.partition(":")
  options, patches = {}, []
  for item in filter(None, rest.split(";")):
    if item.startswith("@"):
      if item[1:] not in patches_lib.PATCHES:
        raise ValueError(f"unknown patch '{item[1:]}'; known: {sorted(patches_lib.PATCHES)}")
      patches.append(item[1:])
      continue
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"variant item '{item}' is neither key=value nor @patch")
    options[key] = _value(value)
  return name, options, patches


def _value(text: str) -> Any:
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return int(text)
  except ValueError:
    return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from benchmarks import cpu, gpu, harness, jax_cases  # noqa: PLC0415

  table = {"cpu": (cpu.QUICK_CASES if _QUICK.value else cpu.CASES),
           "gpu": (gpu.QUICK_CASES if _QUICK.value else gpu.CASES)}[_SUITE.value]
  (case,) = harness.select(table, [_CASE.value])
  build = jax_cases.train if _MODE.value == "train" else jax_cases.inference
  log = harness.Log()
  fns, facts = {}, {}
  for spec in _VARIANTS.value:
    name, options, patches = parse_variant(spec)
    with patches_lib.applied(patches, case) as variant:
      fns[name], facts[name] = build(variant, compiler_options=options or None)
    log(f"{name}: {options} {patches} compile {facts[name]['compile_s']:.1f}s")
  share = harness.CpuShare()
  cpu: dict[str, list[float]] = {}
  times, _ = harness.interleaved(fns, reps=_REPS.value, warmup=2, target_s=_TARGET.value,
                                 log=log, cpu_times=cpu)
  others = share.others()
  stats = {n: harness.summarize(t) for n, t in times.items()}
  cpu_stats = {n: harness.summarize(t) for n, t in cpu.items()}
  first = stats[next(iter(stats))]["median"]
  first_cpu = cpu_stats[next(iter(stats))]["median"]
  print(f"\n{case.name} {_MODE.value}, {_REPS.value} reps; other processes took "
        f"{100 * (others or 0):.0f}% of the CPU")
  print(harness.md_table(
      ["variant", "wall median", "IQR", "min", "speed vs first", "CPU s/step", "IQR",
       "CPU vs first", "compile s"],
      [[n, f"{s['median'] * 1e3:.1f} ms", f"±{100 * s['iqr_rel']:.1f}%",
        f"{s['min'] * 1e3:.1f} ms", f"{first / s['median']:.3f}×",
        f"{cpu_stats[n]['median']:.3f}", f"±{100 * cpu_stats[n]['iqr_rel']:.1f}%",
        f"{first_cpu / cpu_stats[n]['median']:.3f}×", f"{facts[n]['compile_s']:.1f}"]
       for n, s in stats.items()]))


if __name__ == "__main__":
  app.run(main)
