"""What the absl mains share: flags -> config -> run, errors as one line and an exit status.

Exit status: 0 done; 1 a failed run (non-finite loss, workdir in use, full or read-only, the
disk filling up mid-run, a data file that cannot be read, no checkpoint that restores); 2 a
bad flag; 143 stopped by SIGTERM, 130 by Ctrl-C (SIGINT), after writing a checkpoint (rerun the
same command to resume; a second Ctrl-C aborts at once, also 130). Ctrl-C before training has
started (while converting, building data) ends the run with status 130 and one line.

`run_main` is the mains' body: after the one line it never waits on threads left behind (a
failed async orbax save leaves signalling threads that wait out orbax's coordination timeout,
many minutes): the process exits within EXIT_GRACE_S.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
import traceback

from absl import logging

from jaxpretrain import console
from jaxpretrain.job import flags as flags_lib
from jaxpretrain.job import loop, multihost
from jaxpretrain.job import report as report_lib
from jaxpretrain.job.config import ConfigError
from jaxpretrain.job.workdir import WorkdirError
from jaxpretrain.train.checkpoint import CheckpointError

EXIT_GRACE_S = 5.0  # how long threads still running at the end may take to finish
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def run_main(argv: list[str]) -> int:
  """`train_main` for a process's main: a bug's traceback is printed and gives status 1, and
  threads still running after EXIT_GRACE_S do not keep the process alive."""
  try:
    status = train_main(argv)
  except KeyboardInterrupt:  # Ctrl-C before the loop took over SIGINT: nothing to save yet
    print("\ninterrupted before training started; nothing was lost: rerun the same command",
          file=sys.stderr)
    status = loop.EXIT_INTERRUPTED
  except Exception:  # a bug: its traceback, then the same bounded exit as any failure
    traceback.print_exc()
    status = 1
  exit_if_threads_linger(status)
  return status


def exit_if_threads_linger(status: int, grace_s: float = EXIT_GRACE_S) -> None:
  """Ends the process with `status` (os._exit, after flushing) if non-daemon threads are
  still alive after `grace_s`; everything the run writes has been written by now."""
  if status:
    logging.set_verbosity(logging.FATAL)  # the error line stays the last: no thread's log after
  deadline = time.monotonic() + grace_s
  for t in threading.enumerate():
    if t is not threading.main_thread() and not t.daemon:
      # The base class's join: orbax's threads override it to raise on a timeout.
      threading.Thread.join(t, max(deadline - time.monotonic(), 0.0))
  if any(t.is_alive() and not t.daemon for t in threading.enumerate()
         if t is not threading.main_thread()):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def train_main(argv: list[str]) -> int:
  """Body of finetune/pretrain `main`: runs the flags' job and prints where the report is."""
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; every setting is a --flag", file=sys.stderr)
    return 2
  console.after_flags()  # orbax and TFDS log every file at INFO; --verbosity shows them
  config = None
  try:
    config = flags_lib.config_from_flags()
    result = loop.run(config)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (WorkdirError, loop.NonFiniteError, CheckpointError,
          multihost.MultihostError) as e:  # process 0 never finished a step; no jax.distributed
    print(f"error: {e}", file=sys.stderr)
    return 1
  except loop.Stopped as e:
    print(f"stopped: {e}", file=sys.stderr)
    return e.status
  except (OSError, ValueError) as e:  # a full disk or a corrupt data file, met mid-run
    message = _failure_mid_run(e, config)
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    return 1
  m = result.metrics
  if "macro_f1" in m:
    top5 = f", top-5 {m['top5']:.4f}" if report_lib.has_top5(m) else ""
    print(f"test accuracy {m['accuracy']:.4f} (macro-F1 {m['macro_f1']:.4f}{top5}, "
          f"majority baseline {m['majority_baseline']:.4f})")
  else:
    print(f"test masked-token accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, "
          f"perplexity {m['perplexity']:.1f}")
  print(f"report: {result.report}\nmodel: {result.model_dir}")
  return 0


def _failure_mid_run(e: BaseException, config) -> str | None:
  """The one-line message of a failure the run cannot avoid, or None for a bug (re-raised).

  A full disk is an OSError (ENOSPC, EDQUOT) or, from orbax's tensorstore, a ValueError with
  the same strerror in its message; so is a workdir that cannot be written (EROFS, EACCES,
  EPERM, or any OSError on a file inside it); a data file that cannot be decoded is a
  DataError.
  """
  codes = (errno.ENOSPC, errno.EDQUOT)
  where = f"--workdir={config.workdir!r}" if config else "the workdir"
  if (isinstance(e, OSError) and e.errno in codes) or any(
      os.strerror(c) in str(e) for c in codes):
    return (f"no space left on the device of {where}; free some space and rerun the same "
            "command: it resumes from the last complete checkpoint")
  if (isinstance(e, OSError) and (e.errno in _UNWRITABLE or _inside(e.filename, config))) or any(
      os.strerror(c) in str(e) for c in _UNWRITABLE):
    # e.g. checkpoints/ made read-only, or removed or mounted over while a save was writing
    what = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) else str(e).splitlines()[0]
    return (f"cannot write in {where} ({what}); make it writable and rerun the same "
            "command: it resumes from the last complete checkpoint")
  from jaxpretrain.data.loaders import DataError  # noqa: PLC0415 -- TFDS import is slow
  return str(e) if isinstance(e, DataError) else None


def _inside(filename, config) -> bool:
  """Whether an OSError's file lies in the run's workdir (a write of the run failed)."""
  if config is None or not isinstance(filename, (str, os.PathLike)):
    return False
  workdir = os.path.realpath(config.workdir)
  return os.path.realpath(filename).startswith(workdir + os.sep)
