"""Benchmarks of jaxpretrain: speed against torch on CPU, conversion memory, GPU training.

    python -m benchmarks.run --suite cpu              # the CPU suite (about 20 min, 2 cores)
    python -m benchmarks.run --suite cpu --quick      # smoke run at tiny sizes
    python -m benchmarks.run --suite cpu --only resnet50_b32,bert_base_b8
    python -m benchmarks.run --suite convert          # conversion time and peak RSS
    python -m benchmarks.run --suite gpu              # bf16 training and MFU on one GPU

Results go to benchmarks/results/{suite}-{date}.md and .json. Run on a quiet machine: the
variants are interleaved, but another process that takes cores changes every number.
Only the cpu suite imports torch; the gpu suite needs nothing beyond jax, flax, optax, numpy.
"""

from __future__ import annotations

from absl import app, flags

SUITES = ("cpu", "convert", "gpu")

_SUITE = flags.DEFINE_enum("suite", "cpu", SUITES, "Which benchmark suite to run.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes and few repetitions: a smoke run.")
_ONLY = flags.DEFINE_list("only", [], "Run only these cases (names as in the result tables).")
_REPS = flags.DEFINE_integer("reps", None, "Timed repetitions per variant (default: per suite).")
_TORCH_COMPILE = flags.DEFINE_bool(
    "torch_compile", True, "cpu suite: add a torch.compile column (off by default with --quick).")
_COMPILE_LIMIT = flags.DEFINE_float(
    "compile_limit_s", 600.0, "cpu suite: give up on a torch.compile that takes longer.")
_OUT = flags.DEFINE_string("out", None, "Folder for the results (default benchmarks/results).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  suite = _SUITE.value
  if suite == "cpu":
    from benchmarks import cpu  # noqa: PLC0415 -- imports torch

    use_compile = _TORCH_COMPILE.value if flags.FLAGS["torch_compile"].present else not _QUICK.value
    cpu.run(quick=_QUICK.value, only=_ONLY.value, reps=_REPS.value,
            compile_limit_s=_COMPILE_LIMIT.value if use_compile else None, out_dir=_OUT.value)
  elif suite == "convert":
    from benchmarks import convert  # noqa: PLC0415

    convert.run(quick=_QUICK.value, only=_ONLY.value, reps=_REPS.value, out_dir=_OUT.value)
  else:
    from benchmarks import gpu  # noqa: PLC0415 -- jax, flax, optax, numpy only

    gpu.run(quick=_QUICK.value, only=_ONLY.value, reps=_REPS.value, out_dir=_OUT.value)


if __name__ == "__main__":
  app.run(main)
