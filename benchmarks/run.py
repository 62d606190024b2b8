"""Benchmarks of jaxpretrain: speed against torch on CPU, conversion memory, GPU training.

    python -m benchmarks.run --suite cpu              # the CPU suite (about 20 min, 2 cores)
    python -m benchmarks.run --suite cpu --quick      # smoke run at tiny sizes
    python -m benchmarks.run --suite cpu --only resnet50_b32,bert_base_b8
    python -m benchmarks.run --suite convert          # conversion time and peak RSS
    python -m benchmarks.run --suite gpu              # bf16 vs torch, MFU, on one GPU
    python -m benchmarks.run --suite cpu --isolate    # each framework in its own processes

Results go to benchmarks/results/{suite}-{date}.md and .json. Run on a quiet machine: the
variants are interleaved, but another process that takes cores changes every number.
The gpu suite's JAX side needs nothing beyond jax, flax, optax, numpy; `--notorch` drops its
torch columns.
"""

from __future__ import annotations

from absl import app, flags

SUITES = ("cpu", "convert", "gpu")

_SUITE = flags.DEFINE_enum("suite", "cpu", SUITES, "Which benchmark suite to run.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes and few repetitions: a smoke run.")
_ONLY = flags.DEFINE_list("only", [], "Run only these cases (names as in the result tables).")
_REPS = flags.DEFINE_integer("reps", None, "Timed repetitions per variant (default: per suite).")
_TORCH_COMPILE = flags.DEFINE_bool(
    "torch_compile", True, "Add a torch.compile column (off by default with --quick).")
_COMPILE_LIMIT = flags.DEFINE_float(
    "compile_limit_s", None, "Give up on a torch.compile that takes longer (default: cpu 600 s, "
    "gpu 180 s).")
_TORCH = flags.DEFINE_bool("torch", True, "gpu suite: torch columns beside jaxpretrain.")
_COMPILE_MODE = flags.DEFINE_string(
    "torch_compile_mode", "max-autotune-no-cudagraphs",
    "gpu suite: torch.compile mode ('' for torch's default).")
_ISOLATE = flags.DEFINE_bool(
    "isolate", False, "cpu suite: time each framework of each case in a fresh process of its "
    "own (no shared allocator or thread-pool state); default: interleaved in one process.")
_OUT = flags.DEFINE_string("out", None, "Folder for the results (default benchmarks/results).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  suite = _SUITE.value
  if suite == "cpu":
    from benchmarks import cpu  # noqa: PLC0415 -- imports torch

    limit = _COMPILE_LIMIT.value or 600.0
    cpu.run(quick=_QUICK.value, only=_ONLY.value, reps=_REPS.value,
            compile_limit_s=limit if _use_compile() else None, out_dir=_OUT.value,
            isolate=_ISOLATE.value)
  elif suite == "convert":
    from benchmarks import convert  # noqa: PLC0415

    convert.run(quick=_QUICK.value, only=_ONLY.value, reps=_REPS.value, out_dir=_OUT.value)
  else:
    from benchmarks import gpu  # noqa: PLC0415 -- jax, flax, optax, numpy only

    limit = _COMPILE_LIMIT.value or 180.0
    gpu.run(quick=_QUICK.value, only=_ONLY.value, reps=_REPS.value, out_dir=_OUT.value,
            use_torch=_TORCH.value, compile_mode=_COMPILE_MODE.value or None,
            compile_limit_s=limit if _use_compile() else None)


def _use_compile() -> bool:
  """--torch_compile as given, else on for full runs and off for --quick."""
  return _TORCH_COMPILE.value if flags.FLAGS["torch_compile"].present else not _QUICK.value


if __name__ == "__main__":
  app.run(main)
