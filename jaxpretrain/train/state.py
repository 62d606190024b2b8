"""The training state: one small pytree that steps take, return and checkpoints hold.

    variables = model.init(rng, x)
    state = create_train_state(variables, opt.tx, jax.random.key(0))

`step` counts calls of the train step (micro-batches when gradients are accumulated). `rng`
is raw uint32 key data (`jax.random.key_data`), so the state holds only plain arrays that
every checkpoint format and `pmap` replication handle; each step derives its randomness with
`jax.random.fold_in(rng, step)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Parameters, BatchNorm statistics ({} if none), optimizer state, step, PRNG key data."""
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  step: jax.Array  # int32 []
  rng: jax.Array   # uint32 [2] (threefry key data)

  @property
  def variables(self) -> dict[str, PyTree]:
    """The model's variables for `model.apply` (params, plus batch_stats when present)."""
    out = {"params": self.params}
    if jax.tree.leaves(self.batch_stats):
      out["batch_stats"] = self.batch_stats
    return out


def key_data(rng: jax.Array | int) -> jax.Array:
  """A seed, typed key or raw key -> raw uint32 key data."""
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  return jnp.asarray(rng, jnp.uint32)


def create_train_state(variables: Mapping[str, PyTree], tx: optax.GradientTransformation,
                       rng: jax.Array | int) -> TrainState:
  """A fresh state at step 0 from a model's variables ("params", optional "batch_stats").

  Args:
    variables: e.g. the result of `model.init` or of `params.merge_params`.
    tx: the optimizer (`optim.make_optimizer(...).tx`).
    rng: a seed, a typed key or raw key data; the source of all training randomness.
  Returns:
    A TrainState; other variable collections are dropped (none of our models has one).
  """
  unknown = set(variables) - {"params", "batch_stats"}
  if unknown:
    raise ValueError(f"unknown variable collections {sorted(unknown)}; "
                     "known: ['params', 'batch_stats']")
  params = variables["params"]
  return TrainState(
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      step=jnp.zeros([], jnp.int32),
      rng=key_data(rng),
  )
