"""The run folder and the crash safety around it: lock, space, signals, metrics log.

    wd = Workdir(path)
    wd.check_writable()                    # clear error before any work
    with wd.lock():                        # refuses a workdir in use, naming the pid
      wd.check_free_space(needed_bytes)
      with StopSignal() as stop:           # SIGTERM -> stop.requested, the loop checkpoints
        ...

Lock: `fcntl.flock` on the workdir folder itself, and on `<workdir>/.lock`, which holds the
owner's pid and host. The kernel releases both when the process dies however it dies. So a
lock file that can be taken but still names a pid is stale (that process crashed or was
killed): it is taken over with a message. A lock that cannot be taken belongs to a live
process, which the error names. The lock on the folder is what excludes a second run: a
deleted or replaced `.lock` file (a new inode nobody holds) does not let one in, nor does a
relative or symlinked path to the same folder. Where a file system cannot flock a folder,
the `.lock` file is the lock, and it is checked to still be the file at its path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

LOCK = ".lock"
METRICS = "metrics.jsonl"
SPACE_MARGIN = 64 << 20  # bytes kept free beyond the estimate (logs, report, orbax metadata)


class WorkdirError(RuntimeError):
  """The workdir cannot be used (in use, not writable, too little space)."""


class Workdir:
  """Paths and checks of one run folder."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path).absolute()

  def __truediv__(self, name: str) -> pathlib.Path:
    return self.path / name

  def check_writable(self, inside: tuple[str, ...] = ()) -> None:
    """Creates the folder and writes a probe file in it and in each folder of `inside` that
    exists (`checkpoints/` may be another, read-only, mount); files of `inside` that exist
    are opened for appending. A WorkdirError names the first that fails."""
    target = self.path
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      _probe(self.path)
      for name in inside:
        target = self.path / name
        if target.is_symlink():
          continue  # leads outside the workdir; what it points to is not ours to probe
        if target.is_dir():
          _probe(target)
        elif target.is_file():
          with target.open("a"):  # appending nothing: the contents stay as they are
            pass
    except OSError as e:
      where = "" if target == self.path else f" ({target.name} in it)"
      raise WorkdirError(f"--workdir={str(self.path)!r} is not a writable folder{where}: "
                         f"{type(e).__name__}: {e}") from None

  def check_free_space(self, needed: int) -> None:
    """Fails unless the workdir's file system has `needed` bytes (+ a margin) free."""
    free = shutil.disk_usage(self.path).free
    if free < needed + SPACE_MARGIN:
      raise WorkdirError(
          f"--workdir={str(self.path)!r}: {free / 2**20:.0f} MiB free, but the checkpoints and "
          f"the exported model need about {(needed + SPACE_MARGIN) / 2**20:.0f} MiB; free "
          "some space, lower --keep_checkpoints or choose another --workdir")

  @contextlib.contextmanager
  def lock(self) -> Iterator[None]:
    """Holds the workdir's lock for the block (see the module docstring)."""
    path = self.path / LOCK
    dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
    fd = None
    try:
      try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        self._in_use(path)
      except OSError:  # no flock on folders here (some network file systems): the file only
        os.close(dir_fd)
        dir_fd = None
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        self._in_use(path, fd)
      if dir_fd is None and not _same_file(fd, path):
        raise WorkdirError(f"--workdir={str(self.path)!r}: the lock file {path} was replaced "
                           "while taking it; another run is starting here. Rerun")
      owner = _read_owner(fd)
      if owner.get("pid"):
        print(f"taking over the stale lock of pid {owner['pid']} on {owner.get('host', '?')} "
              f"({'not running' if not _alive(owner['pid']) else 'lock released'}): "
              f"{path}", flush=True)
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
      os.fsync(fd)
      try:
        yield
      finally:
        os.ftruncate(fd, 0)  # a clean exit leaves no owner behind
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      for f in (fd, dir_fd):
        if f is not None:
          os.close(f)

  def _in_use(self, path: pathlib.Path, fd: int | None = None) -> None:
    """Raises the WorkdirError of a lock held by a live process, naming it when it can."""
    owner = _read_owner(fd) if fd is not None else _read_owner_file(path)
    holder = (f"pid {owner['pid']} on {owner.get('host', '?')}" if owner.get("pid") else
              "another process (its lock file was removed or emptied)")
    raise WorkdirError(f"--workdir={str(self.path)!r} is in use by {holder} (lock {path}); "
                       "wait for it, stop it, or choose another --workdir")

  def git_revision(self) -> str:
    return git_revision()


def _read_owner(fd: int) -> dict[str, Any]:
  try:
    owner = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (ValueError, UnicodeDecodeError):
    return {}
  return owner if isinstance(owner, dict) else {}


def _read_owner_file(path: pathlib.Path) -> dict[str, Any]:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return {}
  try:
    return _read_owner(fd)
  finally:
    os.close(fd)


def _same_file(fd: int, path: pathlib.Path) -> bool:
  """Whether the open `fd` is still the file at `path` (not deleted or replaced)."""
  try:
    st = os.stat(path)
  except OSError:
    return False
  mine = os.fstat(fd)
  return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _probe(folder: pathlib.Path) -> None:
  probe = folder / f".probe-{os.getpid()}"
  probe.write_text("ok")
  probe.unlink()


def _alive(pid: int) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError):
    return True
  return True


def git_revision(path: str | os.PathLike | None = None) -> str:
  """`git rev-parse HEAD` of the source tree (plus "-dirty" with local changes), or
  "unknown" outside git."""
  cwd = pathlib.Path(path or __file__).resolve()
  cwd = cwd if cwd.is_dir() else cwd.parent
  try:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                         timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return f"{rev}-dirty" if dirty else (rev or "unknown")


class MetricsLog:
  """`metrics.jsonl`: one JSON object per logged step and per evaluation."""

  def __init__(self, path: str | os.PathLike, enabled: bool = True):
    self.path, self.enabled = pathlib.Path(path), enabled

  def truncate_after(self, step: int, final_step: int | None = None) -> None:
    """Drops records past `step` (written after the checkpoint a resumed run starts from),
    and the final evaluation at `final_step`: a run resumed there evaluates again (it was
    stopped during the export, after logging it). Rewritten atomically, so a crash here
    leaves the old file or the new one."""
    if not self.enabled or not self.path.exists():
      return
    keep = [r for r in self.read() if _step(r) <= step
            and not (r.get("kind") == "eval" and _step(r) == final_step)]
    tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
    os.replace(tmp, self.path)

  def write(self, record: dict[str, Any]) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")

  def read(self) -> list[dict[str, Any]]:
    """The records; a line cut short (a crash or a full disk mid-write) is skipped."""
    if not self.path.exists():
      return []
    records = []
    for line in self.path.read_text(errors="replace").splitlines():
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
    return [r for r in records if isinstance(r, dict)]


def _step(record: dict[str, Any]) -> float:
  step = record.get("step", 0)
  return step if isinstance(step, (int, float)) else float("inf")  # unreadable: dropped


class StopSignal:
  """While active, SIGTERM and SIGINT (Ctrl-C) set `requested` instead of killing the process.

  The training loop polls it after every step, writes a checkpoint and raises `Stopped`.
  A second SIGINT while a stop is pending aborts at once (exit status 130, no checkpoint).
  Outside the main thread (where Python cannot install handlers) it does nothing.
  """

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    self.signals, self.requested, self._old = signals, None, {}

  def __enter__(self) -> StopSignal:
    if threading.current_thread() is threading.main_thread():
      for sig in self.signals:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    if self.requested is not None and signum == signal.SIGINT:  # a second Ctrl-C
      os.write(2, b"\ninterrupted again: aborting without a checkpoint\n")
      os._exit(128 + signal.SIGINT)
    if self.requested is None and signum == signal.SIGINT:
      os.write(2, b"\nCtrl-C: finishing the step and writing a checkpoint (Ctrl-C again to "
               b"abort at once)\n")
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)
