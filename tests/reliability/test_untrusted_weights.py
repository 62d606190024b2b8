"""Checkpoints from strangers: crafted pickles never run, fuzzed headers fail cleanly.

Proves: (1) a pickle whose unpickling would execute code is refused by weights_only loading
and the code does not run; (2) the safetensors reader answers every malformed file (truncated,
huge declared sizes, overlapping or out-of-range offsets, bad JSON, wrong dtypes) with a
CheckpointError, never another exception, a hang or a large allocation.
"""

import contextlib
import json
import os
import pickle
import resource
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ports import readers
from ports.readers import CheckpointError

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
