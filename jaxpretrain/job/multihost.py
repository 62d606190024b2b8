"""One run across several processes: who writes, what runs once, and a lost process.

    multihost.start_watchdog()            # after jax.distributed.initialize (loop.start_devices)
    with multihost.guard():               # a collective failing on a lost peer -> one line
      path = multihost.lead_first("converting --init_checkpoint", convert)  # process 0 first
      if multihost.agreed_stop(stop.requested): ...   # all processes stop at the same step

- **Process 0 writes** the workdir's lock, flags, metrics, report and export (loop.py); all
  processes write the checkpoint together (orbax) and read the same data state: the
  iterator's state is the global step (data/pipeline.py), the same in every process.
- **Once:** `lead_first` runs a step (the conversion of --init_checkpoint) in process 0 while
  the others wait on the coordination service's key-value store (`LEAD_TIMEOUT_S`); then the
  others run it too and find its result (the converted folder) in place. A failure in process
  0 is raised in every process, with its message.
- **A lost process:** every process bumps a counter in the key-value store every
  `HEARTBEAT_S`; a thread watches the others'. A counter that has not moved for
  `LOST_AFTER_S` ($JAXPRETRAIN_LOST_AFTER_S), or a collective that fails because a peer closed
  its connection, ends this process with one line naming the lost process(es) and status
  `EXIT_LOST`, well before jax's own heartbeat timeout (100 s), which would abort with a page
  of C++ logs. Losing process 0 (the coordinator) takes the coordination service with it:
  jax's client then aborts the others at once (status 134, its own log lines).
- **SIGTERM** (a pre-emption) may reach the processes at different steps: `agreed_stop`
  combines the flags of all processes every step, so they checkpoint the same step together.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import numpy as np

HEARTBEAT_S = 0.5
LOST_AFTER_S = 20.0  # default of $JAXPRETRAIN_LOST_AFTER_S; < jax's heartbeat timeout (100 s)
LEAD_TIMEOUT_S = 1800.0  # how long the others wait for process 0's conversion
EXIT_LOST = 1  # a failed run (cli.py's statuses)
_KEY = "jaxpretrain"
T = TypeVar("T")


class MultihostError(RuntimeError):
  """Process 0 did not finish a step the others wait for, or a process was lost."""


def client() -> Any | None:
  """jax.distributed's client, or None in a one-process run."""
  from jax._src import distributed  # noqa: PLC0415 -- the only handle on the key-value store

  if jax.process_count() == 1:
    return None
  c = distributed.global_state.client
  if c is None:  # e.g. a TPU pod slice whose runtime joined the hosts without jax.distributed
    raise MultihostError(
        f"{jax.process_count()} processes but jax.distributed was not initialized; set "
        "JAX_COORDINATOR_ADDRESS (process 0's host:port), JAX_NUM_PROCESSES and "
        "JAX_PROCESS_ID in every process (BUILD.md, 'Running on many devices and hosts')")
  return c


def is_lead() -> bool:
  return jax.process_index() == 0


def lost_after_s() -> float:
  raw = os.environ.get("JAXPRETRAIN_LOST_AFTER_S")
  if raw is None:
    return LOST_AFTER_S
  try:
    value = float(raw)
  except ValueError:
    value = -1.0
  if not 1.0 <= value <= 3600.0:
    raise ValueError(f"JAXPRETRAIN_LOST_AFTER_S={raw!r}; allowed: seconds in [1, 3600]")
  return value


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:400]}"


def lead_first(what: str, fn: Callable[[], T], timeout_s: float = LEAD_TIMEOUT_S) -> T:
  """Runs `fn` in process 0, then (once it succeeded) in the others; `what` names it."""
  c = client()
  if c is None:
    return fn()
  key = f"{_KEY}/once/{what}"
  if is_lead():
    try:
      out = fn()
    except BaseException as e:
      c.key_value_set(key, f"error {_one_line(e)}", allow_overwrite=True)
      raise
    c.key_value_set(key, "ok", allow_overwrite=True)
    return out
  try:
    got = c.blocking_key_value_get(key, int(timeout_s * 1000))
  except Exception as e:
    raise MultihostError(f"process {jax.process_index()}: process 0 did not finish {what} "
                         f"within {timeout_s:.0f} s ({_one_line(e)}); is it still running?"
                         ) from None
  if got != "ok":
    from jaxpretrain.job.config import ConfigError  # noqa: PLC0415

    raise ConfigError(f"process 0 failed {what}: {got.removeprefix('error ')}")
  return fn()


def agreed_stop(requested: str | None) -> str | None:
  """A signal's name if any process received one (a collective: every process, every step)."""
  if jax.process_count() == 1:
    return requested
  from jax.experimental import multihost_utils  # noqa: PLC0415

  flags = np.asarray(multihost_utils.process_allgather(np.int32(requested is not None)))
  return (requested or "SIGTERM") if flags.any() else None


# ----------------------------------------------------------------------------- lost processes

class _Watchdog:
  """Beats this process's counter and watches the others' (a daemon thread)."""

  def __init__(self, c, lost_after: float):
    self.c, self.lost_after = c, lost_after
    self.me, self.n = jax.process_index(), jax.process_count()
    self.lost: list[int] | None = None
    self.stopped = False  # after `finish`: processes exiting are not lost
    self.why = ""
    self.found = threading.Event()
    self._thread = threading.Thread(target=self._run, name="jaxpretrain-watchdog", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def _run(self) -> None:
    beat = 0
    seen = {p: (None, time.monotonic()) for p in range(self.n) if p != self.me}
    while True:
      beat += 1
      try:
        self.c.key_value_set(f"{_KEY}/alive/{self.me}", str(beat), allow_overwrite=True)
        now = time.monotonic()
        for p, (last, _since) in seen.items():
          try:
            value = self.c.key_value_try_get(f"{_KEY}/alive/{p}")
          except Exception:  # not written yet: the process is still starting
            value = None
          if value != last:
            seen[p] = (value, now)
        stale = sorted(p for p, (_, since) in seen.items() if now - since > self.lost_after)
      except Exception as e:  # the coordination service (process 0) is gone
        if self.stopped:
          return
        self._report([0], f"the coordination service is unreachable: {_one_line(e)[:160]}")
        return
      if self.stopped:
        return
      if stale:
        self._report(stale, f"no heartbeat for {self.lost_after:.0f} s")
        return
      time.sleep(HEARTBEAT_S)

  def _report(self, lost: list[int], why: str) -> None:
    self.lost, self.why = lost, why
    self.found.set()
    exit_lost(lost, why)


_WATCHDOG: _Watchdog | None = None


def start_watchdog() -> None:
  """Starts the lost-process watchdog (once; nothing in a one-process run)."""
  global _WATCHDOG
  c = client()
  if c is None or _WATCHDOG is not None:
    return
  _WATCHDOG = _Watchdog(c, lost_after_s())
  _WATCHDOG.start()


def finish(timeout_s: float = LEAD_TIMEOUT_S) -> None:
  """The end of a run: waits until every process got here (process 0 may still be writing the
  report and export), then stops watching, so processes exiting are not taken as lost."""
  c = client()
  if c is None:
    return
  c.wait_at_barrier(f"{_KEY}/finished", int(timeout_s * 1000))
  if _WATCHDOG is not None:
    _WATCHDOG.stopped = True


_EXITING = threading.Lock()


def exit_lost(lost: list[int], why: str) -> None:
  """One line naming the lost process(es), then this process ends (no jax shutdown: its
  barrier would wait for the lost process and abort)."""
  _EXITING.acquire()  # one line, from the first caller; os._exit ends the others
  n, me = jax.process_count(), jax.process_index()
  names = ", ".join(map(str, lost)) or "(unknown)"
  print(f"error: lost process {names} of this {n}-process run ({why}; killed, crashed or its "
        f"host is gone); process {me} stops too. Rerun all {n} processes with the same "
        "command: the run resumes from the last committed checkpoint",
        file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(EXIT_LOST)


@contextlib.contextmanager
def guard() -> Iterator[None]:
  """A collective that fails because a peer is gone -> the watchdog's one line and exit."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if _WATCHDOG is None:
      raise
    # The peer's connection closed: wait for the watchdog to see whose heartbeat stopped.
    _WATCHDOG.found.wait(_WATCHDOG.lost_after + 5 * HEARTBEAT_S + 5.0)
    exit_lost(_WATCHDOG.lost or [], _WATCHDOG.why or f"a collective failed: {_one_line(e)}")
