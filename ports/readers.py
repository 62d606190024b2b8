"""Reading checkpoints from strangers: safetensors (validated, no torch) and pickles (weights only).

Every file goes through one validating layer (jaxpretrain.safe_io): names from a checkpoint
(shard files in an index) are plain names resolving to regular files inside the folder (or a
Hugging Face cache's blob store), side files are size-capped strict JSON, and every failure is
a CheckpointError naming the file.

Safetensors files are validated as the official reader validates them, before any large
allocation: the header size against the file and MAX_HEADER_BYTES, the JSON (an object of
tensor objects and an optional `__metadata__` of strings), every dtype and shape, and the
byte ranges, which must tile the data region exactly (sorted, starting at 0, no gaps or
overlaps, ending at the file's end: a header length nudged into the header's padding shifts
every tensor, and only this catches it). The official `safetensors` parser then reads the same
header as a second opinion, so no file it rejects is ever read. Tensors are memory-mapped, so
conversion streams from disk.

Torch pickles are loaded with weights_only=True, after their pickles are scanned without
running them (pickletools): the storages they declare (element count x element size) must fit
the file, since torch allocates each declared storage before reading its bytes. Legacy
(non-zip) files: the sum must fit in the bytes after the pickles; zip archives: every member's
sizes must be possible (safe_io.check_zip) and each storage's data/<key> record must be stored
and hold exactly its declared bytes.
"""

from __future__ import annotations

import io
import math
import os
import pathlib
import pickletools
import struct
import zipfile
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np

from jaxpretrain import safe_io
from jaxpretrain.safe_io import short
from ports.rules import PortError

# The header is ~100 bytes per tensor (all-MiniLM-L6-v2: 104 tensors in 11,408 bytes; BERT-base
# ~200 tensors, ~20 KB); 16 MiB admits ~160,000 tensors in one file, more than any real
# checkpoint holds, and bounds what parsing a hostile header may cost (the official reader
# allows 100 MB: a 100 MiB header took 2.6 GB to parse in Python).
MAX_HEADER_BYTES = 16 << 20
# Tensor rank: the ported models' tensors have rank <= 4; the format sets no limit.
MAX_RANK = 8
# Dtypes this reader maps to NumPy.
SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
# Dtypes the format defines (safetensors 0.8, tensor.rs `Dtype`) that no port converts.
OTHER_SAFETENSORS_DTYPES = ("F4", "F6_E2M3", "F6_E3M2", "F8_E5M2", "F8_E4M3", "F8_E8M0",
                            "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64")
# Bytes of a pickle scanned (the names it imports, the storages it declares) before torch reads
# it: a torch zip's data.pkl, or a legacy file's leading pickles. Real ones hold ~100 bytes per
# tensor (ResNet-50: 30 KB), so a longer pickle is refused rather than read unchecked.
MAX_PICKLE_SCAN_BYTES = 16 << 20
# Bytes per element of the storage classes a torch pickle names (torch.FloatStorage, ...): a
# declared storage costs torch its element count times this. A class not listed counts one
# byte per element, a lower bound (the weights-only unpickler refuses it anyway).
STORAGE_ITEMSIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "QInt8Storage": 1,
    "QUInt8Storage": 1, "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
    "UntypedStorage": 1,
}
# Pickles in a legacy (non-zip) torch file: magic number, protocol, sys info, the data (which
# declares the storages) and the list of storage keys; the raw storages follow, each an 8-byte
# element count and its bytes.
LEGACY_PICKLES = 5


class CheckpointError(PortError):
  """A checkpoint file is unreadable, corrupt, truncated or unsafe; the message names it."""


class SafetensorsFile(Mapping):
  """A validated, memory-mapped safetensors file: a read-only mapping key -> np.ndarray.

  Args:
    path: the file as the user or the folder names it (used in messages, as `.path`).
    real_path: the file to open when `path` is a link already resolved and checked by the
      caller (a Hugging Face cache blob); default `path`.
  """

  def __init__(self, path: str | os.PathLike, *, real_path: str | os.PathLike | None = None):
    self.path = pathlib.Path(path)
    real = os.path.realpath(real_path if real_path is not None else path)
    self._file = safe_io.open_regular(real, CheckpointError, where=str(self.path))
    try:
      self.metadata, self._entries, self._data_start = _read_safetensors_header(
          self._file, self.path)
      _official_check(real, self.path)
    except BaseException:
      self._file.close()
      raise

  def __getitem__(self, key: str) -> np.ndarray:
    dtype, shape, (begin, end) = self._entries[key]
    if end == begin:
      return np.zeros(shape, dtype)
    # Mapped from the validated file's descriptor, never reopened by name.
    mm = np.memmap(self._file, dtype=np.uint8, mode="r", offset=self._data_start + begin,
                   shape=(end - begin,))
    return mm.view(dtype).reshape(shape)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._entries[key][1]

  def close(self) -> None:
    """Closes the file; arrays already returned stay valid (each holds its own mapping)."""
    self._file.close()

  def __del__(self):
    if getattr(self, "_file", None) is not None:
      self._file.close()

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)


def _read_safetensors_header(f, path: pathlib.Path):
  """(metadata, {key: (dtype, shape, (begin, end))}, data start) of an open file, validated."""
  try:
    size = os.fstat(f.fileno()).st_size
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
    raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
  if len(raw) != n:
    raise CheckpointError(f"{path}: the file shrank while being read")
  header = safe_io.parse_json(raw, f"{path}: safetensors header", CheckpointError, strict=True)
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: safetensors header is a {type(header).__name__}, not a JSON "
                          "object of tensors")
  metadata = header.pop("__metadata__", None)
  if metadata is None:
    metadata = {}
  if not (isinstance(metadata, dict)
          and all(isinstance(v, str) for v in metadata.values())):
    raise CheckpointError(f"{path}: safetensors __metadata__ {short(metadata)} is not an object "
                          "of strings")
  data_len = size - 8 - n
  entries = {key: _validate_entry(path, key, info, data_len) for key, info in header.items()}
  _check_coverage(path, entries, data_len)
  return metadata, entries, 8 + n


def _is_u64(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**64


def _validate_entry(path, key, info, data_len):
  """(dtype, shape, offsets) of one header entry, checked as the official reader checks it."""
  if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
    raise CheckpointError(f"{path}: tensor {short(key)} lacks dtype, shape or data_offsets")
  name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
  dtype = SAFETENSORS_DTYPES.get(name) if isinstance(name, str) else None
  if dtype is None:
    known = ("a safetensors dtype no port converts" if name in OTHER_SAFETENSORS_DTYPES
             else "not a safetensors dtype")
    raise CheckpointError(f"{path}: tensor {short(key)} has unsupported dtype {short(name)} "
                          f"({known}); supported: {sorted(SAFETENSORS_DTYPES)}")
  if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(map(_is_u64, shape)):
    raise CheckpointError(f"{path}: tensor {short(key)} has an invalid shape {short(shape)} "
                          f"(a list of at most {MAX_RANK} non-negative integers)")
  if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_u64, offsets))
          and offsets[0] <= offsets[1] <= data_len):
    raise CheckpointError(f"{path}: tensor {short(key)} has offsets {short(offsets)} outside the "
                          f"{data_len} data bytes; the file is truncated or corrupt")
  nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
  if offsets[1] - offsets[0] != nbytes:
    raise CheckpointError(f"{path}: tensor {short(key)} of shape {short(shape)} {name} needs "
                          f"{nbytes} bytes but its offsets span {offsets[1] - offsets[0]}")
  return dtype, tuple(shape), tuple(offsets)


def _check_coverage(path, entries, data_len):
  """The tensors' byte ranges, sorted, tile [0, data_len) exactly: no gap, overlap or tail."""
  end, prev = 0, None
  for key, (_, _, (b, e)) in sorted(entries.items(), key=lambda kv: kv[1][2]):
    if b != end:
      what = (f"overlaps '{short(prev)}'" if b < end else
              f"leaves a gap of {b - end} bytes after {short(prev) if prev else 'the header'}")
      raise CheckpointError(f"{path}: tensor {short(key)} at bytes {b}-{e} {what}; the tensors "
                            "must cover the data exactly (a corrupt or shifted file)")
    end, prev = e, key
  if end != data_len:
    raise CheckpointError(
        f"{path}: the tensors cover {end} of the {data_len} data bytes; the header size or the "
        "offsets are wrong (a shifted or padded file), so every tensor would be misread")


def _official_check(real: str, path: pathlib.Path) -> None:
  """The `safetensors` package's own parser must accept the file too."""
  try:
    from safetensors import safe_open  # noqa: PLC0415
  except ImportError:  # a dependency; without it this reader's own checks stand alone
    return
  try:
    with safe_open(real, framework="numpy") as f:
      f.keys()
  except Exception as e:  # noqa: BLE001 -- any refusal by the reference parser is one error
    raise CheckpointError(f"{path}: the safetensors library rejects the file: "
                          f"{short(str(e), 200)}") from None


# torch dtypes a pickled tensor may have: those NumPy holds (bfloat16 through ml_dtypes).
# Quantized (qint8...), float8, complex, sparse and meta tensors are refused by name.
PICKLE_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                 "uint8", "bool")


def load_pickle(path: str | os.PathLike, *, real_path: str | os.PathLike | None = None
                ) -> dict[str, np.ndarray]:
  """A torch .pth/.pt/.bin file loaded with weights_only=True (no code runs), as NumPy.

  Accepts a bare state dict, a {'state_dict': ...} or {'model': ...} wrapper, and strips a
  DataParallel 'module.' prefix. Only dense CPU tensors of PICKLE_DTYPES are accepted.
  """
  path = pathlib.Path(path)
  real = os.path.realpath(real_path if real_path is not None else path)
  with safe_io.open_regular(real, CheckpointError, where=str(path)) as f:
    magic = f.read(4)
  is_zip = zipfile.is_zipfile(real)
  if not is_zip and not (len(magic) >= 2 and magic[0] == 0x80 and 2 <= magic[1] <= 5):
    raise CheckpointError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle; "
                          f"it starts with {magic!r})")
  try:
    import torch  # noqa: PLC0415 -- torch only for pickled checkpoints
  except ImportError:
    raise CheckpointError(
        f"{path}: pickled checkpoints need torch (pip install 'jaxpretrain[torch]'), or "
        "convert them to .safetensors first") from None
  _check_storages(path, real, is_zip)
  try:
    # mmap streams tensors from disk, but only the zip format (torch >= 1.6) supports it.
    obj = torch.load(real, map_location="cpu", weights_only=True, mmap=is_zip)
  except Exception as e:  # noqa: BLE001 -- any failure to unpickle a stranger's file is one error
    raise _pickle_refusal(path, real, is_zip, e) from None
  for wrapper in ("state_dict", "model", "model_state_dict"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
      break
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  out = {}
  for key, value in obj.items():
    if not isinstance(key, str):
      raise CheckpointError(f"{path}: key {short(key)} is a {type(key).__name__}, not a string")
    out[key.removeprefix("module.")] = _tensor_to_numpy(path, key, value, torch)
  return out


def _tensor_to_numpy(path, key: str, value, torch) -> np.ndarray:
  """A dense CPU tensor of PICKLE_DTYPES as NumPy; anything else is refused by name."""
  if not isinstance(value, torch.Tensor):
    raise CheckpointError(f"{path}: entry {short(key)} is a {type(value).__name__}, not a tensor")
  dtype = str(value.dtype).removeprefix("torch.")
  problem = None
  if value.layout != torch.strided:
    problem = f"a {str(value.layout).removeprefix('torch.')} tensor (only dense ones are read)"
  elif value.device.type != "cpu":
    problem = f"a tensor on device '{value.device.type}' (it holds no data)"
  elif value.is_quantized or dtype not in PICKLE_DTYPES:
    problem = f"a {dtype} tensor; supported dtypes: {', '.join(PICKLE_DTYPES)}"
  if problem:
    raise CheckpointError(f"{path}: entry {short(key)} is {problem}")
  value = value.detach()
  if value.dtype == torch.bfloat16:
    return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return value.numpy()


def _pickle_refusal(path, real, is_zip: bool, error: Exception) -> CheckpointError:
  """Why torch.load refused a file: a pickle that imports code, or a corrupt file."""
  imports = _pickle_imports(real, is_zip)
  reason = str(error).strip().splitlines()
  reason = short(next((line for line in reason if "GLOBAL" in line or "operand" in line),
                      reason[0] if reason else type(error).__name__), 160)
  unsafe = [n for n in imports or () if not n.startswith(("torch.", "collections.OrderedDict"))]
  if unsafe:
    return CheckpointError(
        f"{path}: refused: the pickle needs more than tensors ({', '.join(unsafe[:3])}), and "
        f"loading it would run code from the file (torch.load weights_only=True: {reason})")
  if imports is None:
    return CheckpointError(f"{path}: not a readable torch checkpoint (corrupt or not a pickle: "
                           f"{reason})")
  return CheckpointError(f"{path}: cannot read as a torch checkpoint: {reason}")


def _pickle_imports(real, is_zip: bool) -> list[str] | None:
  """The names the file's pickles import (GLOBAL, STACK_GLOBAL, INST), without running any.

  None when the bytes are not a pickle stream. Reads at most MAX_PICKLE_SCAN_BYTES: a torch
  zip's data.pkl, or the leading pickles of the legacy format (magic, version, info, data).
  """
  try:
    if is_zip:
      with zipfile.ZipFile(real) as z:
        member = _data_pkl(z)
        if member is None:
          return None
        with z.open(member) as m:
          data = m.read(MAX_PICKLE_SCAN_BYTES)
    else:
      with open(real, "rb") as f:
        data = f.read(min(MAX_PICKLE_SCAN_BYTES, os.fstat(f.fileno()).st_size))
  except Exception:  # noqa: BLE001 -- a corrupt archive is reported by the caller
    return None
  scan = _PickleScan(data, 1 if is_zip else LEGACY_PICKLES)
  if scan.failed and not scan.names:
    return None
  return scan.names


def _data_pkl(z: zipfile.ZipFile) -> zipfile.ZipInfo | None:
  """The archive's data.pkl as torch finds it: under the first record's folder."""
  infos = z.infolist()
  if not infos:
    return None
  folder = infos[0].filename.split("/")[0]
  try:
    return z.getinfo(f"{folder}/data.pkl")
  except KeyError:
    return next((i for i in infos if i.filename.endswith("data.pkl")), None)


class _Opaque:
  """A value the scan does not compute (the result of a call, a list, a dict)."""

  def __repr__(self):
    return "<a computed value>"


_OPAQUE = _Opaque()
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_KINDS = {"MARK": "mark", "PUT": "put", "BINPUT": "put", "LONG_BINPUT": "put",
          "MEMOIZE": "memoize", "GET": "get", "BINGET": "get", "LONG_BINGET": "get",
          "GLOBAL": "global", "INST": "global", "STACK_GLOBAL": "stack_global",
          "TUPLE": "tuple", "TUPLE1": "tuple", "TUPLE2": "tuple", "TUPLE3": "tuple",
          "BINPERSID": "persid", "DUP": "dup", **dict.fromkeys(_CONSTANTS, "constant")}


def _op_table() -> dict:
  """{opcode name: (kind, pops to a mark, items taken (under the mark if it does), pushes)}."""
  table = {}
  for op in pickletools.opcodes:
    before, mark = op.stack_before, pickletools.markobject
    kind = _KINDS.get(op.name)
    if kind is None:
      literal = not before and len(op.stack_after) == 1 and op.arg is not None
      kind = "literal" if literal and op.name != "PERSID" else "other"
    taken = before.index(mark) if mark in before else len(before)
    table[op.name] = (kind, mark in before, taken, len(op.stack_after))
  return table


_OPS = _op_table()


class _PickleScan:
  """What a stream of pickles declares, read with pickletools.genops (nothing runs).

  The stack is followed just enough to know the literals (strings, ints, None, tuples of them,
  imported names) each persistent id is built from, so a torch storage id
  ('storage', torch.FloatStorage, key, location, numel, ...) is known without unpickling it;
  anything computed is opaque. Linear in the pickle's length (marks are kept apart, as
  pickle's own metastack).

  names: the imported names (GLOBAL, STACK_GLOBAL, INST). storages: {key: (class name, numel)},
  the first declaration of each key (torch allocates for that one). pickles: how many ended
  (STOP); end: the offset where the scan stopped; failed: the bytes stopped being a pickle.
  """

  def __init__(self, data: bytes, count: int):
    self.names: list[str] = []
    self.storages: dict = {}
    self.pickles, self.end, self.failed = 0, 0, False
    stream = io.BytesIO(data)
    try:
      while self.pickles < count and stream.tell() < len(data):
        stack, marks, memo = [], [], {}
        for op, arg, _pos in pickletools.genops(stream):
          self._step(op.name, arg, stack, marks, memo)
        self.pickles += 1
        self.end = stream.tell()
    except Exception:  # noqa: BLE001 -- pickletools raises ValueError (and others) on junk
      self.failed, self.end = True, stream.tell()

  def _step(self, name: str, arg, stack: list, marks: list, memo: dict) -> None:
    kind, to_mark, taken, pushed = _OPS[name]
    if kind == "mark":
      marks.append(len(stack))
      return
    if kind in ("put", "memoize"):
      memo[arg if kind == "put" else len(memo)] = stack[-1] if stack else _OPAQUE
      return
    if to_mark:
      at = min(marks.pop() if marks else 0, len(stack))
      items = stack[at:]
      del stack[max(at - taken, 0):]  # the slice, the mark, and what it sits on
    elif taken:
      items = [_OPAQUE] * (taken - len(stack)) + stack[-taken:]
      del stack[-taken:]
    else:
      items = []
    value = _OPAQUE
    if kind == "literal":
      value = arg  # an int, float, str or bytes
    elif kind == "get":
      value = memo.get(arg, _OPAQUE)
    elif kind == "constant":
      value = _CONSTANTS[name]
    elif kind == "tuple":
      value = tuple(items)
    elif kind == "global":
      value = str(arg).replace(" ", ".")
      self.names.append(value)
    elif kind == "stack_global":
      known = all(isinstance(v, str) for v in items)
      value = ".".join(items) if known else _OPAQUE
      self.names.append(value if known else "?")
    elif kind == "persid":
      self._persistent_id(items[0])
    elif kind == "dup":
      stack.extend(items * 2)
      return
    if pushed:
      stack.append(value)
      if pushed > 1:
        stack.extend([_OPAQUE] * (pushed - 1))

  def _persistent_id(self, pid) -> None:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
      return
    _, storage_class, key, _location, numel = pid[:5]
    if not isinstance(key, (str, bytes, int)):  # torch keys by value; unknown ones count apart
      key = (_OPAQUE, len(self.storages))
    self.storages.setdefault(key, (storage_class, numel))


def _check_storages(path, real: str, is_zip: bool) -> None:
  """Refuses a torch file whose pickle declares more storage bytes than the file holds, before
  torch allocates them (it allocates each declared storage, then reads it from the file).

  Legacy files: the storages' bytes (element count x element size, summed) must fit in the
  bytes after the leading pickles. Zip archives: every member's sizes must be possible (stored
  ones as large as declared, compressed ones within deflate's ratio), and each storage's
  data/<key> record must hold exactly its declared bytes (torch's non-mmap reader demands it;
  with mmap a larger claim would read the bytes after the record as weights), stored as torch
  writes it (mmap cannot read a compressed record; non-mmap would inflate a bomb).
  """
  with safe_io.open_regular(real, CheckpointError, where=str(path)) as f:
    size = os.fstat(f.fileno()).st_size
    if is_zip:
      try:
        z = zipfile.ZipFile(f)
      except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # torch.load reports the corrupt archive
      with z:
        safe_io.check_zip(z, size, str(path), CheckpointError)
        member = _data_pkl(z)
        if member is None:
          return
        if member.file_size > MAX_PICKLE_SCAN_BYTES:
          raise CheckpointError(
              f"{path}: {member.filename} declares {member.file_size:,} bytes, more than "
              f"MAX_PICKLE_SCAN_BYTES={MAX_PICKLE_SCAN_BYTES:,} (more tensors than any real "
              "checkpoint); refused unread")
        try:
          scan = _PickleScan(z.read(member), 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
          return  # torch.load reports the unreadable record
        records = member.filename.removesuffix("data.pkl") + "data/"
        for key, (cls, numel, nbytes) in _declared(path, scan).items():
          record = f"{records}{key}"
          info = z.NameToInfo.get(record)
          if info is None or info.file_size != nbytes:
            holds = "is missing" if info is None else f"holds {info.file_size:,} bytes"
            raise CheckpointError(
                f"{path}: storage {short(key)} declares {numel:,} {cls} elements ({nbytes:,} "
                f"bytes), but its record {short(record)} {holds}; a corrupt or hostile file, "
                "refused before loading")
          if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: record {short(record)} is compressed ({info.file_size:,} bytes from "
                f"{info.compress_size:,}); torch writes records stored, and a compressed one "
                "cannot be memory-mapped")
      return
    data = f.read(min(MAX_PICKLE_SCAN_BYTES, size))
  scan = _PickleScan(data, LEGACY_PICKLES)
  declared = _declared(path, scan)
  if scan.pickles < LEGACY_PICKLES and scan.end >= len(data) < size:  # cut by the cap
    raise CheckpointError(
        f"{path}: its pickles run past the first MAX_PICKLE_SCAN_BYTES={MAX_PICKLE_SCAN_BYTES:,} "
        "bytes (more tensors than any real checkpoint), so the storages they declare cannot be "
        "checked; refused unread")
  total = sum(nbytes for _, _, nbytes in declared.values())
  held = size - scan.end
  if total > held:
    key, (cls, numel, nbytes) = max(declared.items(), key=lambda kv: kv[1][2])
    raise CheckpointError(
        f"{path}: storage {short(key)} declares {numel:,} {cls} elements ({nbytes:,} bytes; "
        f"{total:,} for all {len(declared)} storages), but the file holds {held:,} bytes after "
        "its pickles; a corrupt or hostile file, refused before allocating them")


def _declared(path, scan: _PickleScan) -> dict:
  """{key: (storage class, numel, bytes)} of a scan's storages; a count that is not a plain
  non-negative integer is refused."""
  out = {}
  for key, (cls, numel) in scan.storages.items():
    if type(numel) is not int or numel < 0:
      raise CheckpointError(f"{path}: storage {short(key)} declares {short(numel)} elements, "
                            "not a count")
    cls = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else "storage"
    out[key] = (cls, numel, numel * STORAGE_ITEMSIZE.get(cls, 1))
  return out


def load_state_dict(path: str | os.PathLike, *, real_path: str | os.PathLike | None = None
                    ) -> Mapping[str, np.ndarray]:
  """A single weights file: .safetensors (no torch) or a torch pickle (weights only).

  `path` names the file (its suffix picks the format); `real_path` is the file to open when
  the caller resolved a link (a Hugging Face cache blob has no suffix).
  """
  path = pathlib.Path(path)
  if not os.path.lexists(path) and real_path is None:
    raise CheckpointError(f"{path}: no such file")
  if path.suffix == ".safetensors":
    sf = SafetensorsFile(path, real_path=real_path)
    if any(k.startswith("module.") for k in sf):
      return {k.removeprefix("module."): sf[k] for k in sf}
    return sf
  return load_pickle(path, real_path=real_path)


class ShardedTensors(Mapping):
  """Several weights files seen as one mapping, as a *.index.json weight_map lists them.

  Shard names are plain file names resolving to regular files inside the index's folder (or
  a Hugging Face cache's blob store); anything else is refused before a file is opened.
  """

  def __init__(self, index_path: pathlib.Path, *, real_path: pathlib.Path | None = None):
    index_path = pathlib.Path(index_path)
    index = safe_io.read_json(real_path or index_path, safe_io.MAX_INDEX_BYTES, CheckpointError,
                              where=str(index_path))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
      raise CheckpointError(f"{index_path}: not a shard index (no 'weight_map' object of "
                            "tensor name -> file)")
    folder = index_path.parent
    for key, name in weight_map.items():
      safe_io.plain_name(name, f"{index_path}: weight_map[{short(key)}]", CheckpointError)
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not os.path.lexists(folder / n)]
    if missing:
      more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
      raise CheckpointError(f"{index_path}: missing shard file(s): {', '.join(missing[:5])}{more}")
    real = {n: safe_io.resolve_inside(folder, n, CheckpointError) for n in names}
    self._folder = folder
    self._map = dict(weight_map)
    self._files = {}
    for f in names:  # validate every shard's header up front
      self._files[f] = load_state_dict(folder / f, real_path=real[f])
      absent = sorted(k for k, v in self._map.items() if v == f and k not in self._files[f])
      if absent:
        raise CheckpointError(f"{folder / f}: lacks key(s) the index assigns to it: "
                              f"{short(absent[:5])}")

  def __getitem__(self, key):
    return self._files[self._map[key]][key]

  def __iter__(self):
    return iter(self._map)

  def __len__(self):
    return len(self._map)


# Weights files of a Hugging Face folder, in the order they are looked for.
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")


def side_file(folder: str | os.PathLike, name: str) -> pathlib.Path | None:
  """The resolved path of FOLDER/NAME if it exists (checked to lie inside), else None."""
  if not os.path.lexists(pathlib.Path(folder) / name):
    return None
  return safe_io.resolve_inside(folder, name, CheckpointError)


def read_hf_config(folder: str | os.PathLike) -> dict:
  """A Hugging Face folder's config.json: bounded, strict JSON, its fields type- and range-checked.
  """
  from ports import hf_common  # noqa: PLC0415

  folder = pathlib.Path(folder)
  real = side_file(folder, "config.json")
  if real is None:
    raise CheckpointError(f"{folder}: no config.json; not a Hugging Face model folder")
  where = str(folder / "config.json")
  config = safe_io.read_json(real, safe_io.MAX_CONFIG_BYTES, CheckpointError, where=where)
  hf_common.check_hf_config(config, where)
  return config


def load_hf_folder(folder: str | os.PathLike) -> tuple[dict, Mapping[str, np.ndarray]]:
  """A Hugging Face model folder -> (config.json as a dict, weights mapping).

  Weights are looked for in this order: model.safetensors, model.safetensors.index.json
  (sharded), pytorch_model.bin, pytorch_model.bin.index.json. Every file must resolve to a
  regular file inside the folder (or its Hugging Face cache's blob store).
  """
  folder = pathlib.Path(folder)
  config = read_hf_config(folder)
  for name in HF_WEIGHTS:
    real = side_file(folder, name)
    if real is not None:
      if name.endswith(".json"):
        return config, ShardedTensors(folder / name, real_path=real)
      return config, load_state_dict(folder / name, real_path=real)
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
