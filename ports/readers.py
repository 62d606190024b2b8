"""Reading checkpoints from strangers: safetensors (validated, no torch) and pickles (weights only).

Safetensors files are checked before any large allocation: the header size against the file,
the JSON, every dtype and shape, and every byte range (inside the data, exactly the bytes the
shape needs, no overlaps). Tensors are then memory-mapped, so conversion streams from disk.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np

from ports.rules import PortError

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own reader refuses larger headers too
SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


class CheckpointError(PortError):
  """A checkpoint file is unreadable, corrupt, truncated or unsafe; the message names it."""


class SafetensorsFile(Mapping):
  """A validated, memory-mapped safetensors file: a read-only mapping key -> np.ndarray."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self.metadata, self._entries, self._data_start = _read_safetensors_header(self.path)

  def __getitem__(self, key: str) -> np.ndarray:
    dtype, shape, (begin, end) = self._entries[key]
    if end == begin:
      return np.zeros(shape, dtype)
    mm = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start + begin,
                   shape=(end - begin,))
    return mm.view(dtype).reshape(shape)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._entries[key][1]

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)


def _read_safetensors_header(path: pathlib.Path):
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, no header size)")
      (n,) = struct.unpack("<Q", head)
      if n > MAX_HEADER_BYTES or n > size - 8:
        raise CheckpointError(
            f"{path}: safetensors header declares {n} bytes but the file has {size - 8} after "
            f"the size field (limit {MAX_HEADER_BYTES}); the file is truncated or corrupt")
      raw = f.read(n)
  except OSError as e:
    raise CheckpointError(f"{path}: cannot read: {e}") from None
  try:
    header = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: safetensors header is not valid JSON: {e}") from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: safetensors header is not a JSON object")
  metadata = header.pop("__metadata__", {}) or {}
  data_len = size - 8 - n
  entries, ranges = {}, []
  for key, info in header.items():
    entries[key] = _validate_entry(path, key, info, data_len)
    ranges.append((*entries[key][2], key))
  ranges.sort()
  for (_b0, e0, k0), (b1, _e1, k1) in zip(ranges, ranges[1:], strict=False):
    if b1 < e0:
      raise CheckpointError(f"{path}: tensors '{k0}' and '{k1}' overlap in the data")
  return metadata, entries, 8 + n


def _validate_entry(path, key, info, data_len):
  if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
    raise CheckpointError(f"{path}: tensor '{key}' lacks dtype, shape or data_offsets")
  dtype = SAFETENSORS_DTYPES.get(info["dtype"])
  if dtype is None:
    raise CheckpointError(f"{path}: tensor '{key}' has unsupported dtype {info['dtype']!r}; "
                          f"known: {sorted(SAFETENSORS_DTYPES)}")
  shape, offsets = info["shape"], info["data_offsets"]
  if (not isinstance(shape, list) or len(shape) > 8
      or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                 for d in shape)):
    raise CheckpointError(f"{path}: tensor '{key}' has an invalid shape {shape!r}")
  if (not isinstance(offsets, list) or len(offsets) != 2
      or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
      or not 0 <= offsets[0] <= offsets[1] <= data_len):
    raise CheckpointError(f"{path}: tensor '{key}' has offsets {offsets!r} outside the "
                          f"{data_len} data bytes; the file is truncated or corrupt")
  nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
  if offsets[1] - offsets[0] != nbytes:
    raise CheckpointError(f"{path}: tensor '{key}' of shape {shape} {info['dtype']} needs "
                          f"{nbytes} bytes but its offsets span {offsets[1] - offsets[0]}")
  return dtype, tuple(shape), tuple(offsets)


def load_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A torch .pth/.pt/.bin file loaded with weights_only=True (no code runs), as NumPy.

  Accepts a bare state dict, a {'state_dict': ...} or {'model': ...} wrapper, and strips a
  DataParallel 'module.' prefix.
  """
  path = pathlib.Path(path)
  try:
    import torch  # noqa: PLC0415 -- torch only for pickled checkpoints
  except ImportError:
    raise CheckpointError(
        f"{path}: pickled checkpoints need torch (pip install 'jaxpretrain[torch]'), or "
        "convert them to .safetensors first") from None
  import pickle  # noqa: PLC0415
  import zipfile  # noqa: PLC0415

  try:
    # mmap streams tensors from disk, but only the zip format (torch >= 1.6) supports it.
    obj = torch.load(path, map_location="cpu", weights_only=True,
                     mmap=zipfile.is_zipfile(path))
  except pickle.UnpicklingError as e:
    raise CheckpointError(
        f"{path}: refused: the pickle needs more than tensors, and loading it would run code "
        f"from the file (torch.load weights_only=True rejected it: {str(e).splitlines()[0]})"
    ) from None
  except (RuntimeError, EOFError, OSError, ValueError) as e:
    raise CheckpointError(f"{path}: cannot read as a torch checkpoint: {e}") from None
  for wrapper in ("state_dict", "model", "model_state_dict"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
      break
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise CheckpointError(f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor")
    key = key.removeprefix("module.")
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
      out[key] = value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
      out[key] = value.numpy()
  return out


def load_state_dict(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
  """A single weights file: .safetensors (no torch) or a torch pickle (weights only)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: no such file")
  if path.suffix == ".safetensors":
    sf = SafetensorsFile(path)
    if any(k.startswith("module.") for k in sf):
      return {k.removeprefix("module."): sf[k] for k in sf}
    return sf
  return load_pickle(path)


class ShardedTensors(Mapping):
  """Several weights files seen as one mapping, as a *.index.json weight_map lists them."""

  def __init__(self, index_path: pathlib.Path):
    try:
      index = json.loads(index_path.read_text())
      weight_map = index["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index_path}: not a valid shard index: {e}") from None
    folder = index_path.parent
    missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
    if missing:
      raise CheckpointError(f"{index_path}: missing shard file(s): {', '.join(missing)}")
    self._files = {f: None for f in sorted(set(weight_map.values()))}
    self._folder = folder
    self._map = dict(weight_map)
    for f in self._files:  # validate every shard's header up front
      self._files[f] = load_state_dict(folder / f)
      absent = sorted(k for k, v in self._map.items() if v == f and k not in self._files[f])
      if absent:
        raise CheckpointError(f"{folder / f}: lacks key(s) the index assigns to it: {absent[:5]}")

  def __getitem__(self, key):
    return self._files[self._map[key]][key]

  def __iter__(self):
    return iter(self._map)

  def __len__(self):
    return len(self._map)


def load_hf_folder(folder: str | os.PathLike) -> tuple[dict, Mapping[str, np.ndarray]]:
  """A Hugging Face model folder -> (config.json as a dict, weights mapping).

  Weights are looked for in this order: model.safetensors, model.safetensors.index.json
  (sharded), pytorch_model.bin, pytorch_model.bin.index.json.
  """
  folder = pathlib.Path(folder)
  cfg_path = folder / "config.json"
  try:
    config = json.loads(cfg_path.read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{folder}: no config.json; not a Hugging Face model folder") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_path}: invalid JSON: {e}") from None
  if not isinstance(config, dict):
    raise CheckpointError(f"{cfg_path}: not a JSON object")
  for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json"):
    path = folder / name
    if path.is_file():
      return config, (ShardedTensors(path) if name.endswith(".json") else load_state_dict(path))
  raise CheckpointError(f"{folder}: no weights (model.safetensors, its index, or "
                        "pytorch_model.bin)")


def save_safetensors(arrays: Mapping[str, np.ndarray], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
  """Writes arrays as safetensors (torch 'pt' format metadata, so transformers accepts it)."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  # np.asarray(order="C"), not np.ascontiguousarray, which turns 0-d tensors (BatchNorm's
  # num_batches_tracked) into shape [1] and breaks torch's load_state_dict.
  save_file({k: np.asarray(v, order="C") for k, v in arrays.items()}, str(path),
            metadata={"format": "pt", **(metadata or {})})
