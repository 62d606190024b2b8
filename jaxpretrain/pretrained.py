"""Converted checkpoints on disk: a folder with config.json and the variables saved by orbax.

    DST/
      config.json        {"format": "jaxpretrain", "model": "resnet50", "model_kwargs": {...},
                          "source": {...}, "preprocessing": {...}, "files": [...],
                          "class_names": [...]}   (classifiers; index = class id)
      variables/         orbax checkpoint of {"params": ..., "batch_stats": ...}
      tokenizer.json ... files that travel with the model (listed under "files")

Folders are written to a temporary sibling and renamed into place, so a crash or an error
never leaves a half-written DST.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from jaxpretrain import safe_io

FORMAT = "jaxpretrain"
FORMAT_VERSION = 1
CONFIG = "config.json"
VARIABLES = "variables"


def current_umask() -> int:
  """The process's umask (read by setting it and putting it back)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_folder(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[pathlib.Path]:
  """Yields a temporary folder that replaces `dst` only if the block completes."""
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
  os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the user's umask rules
  try:
    yield tmp
    if dst.exists():
      old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
      dst.rename(old)
      tmp.rename(dst)
      shutil.rmtree(old)
    else:
      tmp.rename(dst)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


def save_variables(path: str | os.PathLike, variables: Mapping[str, Any]) -> None:
  """Saves a pytree of arrays with orbax (blocking), streaming: a few arrays in memory at a time.

  The leaves may be views of memory-mapped files (a converted checkpoint: transposed views of
  the source's tensors). orbax's default NumPy handler deep-copies every array up front, then
  starts every write at once: three copies of the checkpoint in memory at the peak. Here at
  most STREAM_BYTES_IN_FLIGHT of arrays (or one larger array) are written at a time, each
  made contiguous just before its write (so that tensorstore writes from it without a copy
  of its own), and the pages of a memory-mapped source are released once written (BERT-base:
  peak RSS +0.5x the file instead of +2.9x; benchmarks/NOTES.md, attempt 2). The files are
  orbax's usual ones.
  """
  import orbax.checkpoint as ocp  # noqa: PLC0415 -- heavy import, only when writing
  from orbax.checkpoint import type_handlers  # noqa: PLC0415

  registry = type_handlers.create_type_handler_registry((np.ndarray, _streaming_handler()))
  # This process writes alone (in a multi-process run, only process 0 exports): no barrier
  # waits for the others.
  import jax  # noqa: PLC0415

  me = jax.process_index()
  alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry,
                                        multiprocessing_options=alone)
  with ocp.Checkpointer(handler, multiprocessing_options=alone) as ckptr:
    ckptr.save(pathlib.Path(path).absolute(), args=ocp.args.PyTreeSave(_to_numpy(variables)))


# Bytes of arrays being written at once: enough to overlap small writes (a ResNet has ~300
# arrays), small against any checkpoint worth streaming. One larger array goes alone.
STREAM_BYTES_IN_FLIGHT = 32 << 20


def _streaming_handler():
  """orbax's NumpyHandler without its defensive deep copy, writing a few arrays at a time.

  The save blocks and nothing mutates the arrays meanwhile, so the copy buys nothing. If this
  orbax has no `_open_and_write` to wrap, arrays are still written without the copy, all at
  once (orbax's own order).
  """
  import asyncio  # noqa: PLC0415

  from orbax.checkpoint import type_handlers  # noqa: PLC0415

  base = type_handlers.NumpyHandler
  if not hasattr(base, "_open_and_write"):
    return base(deepcopy_host_arrays=False)

  class Streaming(base):
    def __init__(self):
      super().__init__(deepcopy_host_arrays=False)
      self._room = None  # an asyncio.Condition, made in the event loop orbax writes from
      self._in_flight = 0

    async def _open_and_write(self, value, tspec, ts_context):
      if self._room is None:
        self._room = asyncio.Condition()
      async with self._room:
        await self._room.wait_for(
            lambda: not self._in_flight
            or self._in_flight + value.nbytes <= STREAM_BYTES_IN_FLIGHT)
        self._in_flight += value.nbytes
      try:
        # order="C", not ascontiguousarray, which makes 0-d arrays (CLIP's logit_scale) 1-d.
        await super()._open_and_write(np.asarray(value, order="C"), tspec, ts_context)
        _release_mapped_pages(value)
      finally:
        async with self._room:
          self._in_flight -= value.nbytes
          self._room.notify_all()

  return Streaming()


def _release_mapped_pages(array: np.ndarray) -> None:
  """Drops the resident pages of the read-only memory map under `array`, if it has one.

  A read-only file mapping reads them back from the file if they are touched again, so this
  frees memory without changing any value. Arrays not backed by such a map are left alone.
  """
  import mmap  # noqa: PLC0415

  base = array
  while base is not None and not isinstance(base, np.memmap):
    base = getattr(base, "base", None)
  mm = getattr(base, "_mmap", None)
  if isinstance(mm, mmap.mmap) and base.mode == "r" and hasattr(mm, "madvise"):
    with contextlib.suppress(OSError, ValueError):
      mm.madvise(mmap.MADV_DONTNEED)


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Restores a pytree saved by `save_variables` as NumPy arrays."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(pathlib.Path(path).absolute())


def _to_numpy(tree):
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def save_pretrained(dst: str | os.PathLike, model: str, model_kwargs: Mapping[str, Any],
                    variables: Mapping[str, Any], *, source: Mapping[str, Any] | None = None,
                    preprocessing: Mapping[str, Any] | None = None,
                    files: Mapping[str, str | os.PathLike] | None = None,
                    overwrite: bool = False,
                    class_names: Sequence[str] | None = None) -> pathlib.Path:
  """Writes a checkpoint folder atomically.

  Args:
    dst: the folder to create.
    model: registry name (e.g. 'resnet50', 'bert', 'vit').
    model_kwargs: constructor arguments, JSON-serializable.
    variables: {'params': ..., 'batch_stats': ...} nested dicts of arrays.
    source: provenance (format, original file, original config), kept for export.
    preprocessing: what inputs the model expects (mean/std/image_size, max_len...).
    files: name in dst -> existing file to copy, or its bytes (tokenizer.json, vocab.txt...);
      names are plain file names.
    overwrite: replace an existing dst.
    class_names: a classifier's class names, index = class id (one per head output).
  Returns:
    The path of the folder.
  """
  config = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "model": model,
      "model_kwargs": dict(model_kwargs), "source": dict(source or {}),
      "preprocessing": dict(preprocessing or {}), "files": sorted(files or {}),
  }
  if class_names is not None:
    config["class_names"] = [str(c) for c in class_names]
  with atomic_folder(dst, overwrite) as tmp:
    (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name, src in (files or {}).items():
      safe_io.plain_name(name, f"{dst}: files")
      if isinstance(src, bytes):
        (tmp / name).write_bytes(src)
      else:
        shutil.copyfile(src, tmp / name)
    save_variables(tmp / VARIABLES, variables)
  return pathlib.Path(dst)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
  """config.json of a converted checkpoint, checked for the jaxpretrain format.

  A checkpoint folder may come from anyone, so the file is read through jaxpretrain.safe_io
  (a regular file inside the folder, at most MAX_CONFIG_BYTES, strict JSON) and every field
  used later is checked here (`check_config`): errors are one UntrustedInputError (a
  ValueError) naming the file and field.
  """
  path = pathlib.Path(path)
  cfg_path = path / CONFIG
  if not os.path.lexists(cfg_path):
    raise FileNotFoundError(
        f"{path} is not a jaxpretrain checkpoint (no {CONFIG}); convert a torchvision file or a "
        "Hugging Face folder first: python -m ports.convert SRC DST")
  real = safe_io.resolve_inside(path, CONFIG)
  config = safe_io.read_json(real, safe_io.MAX_CONFIG_BYTES, where=str(cfg_path))
  if not isinstance(config, dict) or config.get("format") != FORMAT:
    raise safe_io.UntrustedInputError(
        f"{cfg_path}: not a jaxpretrain checkpoint config (format != '{FORMAT}'); convert it "
        "first: python -m ports.convert SRC DST")
  check_config(config, str(cfg_path))
  return config


# Longest class name read from a checkpoint (a label is a word or a phrase, not a document).
MAX_CLASS_NAME_CHARS = 1000


def read_class_names(config: Mapping[str, Any], where: str = "config.json") -> list[str] | None:
  """A checkpoint's class names (index = class id), checked; None when it records none.

  `class_names` at the top of config.json; runs exported before it existed kept them under
  `preprocessing`. Untrusted: must be a list of strings.
  """
  names = config.get("class_names")
  if names is None:
    names = (config.get("preprocessing") or {}).get("class_names")
  if names is None:
    return None
  if not isinstance(names, list) or not all(
      isinstance(c, str) and len(c) <= MAX_CLASS_NAME_CHARS for c in names):
    raise ValueError(f"{where}: class_names must be a list of strings of at most "
                     f"{MAX_CLASS_NAME_CHARS} characters; got {str(names)[:120]}")
  return list(names)


# Files listed under "files" (tokenizer.json, vocab.txt...; real ones list <= 7).
MAX_FILES = 64
# Items of a list-valued model kwarg (ResNet's stage_sizes has 4).
MAX_KWARG_ITEMS = 64


def check_config(config: Mapping[str, Any], where: str) -> None:
  """Raises UntrustedInputError unless a checkpoint config's fields have their kinds and ranges.

  model: a name; model_kwargs: constructor arguments whose sizes lie within safe_io.FIELDS'
  ranges, scalars or short lists; files: plain file names (no '/', '..'); preprocessing: sizes
  and per-channel mean/std checked, and no "*path" field (a checkpoint never names a path to
  read); source: an object.
  """
  err = safe_io.UntrustedInputError
  version = config.get("format_version", 0)
  if not (isinstance(version, int) and not isinstance(version, bool) and version >= 0):
    raise err(f"{where}: format_version={safe_io.short(version)}; allowed: an integer >= 0")
  if version > FORMAT_VERSION:
    raise err(f"{where}: format_version {version} is newer than this jaxpretrain reads "
              f"({FORMAT_VERSION}); upgrade jaxpretrain")
  model = config.get("model")
  if not (isinstance(model, str) and 0 < len(model) <= safe_io.MAX_STR_CHARS):
    raise err(f"{where}: model={safe_io.short(model)}; allowed: a model name (string)")
  for field in ("model_kwargs", "source", "preprocessing"):
    if not isinstance(config.get(field, {}), dict):
      raise err(f"{where}: {field}={safe_io.short(config[field])}; allowed: an object")
  kwargs = config.get("model_kwargs", {})
  safe_io.check_fields(kwargs, f"{where}: model_kwargs", err)
  for key, value in kwargs.items():
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_KWARG_ITEMS or not all(
        v is None or isinstance(v, (bool, int, float, str)) for v in items):
      raise err(f"{where}: model_kwargs.{safe_io.short(key)}={safe_io.short(value)}; allowed: "
                f"a number, string, bool, null or a list of at most {MAX_KWARG_ITEMS} of them")
  _check_preprocessing(config.get("preprocessing", {}), f"{where}: preprocessing")
  files = config.get("files", [])
  if not isinstance(files, list) or len(files) > MAX_FILES:
    raise err(f"{where}: files={safe_io.short(files)}; allowed: a list of at most {MAX_FILES} "
              "file names")
  for name in files:
    safe_io.plain_name(name, f"{where}: files", err)


def _check_preprocessing(prep: Mapping[str, Any], where: str) -> None:
  err = safe_io.UntrustedInputError
  safe_io.check_fields(prep, where, err)
  for key, value in prep.items():
    if key == "path" or key.endswith("_path"):
      raise err(f"{where}: field {safe_io.short(key)}: a checkpoint never names a path to read")
    if key in ("mean", "std") and not (
        isinstance(value, list) and 1 <= len(value) <= 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in value)):
      raise err(f"{where}: {key}={safe_io.short(value)}; allowed: a list of 1-4 finite numbers")
    if key in ("scale", "rescale") and not (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and value > 0):
      raise err(f"{where}: {key}={safe_io.short(value)}; allowed: a positive finite number")


def load_pretrained(path: str | os.PathLike):
  """The public way to load a converted checkpoint.

  Returns:
    (model, variables): a Flax module and its variables, so that
    `out, aux = model.apply(variables, x, train=False)`.
  """
  from jaxpretrain import models  # noqa: PLC0415

  config = read_config(path)
  model = models.build_model(config["model"], **config["model_kwargs"])
  variables = load_variables(pathlib.Path(path) / VARIABLES)
  return model, variables
