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

Damage: a committed step whose files were later removed or cut short does not restore. The
restore then falls back to the newest step that restores cleanly, says which steps it skipped
and why, and removes them (a resumed run writes those steps again). If no step restores, a
`CheckpointError` lists each step's failure; the run never silently starts over.

The state saved must hold global jax.Arrays (any sharding; `Parallel.global_state` gives them
for pmap); it is restored with the shardings of `target_state`, so restoring into a state
placed by `Parallel.put_state` gives a state ready for the compiled step.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxpretrain.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"
_REASON_CHARS = 300  # of an exception's message quoted in a log line or an error


class CheckpointError(RuntimeError):
  """No committed checkpoint restores; the message names each step and its failure."""


def _reason(e: BaseException) -> str:
  # Orbax's tensorstore errors append a repr of the whole store spec; the first part says it.
  text = " ".join(str(e).split(" See full TensorStore details")[0].split())
  return f"{type(e).__name__}: {text[:_REASON_CHARS]}{'...' if len(text) > _REASON_CHARS else ''}"


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
               async_save: bool = True, read_only: bool = False):
    """
    Args:
      workdir: the run's directory.
      max_to_keep: how many of the latest checkpoints to keep (None = all).
      async_save: write in a background thread after copying arrays to host memory, so
        training continues during the write (`wait`/`close` block until it is done).
      read_only: only read: nothing is created, cleaned up, saved or deleted.
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep={max_to_keep}; allowed: None or >= 1")
    policy = ocp.checkpoint_managers.LatestN(max_to_keep) if max_to_keep and not read_only \
        else None
    # read_only is kept here rather than by orbax's option, which logs two warnings.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save and not read_only,
        create=not read_only,
        cleanup_tmp_directories=not read_only)  # leftovers of a save interrupted by a crash
    self.read_only = read_only
    self.directory = checkpoint_dir(workdir)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: TrainState, data_state: dict | None = None) -> bool:
    """Starts saving `state` and `data_state` as checkpoint `step` (all processes call it).

    Returns:
      True when a save started (False if `step` is already saved).
    """
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read-only; cannot save step {step}")
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

  def read_data(self, step: int) -> dict:
    """Only the "data" JSON of checkpoint `step` (cheap: no arrays are read)."""
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        data=ocp.args.JsonRestore()))
    data = restored.data
    if not isinstance(data, dict):
      raise ValueError(f"the data item is {type(data).__name__}, not a JSON object")
    return data

  def newest_data(self) -> tuple[int, dict] | None:
    """(step, data JSON) of the newest committed step whose data JSON reads, or None."""
    self._manager.reload()
    for step in reversed(self.all_steps()):
      try:
        return step, self.read_data(step)
      except MemoryError:
        raise
      except Exception:  # damage; restore_latest says which and why
        continue
    return None

  def restore_latest(self, target_state: TrainState, *,
                     check: Callable[[int, dict], None] | None = None,
                     log: Callable[[str], None] = print) -> tuple[TrainState, dict] | None:
    """The newest checkpoint that restores, as (state, data_state); None when there is none.

    Args:
      target_state: structure, dtypes and shardings to restore into.
      check: called with (step, data JSON) before the state is read; what it raises (e.g. a
        run with other flags) propagates: a mismatch is not damage.
      log: receives one line per damaged step skipped (and removed).

    Raises:
      CheckpointError: there are committed steps but none restores.
    """
    self._manager.wait_until_finished()
    self._manager.reload()
    skipped = []
    for step in reversed(self.all_steps()):
      try:
        data = self.read_data(step)
      except MemoryError:
        raise
      except Exception as e:  # removed, cut short or garbled files
        skipped.append((step, _reason(e)))
        continue
      if check is not None:
        check(step, data)
      try:
        got = self.restore(step, target_state)
      except MemoryError:
        raise
      except Exception as e:
        skipped.append((step, _reason(e)))
        continue
      for bad, why in skipped:
        log(f"skipping checkpoint {bad} in {self.directory}: it does not restore ({why}); "
            f"{'left as it is' if self.read_only else 'removed'}, resuming from step {step}")
        if not self.read_only:
          self._delete(bad)
      return got
    if skipped:
      shown = "; ".join(f"step {step}: {why}" for step, why in skipped)
      raise CheckpointError(f"no checkpoint in {self.directory} restores ({shown}); move the "
                            "folder away to start over, or choose another --workdir")
    return None

  def _delete(self, step: int) -> None:
    try:
      self._manager.delete(int(step))
    except Exception as e:  # a later save of the step writes it again
      print(f"could not remove checkpoint {step}: {_reason(e)}", flush=True)

  def wait(self) -> None:
    """Blocks until the pending async save is committed."""
    self._manager.wait_until_finished()

  def close(self, *, raise_errors: bool = True) -> None:
    """Waits for pending saves and releases the manager's threads.

    Args:
      raise_errors: False on a path that is already failing: a failed save's error (raised
        once already) is not raised again, and the manager is closed all the same.
    """
    try:
      self._manager.wait_until_finished()
    except Exception:
      self._close_quietly()
      if raise_errors:
        raise
      return
    if raise_errors:
      self._manager.close()
    else:
      self._close_quietly()

  def _close_quietly(self) -> None:
    with contextlib.suppress(Exception):  # the first error is the one reported
      self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, exc_type, *exc) -> None:
    self.close(raise_errors=exc_type is None)


def restore_latest(workdir: str | pathlib.Path, target_state: TrainState
                   ) -> tuple[TrainState, dict] | None:
  """(state, data_state) of the latest complete checkpoint in `workdir`, or None."""
  if not checkpoint_dir(workdir).exists():
    return None
  with Checkpointer(workdir, max_to_keep=None, async_save=False) as ckpt:
    return ckpt.restore_latest(target_state)
