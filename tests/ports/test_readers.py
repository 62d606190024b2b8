"""Safetensors reading without torch, HF folders, shards, and torch pickles with weights_only."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from ports import readers
from ports.readers import CheckpointError


def _arrays():
  rng = np.random.default_rng(1)
  return {"a": rng.normal(size=(3, 4)).astype(np.float32),
          "b": rng.integers(0, 100, size=(5,)).astype(np.int64),
          "c": rng.normal(size=(2, 2)).astype(ml_dtypes.bfloat16)}


def test_safetensors_round_trip_memory_mapped(tmp_path):
  path = tmp_path / "x.safetensors"
  readers.save_safetensors(_arrays(), path)
  sf = readers.SafetensorsFile(path)
  assert set(sf) == {"a", "b", "c"}
  for k, v in _arrays().items():
    assert sf[k].dtype == v.dtype
    np.testing.assert_array_equal(sf[k], v)
  assert isinstance(sf["a"].base, np.memmap) or isinstance(sf["a"], np.memmap)


def test_safetensors_read_by_official_library(tmp_path):
  from safetensors.numpy import load_file
  path = tmp_path / "x.safetensors"
  arrays = {k: v for k, v in _arrays().items() if k != "c"}
  readers.save_safetensors(arrays, path)
  for k, v in load_file(str(path)).items():
    np.testing.assert_array_equal(v, arrays[k])


def _raw(header: dict, data: bytes, declared=None) -> bytes:
  h = json.dumps(header).encode()
  return struct.pack("<Q", len(h) if declared is None else declared) + h + data


@pytest.mark.parametrize("header,data,declared,match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None,
     "outside the 4 data bytes"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     "needs 12 bytes"),
    ({"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     "unsupported dtype 'Q9'"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None,
     "overlap"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     "invalid shape"),
    ({}, b"", 2**62, "header declares"),
])
def test_safetensors_validation_names_the_problem(tmp_path, header, data, declared, match):
  path = tmp_path / "bad.safetensors"
  path.write_bytes(_raw(header, data, declared))
  with pytest.raises(CheckpointError, match=match) as e:
    readers.SafetensorsFile(path)
  assert str(path) in str(e.value)


def test_truncated_file_named(tmp_path):
  path = tmp_path / "t.safetensors"
  readers.save_safetensors(_arrays(), path)
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(CheckpointError, match="truncated or corrupt"):
    readers.SafetensorsFile(path)


def test_hf_folder_sharded_and_missing_shard(tmp_path):
  arrays = _arrays()
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
  readers.save_safetensors({"a": arrays["a"]}, tmp_path / "s1.safetensors")
  readers.save_safetensors({"b": arrays["b"]}, tmp_path / "s2.safetensors")
  index = {"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  config, weights = readers.load_hf_folder(tmp_path)
  assert config == {"model_type": "bert"}
  np.testing.assert_array_equal(weights["b"], arrays["b"])
  (tmp_path / "s2.safetensors").unlink()
  with pytest.raises(CheckpointError, match="missing shard file\\(s\\): s2.safetensors"):
    readers.load_hf_folder(tmp_path)


def test_hf_folder_without_weights(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(CheckpointError, match="no weights"):
    readers.load_hf_folder(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="not valid JSON"):
    readers.load_hf_folder(tmp_path)
