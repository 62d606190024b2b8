"""pretrained.save_variables: streaming writes keep every value, views of mapped files included."""

import mmap

import numpy as np
import pytest

from jaxpretrain import pretrained


def _mapped(tmp_path, name, values):
  """A read-only np.memmap holding `values`, as readers.SafetensorsFile returns them."""
  path = tmp_path / name
  values.tofile(path)
  return np.memmap(path, dtype=values.dtype, mode="r", shape=values.shape)


@pytest.mark.parametrize("in_flight", [1, pretrained.STREAM_BYTES_IN_FLIGHT])
def test_streamed_save_restores_every_value(tmp_path, monkeypatch, in_flight):
  """One array at a time (limit 1 byte) or several: the same values back, bit for bit."""
  monkeypatch.setattr(pretrained, "STREAM_BYTES_IN_FLIGHT", in_flight)
  rng = np.random.default_rng(0)
  conv = rng.standard_normal((8, 3, 7, 7)).astype(np.float32)  # torch OIHW
  dense = rng.standard_normal((48, 32)).astype(np.float32)
  variables = {
      "params": {
          "conv": {"kernel": _mapped(tmp_path, "conv.bin", conv).transpose(2, 3, 1, 0)},
          "dense": {"kernel": _mapped(tmp_path, "dense.bin", dense).T,
                    "bias": rng.standard_normal(32).astype(np.float32)},
      },
      "batch_stats": {"bn": {"mean": np.arange(8, dtype=np.float32),
                             "var": rng.uniform(0.5, 2, 8).astype(np.float64)}},
  }
  pretrained.save_variables(tmp_path / "variables", variables)
  restored = pretrained.load_variables(tmp_path / "variables")

  np.testing.assert_array_equal(restored["params"]["conv"]["kernel"], conv.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(restored["params"]["dense"]["kernel"], dense.T)
  np.testing.assert_array_equal(restored["params"]["dense"]["bias"],
                                variables["params"]["dense"]["bias"])
  np.testing.assert_array_equal(restored["batch_stats"]["bn"]["var"],
                                variables["batch_stats"]["bn"]["var"])
  assert restored["batch_stats"]["bn"]["var"].dtype == np.float64


def test_released_pages_read_back_unchanged(tmp_path):
  """Dropping a read-only map's pages frees memory only: the values read back from the file."""
  values = np.random.default_rng(1).standard_normal((256, 1024)).astype(np.float32)
  view = _mapped(tmp_path, "w.bin", values).T
  np.testing.assert_array_equal(view, values.T)  # touch every page
  pretrained._release_mapped_pages(view)
  np.testing.assert_array_equal(view, values.T)


def test_release_leaves_other_arrays_alone():
  """Plain (anonymous) arrays and writable maps are never advised: their data would be lost."""
  values = np.arange(4096, dtype=np.float32)
  pretrained._release_mapped_pages(values)
  buf = mmap.mmap(-1, values.nbytes)
  anon = np.frombuffer(buf, dtype=np.float32)
  anon[:] = values
  pretrained._release_mapped_pages(anon)
  np.testing.assert_array_equal(anon, values)
