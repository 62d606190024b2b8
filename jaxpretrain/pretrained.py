"""Converted checkpoints on disk: a folder with config.json and the variables saved by orbax.

    DST/
      config.json        {"format": "jaxpretrain", "model": "resnet50", "model_kwargs": {...},
                          "source": {...}, "preprocessing": {...}, "files": [...]}
      variables/         orbax checkpoint of {"params": ..., "batch_stats": ...}
      tokenizer.json ... files that travel with the model (listed under "files")

Folders are written to a temporary sibling and renamed into place, so a crash or an error
never leaves a half-written DST.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

FORMAT = "jaxpretrain"
FORMAT_VERSION = 1
CONFIG = "config.json"
VARIABLES = "variables"


@contextlib.contextmanager
def atomic_folder(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[pathlib.Path]:
  """Yields a temporary folder that replaces `dst` only if the block completes."""
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
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
  handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry)
  with ocp.Checkpointer(handler) as ckptr:
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
                    overwrite: bool = False) -> pathlib.Path:
  """Writes a checkpoint folder atomically.

  Args:
    dst: the folder to create.
    model: registry name (e.g. 'resnet50', 'bert', 'vit').
    model_kwargs: constructor arguments, JSON-serializable.
    variables: {'params': ..., 'batch_stats': ...} nested dicts of arrays.
    source: provenance (format, original file, original config), kept for export.
    preprocessing: what inputs the model expects (mean/std/image_size, max_len...).
    files: name in dst -> existing file to copy (tokenizer.json, vocab.txt...).
    overwrite: replace an existing dst.
  Returns:
    The path of the folder.
  """
  config = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "model": model,
      "model_kwargs": dict(model_kwargs), "source": dict(source or {}),
      "preprocessing": dict(preprocessing or {}), "files": sorted(files or {}),
  }
  with atomic_folder(dst, overwrite) as tmp:
    (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name, src in (files or {}).items():
      shutil.copyfile(src, tmp / name)
    save_variables(tmp / VARIABLES, variables)
  return pathlib.Path(dst)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
  """config.json of a converted checkpoint, checked for the jaxpretrain format."""
  path = pathlib.Path(path)
  cfg_path = path / CONFIG
  try:
    config = json.loads(cfg_path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{path} is not a jaxpretrain checkpoint (no {CONFIG}); convert a torchvision file or a "
        "Hugging Face folder first: python -m ports.convert SRC DST") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path}: invalid JSON: {e}") from None
  if not isinstance(config, dict) or config.get("format") != FORMAT:
    raise ValueError(f"{cfg_path}: not a jaxpretrain checkpoint config (format != '{FORMAT}'); "
                     "convert it first: python -m ports.convert SRC DST")
  if config.get("format_version", 0) > FORMAT_VERSION:
    raise ValueError(f"{cfg_path}: format_version {config['format_version']} is newer than this "
                     f"jaxpretrain reads ({FORMAT_VERSION}); upgrade jaxpretrain")
  return config


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
