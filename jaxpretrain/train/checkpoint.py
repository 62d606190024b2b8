"""Orbax checkpoints of the whole training state plus the data iterator's state.

    ckpt = Checkpointer(workdir, max_to_keep=3)
    restored = ckpt.restore_latest(state)          # None on a fresh workdir
    if restored:
      state, data_state = restored
    ...
    ckpt.save(step, state, data_state=loader.get_state())   # async: returns after the
    ckpt.close()                                             # device->host copy; close waits

Layout: `<workdir>/checkpoints/<step>/{state,data}`. "state" is the TrainState (params,
batch_stats, opt_state, step, rng) as an orbax PyTree; "data" is a JSON dict given by the
caller (e.g. a grain iterator's state), restored as is. Orbax writes each step into a
temporary directory and renames it when complete (the commit), so an interrupted save is
never listed or restored; `latest_step` only sees committed steps.

The state saved must hold global jax.Arrays (any sharding; `Parallel.global_state` gives them
for pmap); it is restored with the shardings of `target_state`, so restoring into a state
placed by `Parallel.put_state` gives a state ready for the compiled step.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxpretrain.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / CHECKPOINT_DIR


def _abstract(tree: Any) -> Any:
  """Leaves -> ShapeDtypeStructs carrying the leaves' shardings (the restore target)."""
  def one(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    x = np.asarray(x)
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run in `<workdir>/checkpoints`."""

  def __init__(self, workdir: str | pathlib.Path, *, max_to_keep: int | None = 3,
               async_save: bool = True):
    """
    Args:
      workdir: the run's directory.
      max_to_keep: how many of the latest checkpoints to keep (None = all).
      async_save: write in a background thread after copying arrays to host memory, so
        training continues during the write (`wait`/`close` block until it is done).
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep={max_to_keep}; allowed: None or >= 1")
    policy = ocp.checkpoint_managers.LatestN(max_to_keep) if max_to_keep else None
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)  # leftovers of a save interrupted by a crash
    self.directory = checkpoint_dir(workdir)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: TrainState, data_state: dict | None = None) -> bool:
    """Starts saving `state` and `data_state` as checkpoint `step` (all processes call it).

    Returns:
      True when a save started (False if `step` is already saved).
    """
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(dict(data_state or {})))
    return self._manager.save(int(step), args=args, force=True)

  def all_steps(self) -> list[int]:
    """Committed checkpoint steps, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, step: int, target_state: TrainState) -> tuple[TrainState, dict]:
    """Checkpoint `step` with the structure, dtypes and shardings of `target_state`."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target_state)),
                              data=ocp.args.JsonRestore())
    restored = self._manager.restore(int(step), args=args)
    return restored.state, dict(restored.data or {})

  def restore_latest(self, target_state: TrainState) -> tuple[TrainState, dict] | None:
    """The latest complete checkpoint as (state, data_state), or None when there is none."""
    self._manager.wait_until_finished()
    self._manager.reload()
    step = self._manager.latest_step()
    return None if step is None else self.restore(step, target_state)

  def wait(self) -> None:
    """Blocks until the pending async save is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def restore_latest(workdir: str | pathlib.Path, target_state: TrainState
                   ) -> tuple[TrainState, dict] | None:
  """(state, data_state) of the latest complete checkpoint in `workdir`, or None."""
  if not checkpoint_dir(workdir).exists():
    return None
  with Checkpointer(workdir, max_to_keep=None, async_save=False) as ckpt:
    return ckpt.restore_latest(target_state)
