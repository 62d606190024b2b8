"""Operations whose fastest formulation depends on the backend.

XLA's CPU backend runs some computations much faster in another (mathematically equal)
form: Dense layers and 1x1 convolutions as 2-D matmuls, k x k convolutions on maps smaller
than the kernel as one im2col matmul (benchmarks/NOTES.md, attempts 5, 7, 8). Those forms are
for the CPU only: on GPUs cuDNN and cuBLAS run the plain convolutions and contractions well,
and XLA 0.11's GPU compiler aborts on the reshaped ResNet-50 dots (`triton_tiling_propagation.cc:
Check failed: subdim_size_accumulator == dim_size (784 vs. 56)`, H200, attempt 12).

`cpu_or_default` picks between the two with `jax.lax.platform_dependent`: the choice is made
when the computation is lowered for its platform (not by the process's default backend), so
a jit placed on a GPU, or an AOT export for one, gets the plain form; only the chosen branch
reaches the compiler, and gradients follow the same choice.

Whether the CPU forms are used at all is the calling module's `cpu_forms` field (ResNet's
convolutions, the transformer's Dense layers), passed here as `enabled`: a choice fixed when
the module is built, so jit's cache keys on it (no module-level switch).
"""

from __future__ import annotations

from collections.abc import Callable

import jax


def cpu_or_default(cpu: Callable[..., jax.Array], default: Callable[..., jax.Array],
                   *args: jax.Array, enabled: bool = True) -> jax.Array:
  """`cpu(*args)` when lowered for a CPU, `default(*args)` on every other platform.

  With `enabled=False`, `default(*args)` everywhere (e.g. to compare both forms on a CPU).
  """
  if not enabled:
    return default(*args)
  return jax.lax.platform_dependent(*args, cpu=cpu, default=default)
