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
  """Saves a pytree of arrays with orbax (blocking)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415 -- heavy import, only when writing

  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(pathlib.Path(path).absolute(), _to_numpy(variables))


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
