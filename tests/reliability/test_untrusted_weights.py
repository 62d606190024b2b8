"""Checkpoints from strangers: crafted pickles never run, fuzzed headers fail cleanly.

Proves: (1) a pickle whose unpickling would execute code is refused by weights_only loading
and the code does not run; (2) the safetensors reader answers every malformed file (truncated,
huge declared sizes, overlapping or out-of-range offsets, bad JSON, wrong dtypes) with a
CheckpointError, never another exception, a hang or a large allocation; (3) a property-based
fuzzer: the reader's own checks never accept a file the official `safetensors` reader rejects
and read the same bytes where both accept, and the Hugging Face config parser raises only
PortError and passes only in-range values.
"""

import contextlib
import datetime
import json
import os
import pickle
import resource
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxpretrain import safe_io
from jaxpretrain.models import bert, vit  # noqa: F401 -- imported here, not in a timed example
from ports import hf_bert, hf_vit, readers
from ports.readers import CheckpointError
from ports.rules import PortError

# Memory a reader may add while rejecting a fuzzed file: far below any declared huge size.
MAX_RSS_GROWTH_BYTES = 64 * 2**20
# tmp_path is reused across examples on purpose: each example overwrites the one file.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


class _Boom:
  """Unpickling this calls os.system, which would create the marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch_zip", "legacy_pickle"])
def test_crafted_pickle_refused_and_nothing_runs(tmp_path, fmt):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  if fmt == "torch_zip":
    torch.save({"weight": _Boom(marker)}, path)
  else:
    with open(path, "wb") as f:
      pickle.dump({"weight": _Boom(marker)}, f)
  with pytest.raises(CheckpointError, match="refused: the pickle needs more than tensors"):
    readers.load_state_dict(path)
  assert not marker.exists(), "unpickling ran code from the file"


def _valid_file_bytes() -> bytes:
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4, 3)).astype(np.float32)
  b = rng.normal(size=(5,)).astype(np.float32)
  header = {"a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]},
            "b": {"dtype": "F32", "shape": [5], "data_offsets": [48, 68]},
            "__metadata__": {"format": "pt"}}
  h = json.dumps(header).encode()
  return struct.pack("<Q", len(h)) + h + a.tobytes() + b.tobytes()


def _read_all(path):
  sf = readers.SafetensorsFile(path)
  return {k: np.array(sf[k]) for k in sf}


def _rss():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8", "X", 3]),
    "shape": st.one_of(st.lists(st.integers(-2, 2**45), max_size=4), st.text(max_size=3)),
    "data_offsets": st.one_of(st.lists(st.integers(-5, 2**63), min_size=0, max_size=3),
                              st.none()),
})


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(header=st.dictionaries(st.text(min_size=1, max_size=5), entry, max_size=4),
       data_len=st.integers(0, 64), declared_delta=st.sampled_from([0, 0, 0, 1, -1, 2**40]))
def test_fuzzed_headers_fail_cleanly(tmp_path, header, data_len, declared_delta):
  h = json.dumps(header).encode()
  path = tmp_path / "f.safetensors"
  path.write_bytes(struct.pack("<Q", max(0, len(h) + declared_delta)) + h + b"\1" * data_len)
  before = _rss()
  with contextlib.suppress(CheckpointError):
    _read_all(path)
  assert _rss() - before < MAX_RSS_GROWTH_BYTES


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(cut=st.integers(0, 200),
       flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4))
def test_truncated_and_corrupted_files_fail_cleanly(tmp_path, cut, flips):
  data = bytearray(_valid_file_bytes())
  for pos, val in flips:
    if pos < len(data):
      data[pos] = val
  path = tmp_path / "f.safetensors"
  path.write_bytes(bytes(data[: len(data) - cut]))
  try:
    arrays = _read_all(path)
  except CheckpointError:
    return
  # A mutation the format cannot detect (flipped data bytes) still reads whole arrays.
  assert all(isinstance(v, np.ndarray) for v in arrays.values())


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURE_OK)
@given(text=st.one_of(st.text(max_size=50),
                      st.binary(max_size=50).map(lambda b: b.decode("latin-1"))))
def test_fuzzed_config_json(tmp_path, text):
  from jaxpretrain import pretrained
  (tmp_path / "config.json").write_text(text, encoding="utf-8", errors="replace")
  with pytest.raises((ValueError, FileNotFoundError)):
    pretrained.read_config(tmp_path)


# The fuzzer of issue 17: the safetensors reader and the Hugging Face config parser against
# hostile files, compared with the official `safetensors` reader.

# tracemalloc peak a read may reach: a small multiple of the file plus Python's fixed costs
# (the parsed header's dicts; a fuzzed file is a few KB, so the constant dominates).
ALLOC_FILE_MULTIPLE = 16
ALLOC_CONSTANT_BYTES = 2 << 20
# Per-example limit: the reader and both parsers take ~ms; a hang or a quadratic blow-up fails.
FUZZ_DEADLINE = datetime.timedelta(seconds=5)
OFFICIAL_DTYPES = [*readers.SAFETENSORS_DTYPES, *readers.OTHER_SAFETENSORS_DTYPES]
_junk = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                  st.text(max_size=6), st.lists(st.integers(-3, 2**64 + 1), max_size=3))


@st.composite
def safetensors_files(draw) -> bytes:
  """A valid file, then zero or more of the corruptions seen in the wild or in the issue."""
  names = draw(st.lists(st.text(min_size=1, max_size=4), max_size=4, unique=True))
  header, data = {}, b""
  for name in names:
    dtype = draw(st.sampled_from(OFFICIAL_DTYPES))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    bits = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}.get(dtype) or (
        8 * readers.SAFETENSORS_DTYPES[dtype].itemsize if dtype in readers.SAFETENSORS_DTYPES
        else 64 if dtype == "C64" else 8)
    nbytes = int(np.prod(shape, dtype=np.int64)) * bits // 8
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + nbytes]}
    data += draw(st.binary(min_size=nbytes, max_size=nbytes))
  if draw(st.booleans()):
    header["__metadata__"] = draw(st.one_of(
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2), _junk))
  for _ in range(draw(st.integers(0, 2))):  # replace one field with junk
    if names:
      entry = header[draw(st.sampled_from(names))]
      entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(st.one_of(
          _junk, st.lists(st.integers(0, 8), min_size=2, max_size=2)))
  text = json.dumps(header, allow_nan=True)
  text += " " * draw(st.integers(0, 8))  # writers pad the header to 8 bytes with spaces
  raw = text.encode("utf-8", "surrogatepass")
  declared = len(raw) + draw(st.sampled_from([0, 0, 0, 0, -1, -4, 1, 4, 2**40, -len(raw)]))
  blob = struct.pack("<Q", max(declared, 0)) + raw + data
  cut = draw(st.sampled_from([0, 0, 0, 1, 4]))
  blob = blob[:len(blob) - cut] + draw(st.sampled_from([b"", b"", b"\0", b"\0" * 4]))
  for pos, byte in draw(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                 max_size=2)):
    if pos < len(blob):
      blob = blob[:pos] + bytes([byte]) + blob[pos + 1:]
  return blob


def _official(path) -> dict | None:
  """{key: raw bytes or None (a dtype NumPy lacks)} from the official reader, or None."""
  from safetensors import safe_open
  try:
    with safe_open(str(path), framework="numpy") as f:
      out = {}
      for k in f.keys():  # noqa: SIM118 -- safe_open has no __iter__
        try:
          out[k] = f.get_tensor(k).tobytes()
        except Exception:  # noqa: BLE001 -- numpy has no bf16/fp8: compared by acceptance only
          out[k] = None
      return out
  except Exception:  # noqa: BLE001 -- SafetensorError, and whatever else it raises on junk
    return None


@settings(max_examples=400, deadline=FUZZ_DEADLINE, suppress_health_check=FIXTURE_OK)
@given(blob=safetensors_files())
def test_safetensors_reader_matches_the_official_one(tmp_path, monkeypatch, blob):
  """Only CheckpointError, bounded allocation, and, with the official second opinion switched
  off, the reader's own checks never accept a file the official reader rejects; what both
  accept reads the same bytes."""
  path = tmp_path / "f.safetensors"
  path.write_bytes(blob)
  official = _official(path)
  monkeypatch.setattr(readers, "_official_check", lambda real, where: None)
  tracemalloc.start()
  try:
    try:
      ours = _read_all(path)
    except CheckpointError:
      ours = None
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < ALLOC_FILE_MULTIPLE * len(blob) + ALLOC_CONSTANT_BYTES
  if ours is None:
    return
  assert official is not None, "accepted a file the official safetensors reader rejects"
  assert set(ours) == set(official)
  for key, value in ours.items():
    if official[key] is not None:
      assert value.tobytes() == official[key], key


_config_value = st.recursive(
    _junk, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                   st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=8)
_config_fields = st.sampled_from([*safe_io.FIELDS, "image_size", "architectures", "id2label",
                                  "label2id", "model_type"])


@st.composite
def hf_configs(draw) -> bytes:
  """config.json bytes: a tiny BERT or ViT config with fields set to junk, or junk bytes."""
  if draw(st.integers(0, 9)) == 0:
    return draw(st.binary(max_size=64))
  model_type = draw(st.sampled_from(["bert", "roberta", "vit"]))
  cfg = {"model_type": model_type, "hidden_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 4, "intermediate_size": 64}
  for field in draw(st.lists(_config_fields, max_size=3)):
    cfg[field] = draw(st.one_of(_config_value, st.integers(-2, 2**64)))
  text = json.dumps(cfg, allow_nan=True)
  if draw(st.booleans()):  # nesting deeper than Python's parser recurses
    depth = draw(st.sampled_from([10, 40, 5000]))
    text = text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
  return text.encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=FUZZ_DEADLINE, suppress_health_check=FIXTURE_OK)
@given(raw=hf_configs())
def test_hf_config_parser_raises_only_port_errors(tmp_path, raw):
  """read_hf_config, then the ports' model_kwargs: a PortError or values within range."""
  (tmp_path / "config.json").write_bytes(raw)
  tracemalloc.start()
  try:
    try:
      cfg = readers.read_hf_config(tmp_path)
    except PortError:
      cfg = None
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < ALLOC_FILE_MULTIPLE * len(raw) + ALLOC_CONSTANT_BYTES
  port = {"bert": hf_bert, "roberta": hf_bert, "vit": hf_vit}.get((cfg or {}).get("model_type"))
  if port is None:  # refused, or a model_type convert refuses by name
    return
  try:
    kwargs = port.model_kwargs(cfg, None, pooler=False)
  except PortError:
    return
  for field, value in kwargs.items():
    safe_io.check_value(field, value, "accepted", AssertionError)
