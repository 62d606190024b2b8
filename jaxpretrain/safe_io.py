"""Reading files a stranger wrote: names stay inside their folder, sizes are capped, JSON is strict.

Every side file of a checkpoint (config.json, an index, a preprocessor or tokenizer file, a
converted checkpoint's own config.json) is read through `read_json` / `read_text` /
`read_bytes`, which:

  - take a plain name inside a folder, never a path (`plain_name`), and resolve it to a
    regular file under that folder, or under the Hugging Face cache's blob store when the
    folder is a cache snapshot (`resolve_inside`): no `..`, no absolute names, no link out;
  - open without blocking and refuse FIFOs, devices and folders (`open_regular`);
  - refuse files larger than a cap named per kind of file (below), before reading them;
  - decode UTF-8 strictly and parse JSON with a depth limit (no RecursionError), a digit limit
    on integers (no 4,300-digit ValueError), no NaN/Infinity where the caller is strict, and
    no duplicate keys (an ambiguous file is refused, not read one of two ways).

Values from such a file are then range-checked (`check_fields`) before anything is built from
them. Every failure is one `error` (the caller's exception type) naming the file and the field;
messages show untrusted values through `short`, never whole.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import stat
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


class UntrustedInputError(ValueError):
  """A file or value from a checkpoint is unsafe or malformed; the message names it."""


# Caps on side files, each with the real files it must admit. A file over its cap is refused
# before it is read (a 200 MB config.json took 5.2 GB to parse; /dev/zero never ends).
# config.json, preprocessor_config.json, tokenizer_config.json, special_tokens_map.json and a
# converted checkpoint's config.json: a few KB; the largest real ones carry ImageNet-21k's
# 21,843 labels in id2label and label2id, ~1 MB.
MAX_CONFIG_BYTES = 4 << 20
# model.safetensors.index.json: ~100 bytes per tensor (name and shard file); 32 MiB is ~300k
# tensors, three times the largest open MoE checkpoints' tensor counts.
MAX_INDEX_BYTES = 32 << 20
# tokenizer.json, vocab.txt, vocab.json, merges.txt: all-MiniLM-L6-v2's tokenizer.json is
# 466 KB; 256k-token vocabularies (Gemma) take ~17-33 MB.
MAX_TOKENIZER_BYTES = 64 << 20
# JSON nesting: real configs nest < 8 deep; Python's parser recurses per level and raised
# RecursionError at ~1,000.
MAX_JSON_DEPTH = 32
# Digits of a JSON integer: a uint64 has 20; Python refuses over 4,300 with a ValueError.
MAX_JSON_INT_DIGITS = 20
# Characters of an untrusted value shown in a message (a 50-million-element list is not).
MAX_REPR_CHARS = 80
# Characters of a file name taken from a checkpoint (Linux NAME_MAX).
MAX_NAME_CHARS = 255
# Deflate shrinks data at most ~1032:1 (one 258-byte match per 2 bits; 100 MB of zeros: 1029:1),
# so a deflated zip member declaring more is a corrupt or hostile archive.
MAX_DEFLATE_RATIO = 1032

ErrorType = Callable[[str], Exception]


def short(value: Any, limit: int = MAX_REPR_CHARS) -> str:
  """repr(value) cut to `limit` characters, saying how long it was; safe on huge values."""
  if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
    kind = type(value).__name__
    head = list(value)[:4] if not isinstance(value, dict) else list(value.items())[:4]
    return f"<{kind} of {len(value)} items: {short(head, limit)}...>"
  if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
    return f"<int of {value.bit_length()} bits>"
  text = repr(value)
  if len(text) <= limit:
    return text
  return f"{text[:limit]}... ({len(text)} chars)"


def plain_name(name: Any, where: str, error: ErrorType = UntrustedInputError) -> str:
  """`name` if it is a plain file name (no '/', '\\', '..', NUL, not absolute, not empty)."""
  if (not isinstance(name, str) or not name or name in (".", "..") or len(name) > MAX_NAME_CHARS
      or any(c in name for c in "/\\\0") or name != name.strip()):
    raise error(f"{where}: {short(name)} is not a plain file name in the folder (names from a "
                "checkpoint never contain '/', '..' or NUL)")
  return name


def hf_cache_blobs(folder: pathlib.Path) -> pathlib.Path | None:
  """The blob store of a Hugging Face cache snapshot folder, or None for any other folder.

  huggingface_hub stores models--ORG--NAME/snapshots/REV/FILE as a relative link to
  ../../blobs/SHA, so a snapshot's files resolve outside the snapshot by design.
  """
  snapshots = folder.parent
  repo = snapshots.parent
  if snapshots.name == "snapshots" and re.fullmatch(r"(models|datasets|spaces)--.+", repo.name):
    return repo / "blobs"
  return None


def _under(path: str, root: pathlib.Path) -> bool:
  root_s = str(root)
  return path == root_s or path.startswith(root_s.rstrip(os.sep) + os.sep)


def resolve_relative(folder: str | os.PathLike, relpath: Any,
                     error: ErrorType = UntrustedInputError) -> pathlib.Path:
  """resolve_inside for a '/'-separated path of plain names (a sentence-transformers module's
  "1_Pooling/config.json"): every part plain, the target under the folder or its blobs."""
  if not isinstance(relpath, str) or not relpath:
    raise error(f"{folder}: path {short(relpath)}; allowed: plain names joined by '/'")
  parts = relpath.split("/")
  for part in parts:
    plain_name(part, str(pathlib.Path(folder) / "?"), error)
  real_folder = pathlib.Path(os.path.realpath(folder))
  target = os.path.realpath(pathlib.Path(folder).joinpath(*parts))
  blobs = hf_cache_blobs(real_folder)
  if not (_under(target, real_folder) or (blobs is not None and _under(target, blobs))):
    raise error(f"{pathlib.Path(folder) / relpath}: resolves to {short(target)}, outside "
                f"{folder}; files of a checkpoint must lie inside its folder")
  return pathlib.Path(target)


def resolve_inside(folder: str | os.PathLike, name: Any, error: ErrorType = UntrustedInputError
                   ) -> pathlib.Path:
  """FOLDER/NAME resolved through links, refused unless it lies under the folder.

  Args:
    folder: the folder the user named (trusted; resolved itself).
    name: a plain file name read from the folder's files (untrusted).
    error: the exception type to raise.
  Returns:
    The resolved path, under the folder or, for a Hugging Face cache snapshot, its blob store.
  """
  real_folder = pathlib.Path(os.path.realpath(folder))
  plain_name(name, str(pathlib.Path(folder) / "?"), error)
  path = pathlib.Path(folder) / name
  target = os.path.realpath(path)
  roots = [real_folder]
  blobs = hf_cache_blobs(real_folder)
  if blobs is not None:
    roots.append(blobs)
  if not any(_under(target, r) for r in roots):
    raise error(f"{path}: resolves to {short(target)}, outside {folder}; files of a checkpoint "
                "must lie inside its folder (or a Hugging Face cache's blobs)")
  return pathlib.Path(target)


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: str | os.PathLike, error: ErrorType = UntrustedInputError,
                 max_bytes: int | None = None, where: str | None = None):
  """Opens `path` for binary reading if it is a regular file (of at most `max_bytes`).

  O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the last component is
  not a link (callers pass resolved paths). `where` names the file in messages when `path` is
  its resolved target (a cache blob). Returns a file object (the caller closes it).
  """
  where = where or str(path)
  flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
  try:
    fd = os.open(path, flags)
  except OSError as e:
    raise error(f"{where}: cannot open: {e.strerror or e}") from None
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
      raise error(f"{where}: is {kind}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
      raise error(f"{where}: {st.st_size} bytes, more than the {max_bytes} this kind of file "
                  "may have")
    if hasattr(os, "set_blocking"):
      os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
  except BaseException:
    os.close(fd)
    raise


def read_bytes(path: str | os.PathLike, max_bytes: int,
               error: ErrorType = UntrustedInputError, where: str | None = None) -> bytes:
  """The bytes of a regular file of at most `max_bytes` (checked again while reading)."""
  where = where or str(path)
  with open_regular(path, error, max_bytes, where) as f:
    # read(n) allocates n bytes up front: ask for the size fstat gave, then small chunks (a
    # file that grows, or a /proc file whose size reads as 0), never for the whole cap.
    want = os.fstat(f.fileno()).st_size + 1
    chunks, total = [], 0
    try:
      while total <= max_bytes:
        chunk = f.read(min(want, max_bytes + 1 - total))
        if not chunk:
          break
        chunks.append(chunk)
        total += len(chunk)
        want = READ_CHUNK_BYTES
    except OSError as e:
      raise error(f"{where}: cannot read: {e.strerror or e}") from None
  if total > max_bytes:
    raise error(f"{where}: more than the {max_bytes} bytes this kind of file may have")
  return b"".join(chunks)


READ_CHUNK_BYTES = 64 << 10  # what read_bytes asks for past the size fstat reported


def decode_utf8(data: bytes, where: str, error: ErrorType = UntrustedInputError) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise error(f"{where}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})"
                ) from None


def read_text(path: str | os.PathLike, max_bytes: int,
              error: ErrorType = UntrustedInputError, where: str | None = None) -> str:
  """A UTF-8 text side file (vocab.txt, merges.txt), regular and at most `max_bytes`."""
  where = where or str(path)
  return decode_utf8(read_bytes(path, max_bytes, error, where), where, error)


def check_zip(z: zipfile.ZipFile, archive_bytes: int, where: str,
              error: ErrorType = UntrustedInputError) -> None:
  """Every member's declared sizes are possible, before anything is decompressed: its
  compressed bytes lie inside the archive, a stored member is as large as it says, and a
  deflated one expands at most MAX_DEFLATE_RATIO times (a zip bomb's lie is refused)."""
  for info in z.infolist():
    name, size, packed = short(info.filename), info.file_size, info.compress_size
    if info.header_offset + packed > archive_bytes:
      raise error(f"{where}: member {name} declares {packed:,} bytes at offset "
                  f"{info.header_offset:,}, past the end of the {archive_bytes:,}-byte archive "
                  "(truncated or corrupt)")
    if info.compress_type == zipfile.ZIP_STORED and size != packed:
      raise error(f"{where}: member {name} is stored uncompressed in {packed:,} bytes but "
                  f"declares {size:,}; a corrupt or hostile archive")
    if info.compress_type == zipfile.ZIP_DEFLATED and size > MAX_DEFLATE_RATIO * packed:
      raise error(f"{where}: member {name} declares {size:,} bytes from {packed:,} compressed, "
                  f"more than deflate's {MAX_DEFLATE_RATIO}:1 allows; a zip bomb or a corrupt "
                  "archive")


_STRING = re.compile(rb'"[^"]*"')  # a string literal once escapes are gone
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
  """The deepest nesting of arrays and objects in JSON text, strings skipped (linear time).

  Escapes go first (pairs of backslashes, then escaped quotes, as a JSON reader consumes them
  left to right), so every quote left delimits a string; a regex over escapes instead went
  quadratic on a run of backslash-quote pairs.
  """
  text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
  brackets = np.frombuffer(_STRING.sub(b"", text).translate(None, _NOT_BRACKETS), np.uint8)
  steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int32)
  return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def parse_json(raw: bytes | str, where: str, error: ErrorType = UntrustedInputError, *,
               strict: bool = False) -> Any:
  """JSON with limits: depth, integer digits, duplicate keys and lone surrogates are refused.

  Args:
    raw: the file's bytes (UTF-8) or text.
    where: the file, for messages.
    error: the exception type to raise.
    strict: read numbers as the safetensors header's parser (Rust serde_json) does: no
      NaN/Infinity (Python's json writes them into configs, so they pass otherwise), and a
      negative integer such as -0 is not an unsigned one.
  """
  if isinstance(raw, bytes):
    text = decode_utf8(raw, where, error)
  else:
    text, raw = raw, raw.encode("utf-8", "surrogatepass")
  depth = json_depth(raw)
  if depth > MAX_JSON_DEPTH:
    raise error(f"{where}: JSON nested {depth} deep; at most {MAX_JSON_DEPTH} is read")

  def bounded_int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_JSON_INT_DIGITS:
      raise error(f"{where}: an integer of {len(s.lstrip('-'))} digits; at most "
                  f"{MAX_JSON_INT_DIGITS} are read")
    if strict and s.startswith("-"):
      return float(s)  # serde_json reads -0 as the float -0.0, never as an unsigned 0
    return int(s)

  def constant(s: str) -> float:
    if strict:
      raise error(f"{where}: {s} is not a JSON number")
    return float(s)

  def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, value in pairs:
      if key in out:
        raise error(f"{where}: key {short(key)} appears twice in one object")
      if not _is_utf8(key):
        raise error(f"{where}: key {short(key)} is not valid Unicode (a lone surrogate)")
      out[key] = value
    return out

  try:
    return json.loads(text, parse_int=bounded_int, parse_constant=constant,
                      object_pairs_hook=unique_keys)
  except json.JSONDecodeError as e:
    raise error(f"{where} is not valid JSON: {e}") from None
  except RecursionError:  # json_depth bounds this; kept so no input ever escapes as one
    raise error(f"{where}: JSON nested too deep") from None


def _is_utf8(s: str) -> bool:
  try:
    s.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def read_json(path: str | os.PathLike, max_bytes: int = MAX_CONFIG_BYTES,
              error: ErrorType = UntrustedInputError, *, where: str | None = None) -> Any:
  """A JSON side file: regular, at most `max_bytes`, UTF-8, parsed by `parse_json`.

  `where` names the file in messages when `path` is its resolved target (a cache blob).
  """
  where = where or str(path)
  return parse_json(read_bytes(path, max_bytes, error, where), where, error)


# Fields a model is built from, wherever they appear (a Hugging Face config.json, a converted
# checkpoint's model_kwargs): (kind, min, max). Maxima lie far above any published model of
# the ported families (BERT-large: 24 layers, 1,024 wide; ViT-22B: 48 layers, 6,144 wide;
# XLM-R's 250,002-token vocabulary), low enough that nothing is built from a typo or an attack
# (num_hidden_layers=10**6, hidden_size=1e20).
SIZE = "size"
FIELDS: dict[str, tuple[str, float, float]] = {
    "vocab_size": (SIZE, 1, 1 << 22),
    "hidden_size": (SIZE, 1, 1 << 16),
    "num_hidden_layers": (SIZE, 1, 256),
    "num_attention_heads": (SIZE, 1, 1 << 10),
    "intermediate_size": (SIZE, 1, 1 << 18),
    "max_position_embeddings": (SIZE, 1, 1 << 20),
    "type_vocab_size": (SIZE, 1, 1 << 10),
    "patch_size": (SIZE, 1, 1 << 12),
    "num_channels": (SIZE, 1, 64),
    "pooler_output_size": (SIZE, 1, 1 << 16),
    "num_labels": (SIZE, 1, 1 << 20),
    "num_classes": (SIZE, 1, 1 << 20),
    "width": (SIZE, 1, 1 << 14),
    "groups": (SIZE, 1, 1 << 14),
    "width_per_group": (SIZE, 1, 1 << 14),
    "pad_token_id": ("int", 0, (1 << 22) - 1),
    "max_len": (SIZE, 1, 1 << 20),
    "resize_size": (SIZE, 1, 1 << 14),
    "hidden_dropout_prob": ("float", 0.0, 1.0),
    "attention_probs_dropout_prob": ("float", 0.0, 1.0),
    "classifier_dropout": ("float", 0.0, 1.0),
    "layer_norm_eps": ("float", 1e-30, 1.0),
    "initializer_range": ("float", 0.0, 10.0),
    "qkv_bias": ("bool", 0, 0),
    "pooler": ("bool", 0, 0),
    "zero_init_residual": ("bool", 0, 0),
    "is_decoder": ("bool", 0, 0),
    "hidden_act": ("str", 0, 0),
    "pooler_act": ("str", 0, 0),
    "mlm_act": ("str", 0, 0),
    "head": ("str", 0, 0),
    "position_style": ("str", 0, 0),
    "position_embedding_type": ("str", 0, 0),
    "model_type": ("str", 0, 0),
    "block": ("str", 0, 0),
    "dtype": ("str", 0, 0),
    "param_dtype": ("str", 0, 0),
}
# Fields whose value may also be null (the model's "derive it" default).
NULLABLE = {"classifier_dropout", "pooler_output_size", "num_classes", "mlm_act", "head",
            "pad_token_id", "dtype", "param_dtype"}
# Image sizes: one int or [height, width].
IMAGE_SIZE_FIELDS = {"image_size"}
IMAGE_SIDE_MAX = 1 << 14
MAX_STR_CHARS = 256  # a name-like string field (hidden_act, model_type, head...)


def check_value(field: str, value: Any, where: str, error: ErrorType = UntrustedInputError
                ) -> None:
  """Raises unless `value` has the kind and range FIELDS gives `field` (unknown fields pass)."""
  if value is None and field in NULLABLE:
    return
  if field in IMAGE_SIZE_FIELDS:
    sides = value if isinstance(value, list) and len(value) == 2 else [value]
    if not all(_is_int(s) and 1 <= s <= IMAGE_SIDE_MAX for s in sides):
      raise error(f"{where}: {field}={short(value)}; allowed: an integer in [1, "
                  f"{IMAGE_SIDE_MAX}] or a [height, width] pair of them")
    return
  if field not in FIELDS:
    return
  kind, lo, hi = FIELDS[field]
  if kind in (SIZE, "int"):
    ok = _is_int(value) and lo <= value <= hi
    allowed = f"an integer in [{lo}, {hi}]"
  elif kind == "float":
    ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value) and lo <= value <= hi
    allowed = f"a number in [{lo}, {hi}]"
  elif kind == "bool":
    ok, allowed = isinstance(value, bool), "true or false"
  else:
    ok = isinstance(value, str) and 0 < len(value) <= MAX_STR_CHARS
    allowed = f"a string of 1-{MAX_STR_CHARS} characters"
  if not ok:
    null = " or null" if field in NULLABLE else ""
    raise error(f"{where}: {field}={short(value)} ({type(value).__name__}); allowed: "
                f"{allowed}{null}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_fields(mapping: Mapping[str, Any], where: str, error: ErrorType = UntrustedInputError
                 ) -> None:
  """`check_value` on every field of `mapping` that FIELDS or IMAGE_SIZE_FIELDS names."""
  for field, value in mapping.items():
    check_value(field, value, where, error)

