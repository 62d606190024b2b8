"""What the mains print: quiet logs by default, a grouped --help, progress with an ETA.

    console.quiet_logs()                   # at a main's import, before TF/TFDS/orbax speak
    console.run_app(main, __doc__)         # absl app.run, with --help grouped by purpose
    for x in console.progress(items, total=n, what="evaluating"): ...

By default only jaxpretrain's own lines reach the console: absl/Python logging at ERROR,
TF_CPP_MIN_LOG_LEVEL=3 (XLA/TF C++ logs), TFDS's "Downloading and preparing dataset" banner
and progress bars off. `--verbosity=0` (INFO) or `--verbosity=-1` (WARNING) brings them back.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from absl import flags, logging

_HELP = ("--help", "-h", "-?", "--help=true", "--helpshort")
GROUP_PREFIX = "jaxpretrain.job: "  # flags.py's module_name of each group
_BAR = 24


def verbose(argv: Sequence[str] | None = None) -> bool:
  """Whether the command line asks for logs (--verbosity / -v given)."""
  argv = sys.argv if argv is None else argv
  return any(a.split("=")[0] in ("--verbosity", "-v") for a in argv[1:])


# Libraries that log through absl (so by the "absl" logger) whose lines are theirs, not ours:
# orbax logs a failed save as an ERROR with its traceback, and the job then reports the same
# failure as its one `error: ...` line (issue 17: one line, never a traceback).
QUIET_LIBRARIES = ("orbax", "etils", "tensorflow_datasets", "grain")


class _LibraryFilter(py_logging.Filter):
  """Drops absl records logged from inside QUIET_LIBRARIES (below CRITICAL)."""

  parts = tuple(f"/{name}/" for name in QUIET_LIBRARIES)

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.CRITICAL or not any(
        p in record.pathname for p in self.parts)


def quiet_logs(argv: Sequence[str] | None = None) -> None:
  """Silences library logs unless --verbosity is given; call before TF/TFDS/orbax import."""
  if verbose(argv):
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
  py_logging.getLogger().setLevel(py_logging.ERROR)
  for name in ("absl", "jax", "orbax", "tensorflow", "tensorflow_datasets", "grain"):
    py_logging.getLogger(name).setLevel(py_logging.ERROR)
  absl_logger = py_logging.getLogger("absl")
  if not any(isinstance(f, _LibraryFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_LibraryFilter())


def after_flags(tfds: bool = True) -> None:
  """In main(), once absl parsed the flags (parsing resets the absl verbosity): quiet again,
  and TFDS's banner and bars off (`tfds`: a main without datasets skips that import), unless
  --verbosity was given."""
  if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
    return
  logging.set_verbosity(logging.ERROR)
  quiet_logs([])
  if tfds:
    silence_tfds()


def missing_flags(*holders: flags.FlagHolder, hint: str = "") -> bool:
  """Prints one line naming each unset required flag; True if any is unset (main returns 2).

  absl's `required=True` is not used by any main: it registers a validator on the global FLAGS,
  so every other main parsed in the same process (the test suite, the `jaxpretrain` console
  script's sub-commands) would fail on a flag it does not have.
  """
  names = [f"--{h.name}" for h in holders if h.value in (None, "", [])]
  if names:
    print(f"error: {', '.join(names)} {'is' if len(names) == 1 else 'are'} required"
          f"{': ' + hint if hint else ''}", file=sys.stderr)
  return bool(names)


def silence_tfds() -> None:
  """TFDS prints "Downloading and preparing dataset ..." (even when nothing downloads) and
  draws progress bars: both off (imports TFDS, which the mains need anyway)."""
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415 -- slow; only in mains
    from tensorflow_datasets.core import dataset_builder  # noqa: PLC0415
  except ImportError:
    return
  tfds.disable_progress_bar()
  for cls in vars(dataset_builder).values():
    if isinstance(cls, type) and hasattr(cls, "_log_download_bytes"):
      cls._log_download_bytes = lambda self: None


def grouped_help(doc: str | None, flag_values: flags.FlagValues = flags.FLAGS,
                 groups: Mapping[str, Sequence[str]] | None = None) -> str:
  """The main's docstring, then its own flags by group (the groups flags.py defines, then
  the flags the main module defines itself, under `groups`' titles when given: title ->
  flag names, the rest under "other flags"); absl's own flags are left to --helpfull."""
  out = [(doc or "").strip(), ""]
  by_module = flag_values.flags_by_module_dict()
  main = sys.argv[0]
  names = [m for m in by_module if m.startswith(GROUP_PREFIX)]
  names += [m for m in by_module if m in (main, "__main__") or m.endswith(
      os.path.basename(main)) and not m.startswith(GROUP_PREFIX)]
  sections = []
  for module in names:
    if module.startswith(GROUP_PREFIX) or not groups:
      title = module[len(GROUP_PREFIX):] if module.startswith(GROUP_PREFIX) else "flags"
      sections.append((title, by_module[module]))  # in definition order
      continue
    own = {f.name: f for f in by_module[module]}
    named = {n for ns in groups.values() for n in ns}
    sections += [(title, [own[n] for n in ns if n in own]) for title, ns in groups.items()]
    sections.append(("other flags", [f for f in by_module[module] if f.name not in named]))
  for title, group in sections:
    if not group:
      continue
    out.append(f"{title}:")
    for flag in group:
      default = "" if flag.default is None else f" (default: {flag.default_as_str})"
      out.append(textwrap.fill(f"--{flag.name}: {flag.help}{default}", 96,
                               initial_indent="  ", subsequent_indent="      "))
    out.append("")
  out.append("--verbosity=0 shows library logs; --helpfull lists every flag, absl's too.")
  return "\n".join(out) + "\n"


def run_app(main: Callable[[list[str]], int], doc: str | None,
            groups: Mapping[str, Sequence[str]] | None = None) -> None:
  """absl's app.run, except that --help prints `grouped_help` (the main's own flags by
  group, `groups` for a main that defines its flags itself) and exits 0."""
  from absl import app  # noqa: PLC0415

  if any(a in _HELP for a in sys.argv[1:]):
    flags.FLAGS.mark_as_parsed()
    sys.stdout.write(grouped_help(doc, groups=groups))
    sys.exit(0)
  app.run(main)


def progress(items: Iterable, total: int | None, what: str, stream=None,
             every: float = 0.1) -> Iterator:
  """Yields `items`, reporting `what`'s progress with an ETA on `stream` (stderr): a redrawn
  bar on a terminal, otherwise one line per `every` of the total (and the end)."""
  stream = stream or sys.stderr
  tty = hasattr(stream, "isatty") and stream.isatty()
  t0, last, next_mark = time.perf_counter(), 0.0, every
  done = 0
  for item in items:
    yield item
    done += 1
    now = time.perf_counter()
    if not total:
      continue
    frac = min(done / total, 1.0)
    rate = done / max(now - t0, 1e-9)
    eta = _duration((total - done) / rate) if rate > 0 else "?"
    if tty and (now - last > 0.2 or done == total):
      last = now
      fill = int(_BAR * frac)
      stream.write(f"\r{what} [{'#' * fill}{'.' * (_BAR - fill)}] {done}/{total} ETA {eta}  ")
      stream.flush()
    elif not tty and (frac >= next_mark or done == total):
      next_mark = (int(frac / every) + 1) * every
      stream.write(f"{what}: {done}/{total} ({frac:.0%}), ETA {eta}\n")
      stream.flush()
  if tty and total:
    stream.write("\n")
    stream.flush()


def _duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
