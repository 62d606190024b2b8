"""XLA options that make jaxpretrain's computations faster, per kind of computation.

    from jaxpretrain import perf
    predict = jax.jit(predict_fn, compiler_options=perf.compiler_options("inference"))

What is set, on the CPU backend only (jaxlib 0.10, 2-core AMD EPYC, interleaved A/B on a
quiet machine; benchmarks/NOTES.md, attempts 11 and 14):
- inference: no YNNPACK fusions (`xla_cpu_experimental_ynn_fusion_type=`): MiniLM-L6 b32
  1.56x, ResNet-50 1.10x (b8) and 1.16x (b32), BERT-base and ResNet-18 unchanged.
- train: YNNPACK fusions for dots and reductions but not for convolutions (XLA's default
  set less INDIVIDUAL_CONVOLUTION): ResNet-50 train steps 1.13x (b8) and 1.18x (b32),
  ResNet-18 1.16x; models without convolutions compile to the same program. Turning YNN off
  altogether, as for inference, would make them 0.61x (YNN reductions matter to training).
- init: LLVM optimization level 1 instead of 3 (`xla_backend_optimization_level=1`) for the
  once-per-run jit of a model's initialization, whose compile time (threefry's many unrolled
  integer ops) is most of its cost: 10.5 -> 2.4 s for resnet_tiny, 11.2 -> 5.8 s for
  EfficientNet-Lite0, 8.6 -> 5.1 s for ResNet-50, 9.2 -> 6.5 s for ViT-B; run time unchanged
  (2026-12-01, 2-core "Intel(R) Xeon(R) Processor" with other work running). The variables
  are bit-identical to level 3's for one or more variants of every family (checked that day);
  tests/test_perf.py keeps checking resnet_tiny and BERT.

Why per compilation and not XLA_FLAGS: the kinds want different options, and one process
runs both. The library's own jits pass them (the train and eval steps compiled with `jax.jit`,
predictions, evaluation, feature extraction, the job's model init); `jax.pmap` takes no
compiler options, so the pmap steps run with XLA's defaults.

Options are returned only where they apply (the CPU backend), only if this jaxlib accepts
them, and never when XLA_FLAGS already sets the same option (the user's choice wins).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

KINDS = ("inference", "train", "init")
# kind -> XLA debug options for the CPU backend (names of XLA_FLAGS without the dashes).
CPU_OPTIONS: dict[str, dict[str, Any]] = {
    "inference": {"xla_cpu_experimental_ynn_fusion_type": ""},  # YNNPACK fusions off
    # YNN for dots and reductions, not convolutions (the default set less the last).
    "train": {"xla_cpu_experimental_ynn_fusion_type": ",".join(
        f"LIBRARY_FUSION_TYPE_{t}" for t in ("DOT", "REDUCE", "INDIVIDUAL_DOT"))},
    # Less LLVM optimization: the same values, compiled in a fraction of the time.
    "init": {"xla_backend_optimization_level": 1},
}


def compiler_options(kind: str, backend: str | None = None) -> dict[str, Any]:
  """XLA options for `jax.jit(..., compiler_options=...)` of a computation of this kind.

  Args:
    kind: "inference" (forward passes, evaluation) | "train" (steps with gradients) |
      "init" (a model's initialization, compiled once per run).
    backend: the platform the function will run on; default `jax.default_backend()`.
  Returns:
    A new dict, empty where nothing measured helps (GPUs) or applies.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown kind '{kind}'; known: {list(KINDS)}")
  if (backend or jax.default_backend()) != "cpu":
    return {}
  user_flags = os.environ.get("XLA_FLAGS", "")
  options = {k: v for k, v in CPU_OPTIONS[kind].items() if k not in user_flags}
  return dict(options) if options and _accepted(tuple(sorted(options.items()))) else {}


@functools.cache
def _accepted(options: tuple[tuple[str, Any], ...]) -> bool:
  """Whether this jaxlib's CPU compiler knows these options (flags come and go)."""
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((1,), jnp.float32)).compile(
        compiler_options=dict(options))
  except Exception:  # noqa: BLE001 -- an unknown or invalid option: use the defaults
    return False
  return True
