"""One entry point for every dataset: `load_dataset(spec, data_dir, split)`.

Specs:
  folder:PATH   one sub-folder per class, either under PATH/train and PATH/test or directly
                under PATH (then split by `test_fraction`, stratified, seeded). Images are
                decoded by PIL when installed (png, jpg, bmp, gif, webp, tiff); `.npy` files
                (uint8 [h, w] or [h, w, c]) always work.
  csv:PATH      a header row, a text column and a label column; labels are class names or
                integers. Split by `test_fraction`, unless a separate test file is named:
  csv:PATH?test=TEST.csv&text=COLUMN&label=COLUMN
                options after "?" (each optional, `&`-separated KEY=VALUE, no %-escapes):
                `test` a test file with the same columns (the whole of PATH is then
                trained on), `text` and `label` the column names (default text, label).
                An unknown or repeated key is an error naming it.
  npz:PATH      an image array [n, h, w(, c)] and an integer label array [n]; keys given or
                auto-detected (`x_train`/`y_train`-style keys give the split directly).
  NAME, tfds:NAME   a TFDS dataset already prepared under `data_dir`; the builders in
                `builders.BUILDERS` are built on first use (offline), others never downloaded.

Splits: "train", "test", "validation" and "all". "all" is a user dataset's every example,
unsplit (a csv: with a separate test file: every row of its first file). "validation" is
`validation_fraction` of the training part, stratified and seeded, and "train" is then the
rest (the offline builders write their own validation split; other TFDS datasets have
theirs or none).

`check_spec(spec, data_dir)` checks a spec in milliseconds, before any work: the files exist,
csv options are known, a dataset name is one of the offline builders or prepared under
`data_dir` (else the known names and a "did you mean", never TFDS's catalogue).

Every source is random access (`len`, `source[i] -> dict`) with the same keys: `image`
uint8 [h, w, c] or `text` str, plus `label` int. Bad input is a ValueError naming the file
and row (or array index); a file that cannot be read or decoded is its subclass `DataError`,
which the training mains report as one line even when a batch read mid-run meets it.

Labels (CSV and npz without class names): the distinct values present, sorted (integers
numerically, names as strings), become classes 0, 1, ...; a label of 10**9 is one class named
"1000000000", never a range of 10**9 names. Negative integer labels, empty labels and more
than `MAX_CLASSES` classes are refused. Images: 16-bit images are scaled to 8 bits by their
bit depth, float images from [0, 1] (or [0, 255]) to 0..255; zero-sized images and channel
counts other than 1, 3 or 4 are refused, naming the file (npz: at load time, never mid-run).

Sizes a file declares are checked before anything is allocated for them (`check_npz`,
`check_npy`): an npz member's zip sizes must be possible (a deflated one within 1032:1, a zip
bomb's lie), its .npy header's shape x dtype must be exactly the member's bytes, and all
members together at most `MAX_NPZ_BYTES`; a .npy image's header must match the file's size
and pass `check_image_shape` before its data is read.
"""

import contextlib
import dataclasses
import difflib
import hashlib
import importlib.util
import math
import os
import pathlib
import re
import zipfile
from collections.abc import Sequence

import numpy as np

from jaxpretrain import safe_io
from jaxpretrain.data import builders, sources

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "validation", "test", "all")  # "all" = the whole user dataset, unsplit.
KINDS = ("folder", "csv", "npz", "tfds")
CSV_OPTIONS = ("test", "text", "label")  # csv:PATH?test=...&text=...&label=...
_IMAGE_KEYS = ("image", "images", "x", "X", "inputs", "data")
_LABEL_KEYS = ("label", "labels", "y", "Y", "target", "targets")
# The head has one output per class and the final metrics hold a [classes, classes] confusion
# matrix (10,000 classes: 800 MB of int64), so more classes than this are a label column that
# is not one (ids, free text) rather than a task; ImageNet-21k-scale label sets need their own
# pipeline.
MAX_CLASSES = 10_000
# CSV labels of this many digits at most are integers (they fit int64, like npz labels);
# a longer digit string is a class name, so no label can overflow or be a 4,300-digit int.
_INT_LABEL = re.compile(r"-?[0-9]{1,18}")
IMAGE_CHANNELS = (1, 3, 4)  # gray, RGB, RGBA (alpha dropped)
# An npz is read whole into memory (and the chosen split copied once more), so its members may
# declare at most this many bytes in all: CIFAR-10 is 0.18 GB, ImageNet at 32x32 3.9 GB; larger
# data belongs in a folder: or TFDS dataset, read as it trains. A bigger claim (a zip bomb: a few
# KB of deflated zeros declaring GBs) is refused before anything is decompressed.
MAX_NPZ_BYTES = 8 << 30
_SHOWN = 10  # error messages list at most this many names


def has_pil() -> bool:
  return importlib.util.find_spec("PIL") is not None


class DataError(ValueError):
  """A dataset file that cannot be read or decoded; the message names the file."""


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What a model needs to know about a dataset."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  modality: str  # "image" | "text"
  image_shape: tuple[int, int, int] | None  # [height, width, channels] of example 0; text: None
  num_examples: int  # In the loaded split.


class ArraySource:
  """Images and labels held in memory: `source[i] -> {"image": [h, w, c] uint8, "label"}`."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": int(self.labels[i])}


class TextSource:
  """Texts and labels in memory: `source[i] -> {"text": str, "label": int}`."""

  def __init__(self, texts: Sequence[str], labels: np.ndarray):
    self.texts, self.labels = list(texts), labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"text": self.texts[i], "label": int(self.labels[i])}


class FileImageSource:
  """Image files decoded on access; a file that does not decode is a ValueError naming it."""

  def __init__(self, paths: Sequence[pathlib.Path], labels: np.ndarray, channels: int):
    self.paths, self.labels, self.channels = list(paths), labels, channels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"image": read_image(self.paths[i], self.channels), "label": int(self.labels[i])}


class TfdsSource:
  """A `tfds.data_source` with its feature keys renamed to `image`/`text` and `label`."""

  def __init__(self, data_source, input_key: str, label_key: str, modality: str):
    self.data_source, self.input_key, self.label_key = data_source, input_key, label_key
    self.modality = modality

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, i: int) -> dict:
    return self._convert(self.data_source[i])

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    """Batched read (one array_record call), ~2x faster than reading one by one."""
    return [self._convert(ex) for ex in self.data_source.__getitems__(list(indices))]

  def _convert(self, ex: dict) -> dict:
    x = ex[self.input_key]
    if self.modality == "text":
      x = x.decode("utf-8") if isinstance(x, bytes) else str(x)
    return {self.modality: x, "label": int(ex[self.label_key])}


class Subset:
  """Rows `indices` of a random-access source, with its batched read when it has one."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict:
    return self.source[int(self.indices[i])]

  def __getitems__(self, rows: Sequence[int]) -> list[dict]:
    idx = [int(self.indices[i]) for i in rows]
    if hasattr(self.source, "__getitems__"):
      return self.source.__getitems__(idx)
    return [self.source[i] for i in idx]


def source_labels(source, chunk: int = 1024) -> np.ndarray:
  """int64 [n] labels of every example (the in-memory array when the source has one)."""
  if hasattr(source, "labels"):
    return np.asarray(source.labels, np.int64)
  out = []
  for start in range(0, len(source), chunk):
    rows = range(start, min(start + chunk, len(source)))
    examples = (source.__getitems__(list(rows)) if hasattr(source, "__getitems__")
                else [source[i] for i in rows])
    out += [ex["label"] for ex in examples]
  return np.asarray(out, np.int64)


def read_image(path: pathlib.Path, channels: int) -> np.ndarray:
  """Decodes one image file to uint8 [h, w, channels] (1 = grayscale, 3 = RGB)."""
  try:
    if path.suffix.lower() == ".npy":
      image = _read_npy_image(path)
    else:
      import PIL.Image  # Lazy: optional dependency.

      with PIL.Image.open(path) as im:
        image = _pil_array(im, channels)
  except DataError:
    raise
  except Exception as e:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, ...
    raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None
  if image.ndim not in (2, 3):
    raise DataError(f"{path}: {image.dtype} array of shape {image.shape}; "
                    "expected [h, w] or [h, w, c]")
  image = to_uint8(image[..., None] if image.ndim == 2 else image, str(path))
  check_image_shape(image.shape, str(path))
  return to_channels(image, channels, str(path))


def _read_npy_image(path: pathlib.Path) -> np.ndarray:
  """A .npy image, its header checked before the data is read: [h, w] or [h, w, c] within
  `check_image_shape`, and shape x itemsize exactly the bytes after the header."""
  with open(path, "rb") as f:
    shape, dtype = check_npy(f, os.fstat(f.fileno()).st_size, str(path))
    if len(shape) not in (2, 3):
      raise DataError(f"{path}: {dtype} array of shape {shape}; expected [h, w] or [h, w, c]")
    check_image_shape(shape if len(shape) == 3 else (*shape, 1), str(path))
    f.seek(0)
    return np.load(f, allow_pickle=False)


def check_npy(fp, size: int, where: str, limit: int | None = None, limit_name: str = ""
              ) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of the .npy stream `fp` of `size` bytes, from its header alone (numpy
  reads at most 10,000 bytes of it): shape x itemsize must be exactly the bytes after the
  header, and at most `limit` (named `limit_name`), else a DataError naming `where` and the
  declared size; nothing is allocated for the data. Object arrays pass (np.load refuses them
  without allow_pickle)."""
  fmt = np.lib.format
  try:
    version = fmt.read_magic(fp)
    read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
    if read is None:
      raise ValueError(f"format version {version} is not read (1.0 and 2.0 are)")
    shape, _, dtype = read(fp)
    header = fp.tell()
  except Exception as e:  # noqa: BLE001 -- numpy and zipfile raise several kinds on junk
    raise DataError(f"{where}: not a readable .npy array ({type(e).__name__}: "
                    f"{safe_io.short(str(e), 160)})") from None
  if dtype.hasobject:
    return shape, dtype
  if any(d < 0 for d in shape):
    raise DataError(f"{where}: declares shape {safe_io.short(shape)}, with a negative size")
  nbytes = math.prod(shape) * dtype.itemsize
  declared = f"a {dtype} array of shape {safe_io.short(shape)} ({nbytes:,} bytes)"
  if limit is not None and nbytes > limit:
    raise DataError(f"{where}: declares {declared}, more than {limit_name}={limit:,}; "
                    "refused unread")
  if header + nbytes != size:
    raise DataError(f"{where}: declares {declared}, but holds {size - header:,} bytes of data; "
                    "a truncated or corrupt file")
  return shape, dtype


def check_npz(path: pathlib.Path) -> None:
  """Refuses an npz whose members declare sizes they cannot have or more than MAX_NPZ_BYTES in
  all, before np.load allocates or decompresses anything: every member's zip sizes must be
  possible (`safe_io.check_zip`: a deflated one within 1032:1), and every .npy member's
  header (shape x dtype) must be exactly its declared size (`check_npy`). Each refusal is one
  DataError naming the file, the member and the declared size; an archive zipfile cannot
  open raises zipfile.BadZipFile (the caller names it)."""
  with open(path, "rb") as f, zipfile.ZipFile(f) as z:
    safe_io.check_zip(z, os.fstat(f.fileno()).st_size, str(path), DataError)
    total = 0
    for info in z.infolist():
      where = f"{path}: member {safe_io.short(info.filename)}"
      total += info.file_size
      if total > MAX_NPZ_BYTES:
        raise DataError(f"{where}: declares {info.file_size:,} bytes ({total:,} in all so far), "
                        f"more than MAX_NPZ_BYTES={MAX_NPZ_BYTES:,}; refused unread (large data "
                        "belongs in a folder: or TFDS dataset)")
      if info.filename.endswith(".npy"):
        with z.open(info) as member:
          check_npy(member, info.file_size, where, MAX_NPZ_BYTES, "MAX_NPZ_BYTES")


def _pil_array(im, channels: int) -> np.ndarray:
  """A PIL image as an array; 16-bit ("I;16", "I") and float ("F") modes keep their values
  (scaled by `to_uint8`), since PIL's convert("L") would clip them to 2 grey levels."""
  if im.mode.startswith("I;16") or im.mode in ("I", "F"):
    return np.asarray(im)
  return np.asarray(im.convert("L" if channels == 1 else "RGB"))


def to_uint8(image: np.ndarray, where: str) -> np.ndarray:
  """uint8 as is; 16-bit by bit depth (x * 255 / 65535); floats in [0, 1] times 255, floats
  in [0, 255] as they are; anything else is a DataError naming `where`."""
  if image.dtype == np.uint8:
    return image
  if image.size == 0:
    return image.astype(np.uint8)
  if np.issubdtype(image.dtype, np.integer):
    low, high = int(image.min()), int(image.max())
    if image.dtype.itemsize <= 4 and low >= 0 and high <= 65535:  # PIL's "I" holds 16 bits
      return np.round(image.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    raise DataError(f"{where}: {image.dtype} image with values in [{low}, {high}]; allowed: "
                    "uint8, or 16-bit values in [0, 65535]")
  if np.issubdtype(image.dtype, np.floating):
    x = image.astype(np.float64)
    if not np.all(np.isfinite(x)):
      raise DataError(f"{where}: {image.dtype} image with non-finite values")
    low, high = float(x.min()), float(x.max())
    if low >= 0.0 and high <= 1.0:
      return np.round(x * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
      return np.round(x).astype(np.uint8)
    raise DataError(f"{where}: {image.dtype} image with values in [{low:g}, {high:g}]; "
                    "allowed: floats in [0, 1] or [0, 255]")
  raise DataError(f"{where}: {image.dtype} image; allowed: uint8, uint16 or float")


def check_image_shape(shape: tuple, where: str) -> None:
  """[..., h, w, c]: h and w at least 1 and c in IMAGE_CHANNELS, else a DataError."""
  h, w, c = shape[-3:]
  if h < 1 or w < 1:
    raise DataError(f"{where}: image of height {h} and width {w}; both must be >= 1")
  if c not in IMAGE_CHANNELS:
    raise DataError(f"{where}: image with {c} channels (shape {tuple(shape)}); allowed: "
                    f"{', '.join(map(str, IMAGE_CHANNELS))}")


def to_channels(image: np.ndarray, channels: int, where: str = "image") -> np.ndarray:
  """[h, w, c] -> [h, w, channels]: gray is repeated to RGB, RGB is averaged to gray."""
  c = image.shape[-1]
  if c == channels:
    return image
  if c == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if c in (3, 4) and channels == 1:  # ITU-R 601-2 luma, as PIL's convert("L").
    luma = image[..., :3].astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    return np.round(luma)[..., None].astype(image.dtype)
  if c == 4 and channels == 3:
    return image[..., :3]
  raise ValueError(f"{where}: {c} channels cannot become {channels}; allowed: 1, 3, 4 -> 1, 3")


def load_dataset(spec: str, data_dir: str | None = None, split: str = "train", *,
                 text_column: str = "text", label_column: str = "label",
                 image_key: str | None = None, label_key: str | None = None,
                 class_names: Sequence[str] | None = None, test_fraction: float = 0.2,
                 seed: int = 0, channels: int | None = None,
                 encoding_errors: str = "strict", validation_fraction: float = 0.0):
  """Loads any supported dataset as a random-access source plus its metadata.

  Args:
    spec: "folder:PATH", "csv:PATH", "npz:PATH", "tfds:NAME" or a TFDS NAME.
    data_dir: TFDS data dir (default `builders.default_data_dir()`); unused for user data.
    split: "train", "validation" or "test" ("all" for user data, unsplit; any TFDS split
      string, e.g. "train[:10%]", for TFDS names).
    text_column, label_column: CSV column names (the spec's text=/label= options win).
    image_key, label_key: npz array names or TFDS feature names; None detects them.
    class_names: CSV/npz label names; integer labels must lie in [0, len(class_names)).
    test_fraction: share of each class held out as "test" when the data has no split.
    seed: seed of that stratified split.
    channels: folder images are converted to this (1 or 3); None follows the first image.
    encoding_errors: CSV decoding, "strict" (non-UTF-8 is a ValueError) or "replace".
    validation_fraction: user data: share of each class of the training part held out as
      "validation" (0: no validation split, "train" is the whole training part).

  Returns:
    (source, meta): `source[i]` is {"image": uint8 [h, w, c] | "text": str, "label": int}.
  """
  kind, _, path = spec.partition(":")
  if not path:
    kind, path = "tfds", spec
  if kind == "tfds":
    return load_tfds(path, data_dir, split, image_key=image_key, label_key=label_key)
  if split not in SPLITS:
    raise ValueError(f"unknown split '{split}' for {spec}; allowed: {SPLITS}")
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction={validation_fraction}; allowed: in [0, 1)")
  vf = validation_fraction
  if kind == "folder":
    return load_folder(pathlib.Path(path), split, test_fraction=test_fraction, seed=seed,
                       channels=channels, validation_fraction=vf)
  if kind == "csv":
    path, options = parse_csv_spec(path)
    test = options.get("test")
    return load_csv(pathlib.Path(path), split, text_column=options.get("text", text_column),
                    label_column=options.get("label", label_column), class_names=class_names,
                    test_fraction=test_fraction, seed=seed, encoding_errors=encoding_errors,
                    test_path=pathlib.Path(test) if test else None, validation_fraction=vf)
  if kind == "npz":
    return load_npz(pathlib.Path(path), split, image_key=image_key, label_key=label_key,
                    class_names=class_names, test_fraction=test_fraction, seed=seed,
                    validation_fraction=vf)
  raise ValueError(f"unknown dataset kind '{kind}' in '{spec}'; "
                   "allowed: folder:, csv:, npz:, tfds: or a TFDS name")


def parse_csv_spec(rest: str) -> tuple[str, dict[str, str]]:
  """'PATH?test=T.csv&text=body&label=topic' -> (PATH, {"test": ..., ...}); see the docstring."""
  path, sep, query = rest.partition("?")
  if not path:
    raise ValueError(f"csv:{rest}: no file before '?'")
  if not sep:
    return path, {}
  options: dict[str, str] = {}
  unknown = []
  for item in query.split("&"):
    key, eq, value = item.partition("=")
    if not eq or not key or not value:
      raise ValueError(f"csv:{rest}: option {item!r} is not KEY=VALUE; keys: "
                       f"{', '.join(CSV_OPTIONS)}")
    if key not in CSV_OPTIONS:
      unknown.append(key)
    elif key in options:
      raise ValueError(f"csv:{rest}: option '{key}' given twice")
    options[key] = value
  if unknown:
    raise ValueError(f"csv:{rest}: unknown option(s) {', '.join(map(repr, unknown))}; "
                     f"allowed: {', '.join(CSV_OPTIONS)} (csv:TRAIN.csv?test=TEST.csv&"
                     "text=COLUMN&label=COLUMN)")
  return path, options


def _known_tfds_names(root: pathlib.Path) -> list[str]:
  """The offline builders plus the datasets prepared under `root` (folder names)."""
  names = set(builders.BUILDERS)
  with contextlib.suppress(OSError):  # no such folder yet: only the builders
    names |= {d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
              and d.name != "downloads"}
  return sorted(names)


def check_spec(spec: str, data_dir: str | None = None) -> None:
  """Checks a dataset spec without loading it (milliseconds); ValueError says what is wrong.

  Files and folders must exist, csv options be known, and a TFDS name be an offline builder
  or prepared under `data_dir` (a typo lists the known names with a "did you mean").
  """
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"{spec!r}: empty; allowed: {', '.join(builders.BUILDERS)}, folder:PATH, "
                     "csv:PATH, npz:PATH or tfds:NAME")
  kind, sep, path = spec.partition(":")
  if not sep:
    kind, path = "tfds", spec
  if kind not in KINDS:
    close = difflib.get_close_matches(kind, KINDS, n=1)
    hint = f"; did you mean '{close[0]}:'?" if close else ""
    raise ValueError(f"unknown dataset kind '{kind}:' in '{spec}'{hint} allowed: folder:, "
                     "csv:, npz:, tfds: or a dataset name")
  if kind == "csv":
    path, options = parse_csv_spec(path)
    for file in (path, options.get("test")):
      if file is not None and not pathlib.Path(file).is_file():
        raise ValueError(f"{file}: no such CSV file")
  elif kind == "npz" and not pathlib.Path(path).is_file():
    raise ValueError(f"{path}: no such npz file")
  elif kind == "folder" and not pathlib.Path(path).is_dir():
    raise ValueError(f"{path}: not a folder")
  elif kind == "tfds" and path not in builders.BUILDERS:
    root = pathlib.Path(data_dir or builders.default_data_dir())
    name = path.split("/")[0].split(":")[0]  # TFDS names may be NAME/CONFIG:VERSION
    if name and (root / name).is_dir():
      return
    known = _known_tfds_names(root)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
    raise ValueError(f"unknown dataset '{path}'{hint} known: {_shown(known)} (the offline "
                     f"builders and what is prepared in {root}), or folder:PATH, csv:PATH, "
                     "npz:PATH")


def _select_split(labels: np.ndarray, split: str, test_fraction: float, seed: int,
                  where: str, validation_fraction: float = 0.0,
                  own_test: bool = False) -> np.ndarray:
  """Indices of `split` in a dataset that has none of its own (stratified, seeded).

  `own_test`: the labels are the training part only (the test part lies elsewhere), so only
  the validation split is carved from them. "validation" is `validation_fraction` of each
  class of the training part, and "train" the rest.
  """
  if len(labels) == 0:
    raise ValueError(f"{where}: no examples")
  if split == "all":
    return np.arange(len(labels))
  if own_test:
    train, test = np.arange(len(labels), dtype=np.int64), None
  else:
    train, test = sources.stratified_split(labels, test_fraction, seed)
  if split == "test":
    indices = test
  elif validation_fraction:
    keep, val = sources.stratified_split(labels[train], validation_fraction, seed)
    indices = train[keep] if split == "train" else train[val]
  elif split == "validation":
    raise ValueError(f"{where}: no validation split (validation_fraction=0)")
  else:
    indices = train
  if len(indices) == 0:
    raise ValueError(f"{where}: split '{split}' is empty ({len(labels)} examples, "
                     f"test_fraction={test_fraction}, validation_fraction="
                     f"{validation_fraction}); use more data or another fraction")
  return indices


def _check_labels(labels: np.ndarray, num_classes: int, describe) -> None:
  """Integer labels must lie in [0, num_classes); `describe(i)` names example i."""
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if len(bad):
    i = int(bad[0])
    raise ValueError(f"{describe(i)}: label {labels[i]} out of range [0, {num_classes}) "
                     f"({len(bad)} such labels)")


def _check_num_classes(n: int, where: str, what: str) -> None:
  if n > MAX_CLASSES:
    raise ValueError(f"{where}: {n:,} {what}; at most MAX_CLASSES={MAX_CLASSES:,} classes "
                     "(is that column really a class label?)")


def _shown(names) -> str:
  """At most _SHOWN names for an error message."""
  names = list(names)
  more = f", ... ({len(names):,} in all)" if len(names) > _SHOWN else ""
  return repr(names[:_SHOWN])[:-1] + more + "]"


def _remap(labels: np.ndarray, where: str, describe) -> tuple[np.ndarray, tuple[str, ...]]:
  """Integer labels -> (indices into their sorted distinct values, those values as names)."""
  negative = np.flatnonzero(labels < 0)
  if len(negative):
    i = int(negative[0])
    raise ValueError(f"{describe(i)}: label {labels[i]} out of range: integer labels must be "
                     f">= 0 ({len(negative)} negative labels)")
  values = np.unique(labels)
  _check_num_classes(len(values), where, "distinct labels")
  return np.searchsorted(values, labels).astype(np.int64), tuple(str(v) for v in values)


def _class_dirs(root: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  exts = (".npy", *PIL_EXTENSIONS) if has_pil() else (".npy",)
  files = sorted(p for p in folder.rglob("*")
                 if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts)
  if not files and not has_pil() and any(
      p.suffix.lower() in PIL_EXTENSIONS for p in folder.rglob("*")):
    raise ValueError(f"{folder}: image files need PIL; run `pip install pillow`")
  return files


def _scan_folder(root: pathlib.Path, class_names: Sequence[str]) -> tuple[list, np.ndarray]:
  """(image paths, labels) of root/<class>/..., erroring on unknown or image-less classes."""
  paths, labels = [], []
  for d in _class_dirs(root):
    if d.name not in class_names:
      raise ValueError(f"{d}: class '{d.name}' is not in the train classes {list(class_names)}")
    files = _image_files(d)
    if not files:
      raise ValueError(f"{d}: no image files (looked for .npy"
                       f"{', ' + ', '.join(PIL_EXTENSIONS) if has_pil() else ''})")
    paths += files
    labels += [class_names.index(d.name)] * len(files)
  return paths, np.asarray(labels, np.int64)


def load_folder(root: pathlib.Path, split: str, *, test_fraction: float = 0.2, seed: int = 0,
                channels: int | None = None, validation_fraction: float = 0.0):
  """`folder:PATH`; see `load_dataset`."""
  if not root.is_dir():
    raise ValueError(f"{root}: not a folder")
  has_splits = (root / "train").is_dir() and (root / "test").is_dir()
  class_root = root / "train" if has_splits else root
  class_names = tuple(d.name for d in _class_dirs(class_root))
  if not class_names:
    raise ValueError(f"{class_root}: no class sub-folders (expected {class_root}/<class>/*)")
  if has_splits:
    if split == "all":
      raise ValueError(f"{root} has train/ and test/; ask for split 'train' or 'test'")
    folder = root / ("test" if split == "test" else "train")
    paths, labels = _scan_folder(folder, class_names)
    if not paths:
      raise ValueError(f"{folder}: split '{split}' is empty (no class sub-folders)")
    if split != "test":
      keep = _select_split(labels, split, test_fraction, seed, str(folder),
                           validation_fraction, own_test=True)
      paths, labels = [paths[i] for i in keep], labels[keep]
  else:
    paths, labels = _scan_folder(root, class_names)
    keep = _select_split(labels, split, test_fraction, seed, str(root), validation_fraction)
    paths, labels = [paths[i] for i in keep], labels[keep]
  if channels is None:
    first = read_image(paths[0], 3)
    gray = bool(np.all(first == first[..., :1]))  # Gray files decode to equal RGB planes.
    channels = 1 if gray else 3
  source = FileImageSource(paths, labels, channels)
  shape = tuple(source[0]["image"].shape)
  return source, DatasetMeta(f"folder:{root}", len(class_names), class_names, "image", shape,
                             len(source))


def load_csv(path: pathlib.Path, split: str, *, text_column: str = "text",
             label_column: str = "label", class_names: Sequence[str] | None = None,
             test_fraction: float = 0.2, seed: int = 0, encoding_errors: str = "strict",
             test_path: pathlib.Path | None = None, validation_fraction: float = 0.0):
  """`csv:PATH` (with `test_path`: `csv:PATH?test=TEST`); see `load_dataset`."""
  file = test_path if test_path is not None and split == "test" else path
  texts, labels, class_names = _read_labelled_csv(
      file, text_column, label_column, class_names, encoding_errors)
  if file is test_path:
    keep = np.arange(len(labels))
    if not len(keep):
      raise ValueError(f"{file}: no examples")
  else:
    keep = _select_split(labels, split, test_fraction, seed, str(path), validation_fraction,
                         own_test=test_path is not None)
  source = TextSource([texts[i] for i in keep], labels[keep])
  name = f"csv:{path}" + (f"?test={test_path}" if test_path is not None else "")
  return source, DatasetMeta(name, len(class_names), class_names, "text", None, len(source))


def _read_labelled_csv(path: pathlib.Path, text_column: str, label_column: str, class_names,
                       encoding_errors: str) -> tuple[list[str], np.ndarray, tuple]:
  """(texts, int labels, class names) of every row of one CSV file."""
  if not path.is_file():
    raise ValueError(f"{path}: no such CSV file")
  rows = sources.read_csv(path, errors=encoding_errors)
  columns = [c for c in rows[0][1] if c is not None] if rows else []
  for col in (text_column, label_column):
    if rows and col not in columns:
      raise ValueError(f"{path}: no column '{col}'; columns: {columns}")
  texts, raw = [], []
  for line, row in rows:
    if row[text_column] is None or row[label_column] is None:
      raise ValueError(f"{path}:{line}: row has fewer fields than the header")
    if None in row:  # csv.DictReader's key of the fields beyond the header's
      raise ValueError(f"{path}:{line}: {len(columns) + len(row[None])} fields but the header "
                       f"has {len(columns)}; quote fields that contain commas")
    texts.append(row[text_column])
    raw.append(row[label_column].strip())
  labels, class_names = _parse_labels(raw, class_names, lambda i: f"{path}:{rows[i][0]}",
                                      str(path))
  return texts, labels, class_names


def _parse_labels(raw: list[str], class_names, describe,
                  where: str) -> tuple[np.ndarray, tuple]:
  """CSV label strings -> int labels: integers, or names in `class_names` (or sorted).

  Without `class_names`, the distinct labels present are the classes, sorted (integers
  numerically). With them, integer labels index them and names must be among them.
  """
  for i, s in enumerate(raw):
    if not s:
      raise ValueError(f"{describe(i)}: empty label")
  if class_names is not None:
    _check_num_classes(len(class_names), where, "class names")
  if all(_INT_LABEL.fullmatch(s) for s in raw):
    labels = np.asarray([int(s) for s in raw], np.int64)
    if not class_names:
      return _remap(labels, where, describe)
    _check_labels(labels, len(class_names), describe)
    return labels, tuple(class_names)
  if not class_names:
    class_names = tuple(sorted(set(raw)))
    _check_num_classes(len(class_names), where, "distinct labels")
  index = {name: i for i, name in enumerate(class_names)}
  for i, s in enumerate(raw):
    if s not in index:
      raise ValueError(f"{describe(i)}: label {s[:100]!r} is not a class; known: "
                       f"{_shown(class_names)}")
  return np.asarray([index[s] for s in raw], np.int64), tuple(class_names)


def _find_key(arrays, given: str | None, candidates: Sequence[str], what: str, path) -> str:
  if given is not None:
    if given not in arrays:
      raise ValueError(f"{path}: no array '{given}'; arrays: {list(arrays)}")
    return given
  for key in candidates:
    if key in arrays:
      return key
  raise ValueError(f"{path}: cannot find the {what} array among {list(arrays)}; "
                   f"name it one of {list(candidates)} or pass the key")


def load_npz(path: pathlib.Path, split: str, *, image_key: str | None = None,
             label_key: str | None = None, class_names: Sequence[str] | None = None,
             test_fraction: float = 0.2, seed: int = 0, validation_fraction: float = 0.0):
  """`npz:PATH`; see `load_dataset`."""
  if not path.is_file():
    raise ValueError(f"{path}: no such npz file")
  try:
    check_npz(path)  # declared sizes, before np.load allocates them
    with np.load(path, allow_pickle=False) as f:
      arrays = dict(f)
  except DataError:
    raise
  except (ValueError, OSError, EOFError, zipfile.BadZipFile, MemoryError) as e:
    # ValueError: an object array (e.g. images of mixed sizes), which would need pickle.
    raise DataError(f"{path}: not a readable npz file ({type(e).__name__}: {e}); expected "
                    "numeric arrays, e.g. uint8 images [n, h, w(, c)] and int labels [n]"
                    ) from None
  part = "train" if split == "validation" else split  # validation is carved from x_train
  split_keys = split != "all" and f"x_{part}" in arrays and f"y_{part}" in arrays
  if split_keys and image_key is None and label_key is None:  # Keras-style mnist.npz.
    image_key, label_key = f"x_{part}", f"y_{part}"
  image_key = _find_key(arrays, image_key, _IMAGE_KEYS, "image", path)
  label_key = _find_key(arrays, label_key, _LABEL_KEYS, "label", path)
  images, labels = arrays[image_key], arrays[label_key]
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"{path}: '{image_key}' is {images.dtype} {images.shape}; "
                     "expected uint8 [n, h, w] or [n, h, w, c]")
  check_image_shape(images.shape, f"{path}: '{image_key}'")
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{path}: '{label_key}' is {labels.dtype} {labels.shape}; expected int [n]")
  if len(images) != len(labels):
    raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
  if class_names is None and "class_names" in arrays:
    names = arrays["class_names"]
    if names.ndim != 1:
      raise ValueError(f"{path}: 'class_names' has shape {names.shape}; expected [classes]")
    _check_num_classes(len(names), f"{path}: 'class_names'", "class names")
    class_names = [str(c) for c in names]
  describe = lambda i: f"{path}: {label_key}[{i}]"  # noqa: E731
  if class_names is not None:
    _check_num_classes(len(class_names), str(path), "class names")
    class_names = tuple(class_names)
    _check_labels(labels, len(class_names), describe)
    labels = labels.astype(np.int64)
  else:
    # The classes are those of every split in the file, so train and test agree.
    keys = [label_key] + [k for k in ("y_train", "y_test") if split_keys and k != label_key
                          and k in arrays and arrays[k].ndim == 1
                          and np.issubdtype(arrays[k].dtype, np.integer)]
    for k in keys:
      _remap(arrays[k], str(path), lambda i, k=k: f"{path}: {k}[{i}]")  # checks each split
    indices, class_names = _remap(np.concatenate([arrays[k] for k in keys]), str(path),
                                  describe)
    labels = indices[:len(labels)]
  if not split_keys or part == "train":
    keep = _select_split(labels, split, test_fraction, seed, str(path), validation_fraction,
                         own_test=split_keys)
    images, labels = images[keep], labels[keep]
  if len(labels) == 0:
    raise ValueError(f"{path}: split '{split}' is empty")
  source = ArraySource(images, labels.astype(np.int64))
  return source, DatasetMeta(f"npz:{path}", len(class_names), class_names, "image",
                             tuple(images.shape[1:]), len(source))


def load_tfds(name: str, data_dir: str | None, split: str, *, image_key: str | None = None,
              label_key: str | None = None):
  """A prepared TFDS dataset (our offline builders are built first); see `load_dataset`."""
  import tensorflow_datasets as tfds

  data_dir = data_dir or builders.default_data_dir()
  check_spec(f"tfds:{name}", data_dir)  # a typo: the known names, not TFDS's catalogue
  if name in builders.BUILDERS:
    builders.ensure_built(name, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # Unknown name or missing files.
    first = " ".join(str(e).split("\n")[0].split())[:300]  # TFDS appends its catalogue
    raise ValueError(f"TFDS dataset '{name}' not found in {data_dir} ({first}); offline "
                     f"builders: {sorted(builders.BUILDERS)}") from None
  if not builder.is_prepared():
    raise ValueError(f"TFDS dataset '{name}' is not prepared in {data_dir}; nothing is "
                     "downloaded at run time, so prepare it first")
  features = builder.info.features
  kinds = {k: type(v).__name__ for k, v in features.items()}
  label_key = label_key or next((k for k, t in kinds.items() if t == "ClassLabel"), None)
  input_key = image_key or next((k for k, t in kinds.items() if t in ("Image", "Text")), None)
  if label_key not in kinds or input_key not in kinds:
    raise ValueError(f"{name}: need an Image or Text feature and a ClassLabel; features: "
                     f"{kinds}")
  modality = "text" if kinds[input_key] == "Text" else "image"
  source = TfdsSource(tfds.data_source(name, split=split, data_dir=data_dir, download=False),
                      input_key,
                      label_key, modality)
  if len(source) == 0:
    raise ValueError(f"{name}: split '{split}' in {data_dir} is empty")
  shape = tuple(features[input_key].shape) if modality == "image" else None
  names = tuple(features[label_key].names)
  return source, DatasetMeta(name, len(names), names, modality, shape, len(source))


# Folder datasets up to this size are fingerprinted by content; larger ones by file names,
# sizes and modification times (hashing more would cost seconds at every start).
FINGERPRINT_CONTENT_BYTES = 1 << 30
_HASH_CHUNK = 1 << 20


def fingerprint(spec: str, data_dir: str | None = None) -> dict:
  """What identifies a dataset's contents, JSON-ready, for refusing to resume a run on data
  that changed: csv/npz files by size and SHA-256, folders by every image file's relative
  path and size plus their contents (or modification times past FINGERPRINT_CONTENT_BYTES),
  TFDS datasets by name, version and split sizes."""
  kind, _, path = spec.partition(":")
  if not path:
    kind, path = "tfds", spec
  if kind == "csv" and "?" in path:
    path, options = parse_csv_spec(path)
    files = [pathlib.Path(path)] + ([pathlib.Path(options["test"])] if "test" in options else [])
    return {"kind": kind, "options": options, "size": sum(f.stat().st_size for f in files),
            "sha256": _sha256(files)}
  if kind in ("csv", "npz"):
    file = pathlib.Path(path)
    return {"kind": kind, "size": file.stat().st_size, "sha256": _sha256([file])}
  if kind == "folder":
    root = pathlib.Path(path)
    exts = (".npy", *PIL_EXTENSIONS)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    sizes = [p.stat().st_size for p in files]
    by_content = sum(sizes) <= FINGERPRINT_CONTENT_BYTES
    index = hashlib.sha256()
    for p, size in zip(files, sizes, strict=True):
      stamp = "" if by_content else str(p.stat().st_mtime_ns)
      index.update(f"{p.relative_to(root).as_posix()}\0{size}\0{stamp}\n".encode())
    out = {"kind": kind, "files": len(files), "size": sum(sizes),
           "index_sha256": index.hexdigest()}
    if by_content:
      out["sha256"] = _sha256(files)
    return out
  import tensorflow_datasets as tfds

  info = tfds.builder(path, data_dir=data_dir or builders.default_data_dir()).info
  return {"kind": "tfds", "name": info.name, "version": str(info.version),
          "splits": {k: int(v.num_examples) for k, v in sorted(info.splits.items())}}


def _sha256(files: Sequence[pathlib.Path]) -> str:
  digest = hashlib.sha256()
  for file in files:
    with file.open("rb") as f:
      while chunk := f.read(_HASH_CHUNK):
        digest.update(chunk)
  return digest.hexdigest()


def describe(meta: DatasetMeta) -> str:
  """One line for logs: name, size, classes, modality and shape."""
  shape = f" {meta.image_shape}" if meta.image_shape else ""
  return (f"{meta.name}: {meta.num_examples} examples, {meta.num_classes} classes, "
          f"{meta.modality}{shape}")

