"""XLA options that make jaxpretrain's computations faster, per kind of computation.

    from jaxpretrain import perf
    predict = jax.jit(predict_fn, compiler_options=perf.compiler_options("inference"))

Why per compilation and not XLA_FLAGS: the one CPU option that helps cuts both ways.
Without YNNPACK fusions (`xla_cpu_experimental_ynn_fusion_type=`, jaxlib 0.10) inference is
faster -- MiniLM-L6 b32 1.56x, ResNet-50 1.10x (b8) and 1.16x (b32), BERT-base and ResNet-18
unchanged -- while train steps are slower: ResNet-50 0.61x, BERT-base 0.91x, MiniLM 0.96x
(2-core AMD EPYC, interleaved A/B on a quiet machine; benchmarks/NOTES.md, attempt 11). A
process-wide default would therefore cost training what it gives inference, so nothing is
set globally; pass these options to the `jax.jit` of inference functions instead.

Options are returned only where they apply (the CPU backend), only if this jaxlib accepts
them, and never when XLA_FLAGS already sets the same option (the user's choice wins).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

KINDS = ("inference", "train")
# kind -> XLA debug options for the CPU backend (names of XLA_FLAGS without the dashes).
CPU_OPTIONS: dict[str, dict[str, Any]] = {
    "inference": {"xla_cpu_experimental_ynn_fusion_type": ""},  # YNNPACK fusions off
    "train": {},  # the defaults are the fastest measured
}


def compiler_options(kind: str, backend: str | None = None) -> dict[str, Any]:
  """XLA options for `jax.jit(..., compiler_options=...)` of a computation of this kind.

  Args:
    kind: "inference" (forward passes, evaluation) | "train" (steps with gradients).
    backend: the platform the function will run on; default `jax.default_backend()`.
  Returns:
    A new dict, empty where nothing measured helps (GPUs, training) or applies.
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
