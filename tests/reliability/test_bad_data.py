"""Bad data reaches the user as one clear error naming the file (and the row or array index),
at start-up wherever it can be seen there, never as a traceback from deep in the pipeline.

Each case writes a small broken dataset and runs the real training loop on it (`job.run`);
the loaders' own unit tests are in tests/data. Images of mixed sizes are not an error: they
are resized, and a run on them trains.
"""

import io
import re
import zipfile

import numpy as np
import PIL.Image
import pytest

from jaxpretrain.job import ConfigError, finetune, run
from tests.reliability.conftest import make_images
from tests.reliability.test_hostile_checkpoints import set_central_size


def _png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(array).save(path)
  return path


def _folder(root, per_class=5, sizes=((8, 8),)):
  """root/c0, root/c1: gray PNGs cycling through `sizes`."""
  rs = np.random.RandomState(0)
  for c in range(2):
    for i in range(per_class):
      h, w = sizes[i % len(sizes)]
      _png(root / f"c{c}" / f"{i}.png", (rs.rand(h, w) * 255).astype(np.uint8))
  return root


def _csv(path, text):
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  return path


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return path


# A text model for the text cases that get past the modality check.
TINY_BERT = dict(model="bert", max_len=16, image_size=None, model_kwargs={
    "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 16})


def _rows(n=20):
  return "".join(f"text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(n))


def label_beyond_class_names(tmp):
  images, labels = make_images(20)
  labels[13] = 7
  path = _npz(tmp / "d.npz", image=images, label=labels, class_names=np.array(list("abcd")))
  return f"npz:{path}", rf"{path}: label\[13\]: label 7 out of range \[0, 4\)"


def negative_csv_label(tmp):
  path = _csv(tmp / "d.csv", "text,label\n" + "a,0\nb,1\n" * 5 + "c,-1\n")
  return f"csv:{path}", rf"{path}:12: label -1 out of range: integer labels must be >= 0"


def unquoted_comma(tmp):  # "hello, world" unquoted: 3 fields, and a class " world" before
  path = _csv(tmp / "d.csv", "text,label\n" + _rows(6) + "hello, world,pos\n")
  return f"csv:{path}", (rf"{path}:8: 3 fields but the header has 2; quote fields that "
                         "contain commas")


def empty_label(tmp):
  path = _csv(tmp / "d.csv", "text,label\n" + _rows(4) + "no label here,\n" + _rows(4))
  return f"csv:{path}", rf"{path}:6: empty label"


def field_past_the_csv_limit(tmp):  # csv's field_size_limit is 131,072 characters
  path = _csv(tmp / "d.csv", "text,label\n" + _rows(3) + "x" * 131_073 + ",pos\n")
  return f"csv:{path}", rf"{path}:5: field larger than field limit \(131072\)"


def too_many_classes(tmp):  # an id column given as the label: one class per row
  path = _csv(tmp / "d.csv", "text,label\n" + "".join(f"t,{i}\n" for i in range(10_001)))
  return f"csv:{path}", rf"{path}: 10,001 distinct labels; at most MAX_CLASSES=10,000 classes"


def single_class_csv(tmp):  # would train a one-output head and report accuracy 1.0
  path = _csv(tmp / "d.csv", "text,label\n" + "".join(f"t{i},pos\n" for i in range(20)))
  return f"csv:{path}", (r"the training split holds 1 class \('pos', 14 examples\); "
                         "classification needs at least 2"), TINY_BERT


def single_class_npz(tmp):  # class_names list four, but every label is 2
  images, _ = make_images(20)
  path = _npz(tmp / "d.npz", image=images, label=np.full(20, 2),
              class_names=np.array(list("abcd")))
  return f"npz:{path}", r"the training split holds 1 class \('c', 14 examples\)"


def zero_height_npz_images(tmp):
  path = _npz(tmp / "d.npz", image=np.zeros((20, 0, 8), np.uint8), label=np.arange(20) % 2)
  return f"npz:{path}", rf"{path}: 'image': image of height 0 and width 8; both must be >= 1"


def two_channel_npz_images(tmp):  # failed mid-run inside grain before
  path = _npz(tmp / "d.npz", image=np.zeros((20, 8, 8, 2), np.uint8), label=np.arange(20) % 2)
  return f"npz:{path}", (rf"{path}: 'image': image with 2 channels \(shape \(20, 8, 8, 2\)\); "
                         "allowed: 1, 3, 4")


def five_channel_npz_images(tmp):
  path = _npz(tmp / "d.npz", image=np.zeros((20, 8, 8, 5), np.uint8), label=np.arange(20) % 2)
  return f"npz:{path}", rf"{path}: 'image': image with 5 channels"


def zero_width_first_image(tmp):
  root = _folder(tmp / "imgs")
  np.save(root / "c0" / "0.npy", np.zeros((8, 0), np.uint8))  # sorts before 0.png
  return f"folder:{root}", rf"{root / 'c0' / '0.npy'}: image of height 8 and width 0"


def float_tiff_out_of_range(tmp):
  root = _folder(tmp / "imgs")
  bad = root / "c0" / "0-bad.tif"  # sorts first: decoded at start-up
  PIL.Image.fromarray(np.full((8, 8), 300.0, np.float32)).save(bad)
  return f"folder:{root}", (rf"{bad}: float32 image with values in "
                            r"\[300, 300\]; allowed: floats in \[0, 1\] or \[0, 255\]")


def ragged_npz_images(tmp):  # mixed sizes cannot be one array: an object array
  images = np.empty(20, object)
  images[:] = [np.zeros((8 + i % 2, 8), np.uint8) for i in range(20)]
  path = tmp / "d.npz"
  np.savez(path, image=images, label=np.arange(20) % 2)
  return f"npz:{path}", rf"{path}: not a readable npz file .*allow_pickle"


def truncated_npz(tmp):
  images, labels = make_images(20)
  path = _npz(tmp / "d.npz", image=images, label=labels)
  path.write_bytes(path.read_bytes()[:300])
  return f"npz:{path}", rf"{path}: not a readable npz file"


def float_npz_images(tmp):
  path = _npz(tmp / "d.npz", image=np.zeros((20, 8, 8), np.float32), label=np.arange(20) % 2)
  return f"npz:{path}", rf"{path}: 'image' is float32 \(20, 8, 8, 1\); expected uint8"


def npz_length_mismatch(tmp):
  images, labels = make_images(20)
  path = _npz(tmp / "d.npz", image=images, label=labels[:19])
  return f"npz:{path}", rf"{path}: 20 images but 19 labels"


def npz_without_labels(tmp):
  path = _npz(tmp / "d.npz", pixels=make_images(20)[0])
  return f"npz:{path}", rf"{path}: cannot find the image array among \['pixels'\]"


def empty_npz(tmp):
  path = _npz(tmp / "d.npz", image=np.zeros((0, 8, 8), np.uint8), label=np.zeros(0, np.int64))
  return f"npz:{path}", rf"{path}: no examples"


def empty_test_split(tmp):  # 2 per class: round(0.2 * 2) = 0 held out
  images, _ = make_images(4)
  path = _npz(tmp / "d.npz", image=images, label=np.array([0, 0, 1, 1]))
  return f"npz:{path}", rf"{path}: split 'test' is empty \(4 examples, test_fraction=0.2, "


def header_only_csv(tmp):
  path = _csv(tmp / "d.csv", "text,label\n")
  return f"csv:{path}", rf"{path}: no examples"


def non_utf8_csv(tmp):
  path = _csv(tmp / "d.csv", b"text,label\n" + _rows(3).encode() + b"caf\xe9 au lait,pos\n")
  return f"csv:{path}", rf"{path}:5: not UTF-8 \(byte 0xe9 at offset \d+\)"


def csv_without_the_columns(tmp):
  path = _csv(tmp / "d.csv", "sentence,target\n" + _rows())
  return f"csv:{path}", (rf"{path}: no column 'text'; columns: \['sentence', 'target'\]")


def csv_short_row(tmp):
  path = _csv(tmp / "d.csv", "text,label\n" + _rows(6) + "only text\n")
  return f"csv:{path}", rf"{path}:8: row has fewer fields than the header"


def missing_csv(tmp):
  return f"csv:{tmp / 'nope.csv'}", rf"{tmp / 'nope.csv'}: no such CSV file"


def text_for_an_image_model(tmp):
  path = _csv(tmp / "d.csv", "text,label\n" + _rows())
  return f"csv:{path}", r"holds texts but the model 'resnet_tiny' \(resnet\) takes images"


def folder_class_without_images(tmp):
  root = _folder(tmp / "imgs")
  (root / "c2").mkdir()
  (root / "c2" / "notes.txt").write_text("no images here")
  return f"folder:{root}", rf"{root / 'c2'}: no image files \(looked for .npy, .png"


def folder_without_classes(tmp):
  (tmp / "imgs").mkdir()
  (tmp / "imgs" / "0.png").write_bytes(b"")
  return f"folder:{tmp / 'imgs'}", rf"{tmp / 'imgs'}: no class sub-folders"


def missing_folder(tmp):
  return f"folder:{tmp / 'nope'}", rf"{tmp / 'nope'}: not a folder"


def corrupt_first_image(tmp):
  root = _folder(tmp / "imgs")
  (root / "c0" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  return f"folder:{root}", rf"cannot decode image {root / 'c0' / '0.png'}: "


# Hostile npz files: real np.save / np.savez output with a size edited, refused from the
# declared sizes before np.load allocates or decompresses anything.

def _npy(array, shape=None) -> bytes:
  """np.save's bytes of `array`, its header declaring `shape` instead (the data unchanged)."""
  buf = io.BytesIO()
  np.save(buf, array)
  raw = buf.getvalue()
  if shape is None:
    return raw
  old, new = repr(array.shape).encode(), repr(tuple(shape)).encode()
  at, end = raw.index(old), raw.index(b"\n")  # the header is padded with spaces to its "\n"
  padding = raw[at + len(old):end] + b" " * max(0, len(old) - len(new))
  return raw[:at] + new + padding[:len(padding) - max(0, len(new) - len(old))] + raw[end:]


def _npz_declaring(path, shape):
  """An npz (stored, as np.savez writes it) of 20 seeded [8, 8, 1] images, its header saying
  `shape`."""
  images, labels = make_images(20)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("image.npy", _npy(images, shape))
    z.writestr("label.npy", _npy(labels))
  return path


def npz_header_declaring_128_gb(tmp):  # np.load allocated the declared array first
  path = _npz_declaring(tmp / "d.npz", (2_000_000_000, 8, 8, 1))
  return f"npz:{path}", (
      rf"{path}: member 'image.npy': declares a uint8 array of shape \(2000000000, 8, 8, 1\) "
      r"\(128,000,000,000 bytes\), more than MAX_NPZ_BYTES=8,589,934,592; refused unread")


def npz_header_declaring_more_than_it_holds(tmp):
  path = _npz_declaring(tmp / "d.npz", (21, 8, 8, 1))
  return f"npz:{path}", (rf"{path}: member 'image.npy': declares a uint8 array of shape "
                         r"\(21, 8, 8, 1\) \(1,344 bytes\), but holds 1,280 bytes of data")


def npz_deflated_member_claiming_4_gb(tmp):  # a few hundred bytes declaring 4 GiB
  images, labels = make_images(20)
  path = tmp / "d.npz"
  np.savez_compressed(path, image=images, label=labels)
  set_central_size(path, "label.npy", 2**32 - 2)
  return f"npz:{path}", (rf"{path}: member 'label.npy' declares 4,294,967,294 bytes from \d+ "
                         "compressed, more than deflate's 1032:1 allows; a zip bomb")


CASES = [label_beyond_class_names, negative_csv_label, ragged_npz_images, truncated_npz,
         float_npz_images, npz_length_mismatch, npz_without_labels, empty_npz,
         empty_test_split, header_only_csv, non_utf8_csv, csv_without_the_columns,
         csv_short_row, missing_csv, text_for_an_image_model, folder_class_without_images,
         folder_without_classes, missing_folder, corrupt_first_image, unquoted_comma,
         empty_label, field_past_the_csv_limit, too_many_classes, single_class_csv,
         single_class_npz, zero_height_npz_images, two_channel_npz_images,
         five_channel_npz_images, zero_width_first_image, float_tiff_out_of_range,
         npz_header_declaring_128_gb, npz_header_declaring_more_than_it_holds,
         npz_deflated_member_claiming_4_gb]


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_bad_dataset_fails_at_start_up_naming_the_file(make, tiny_config, tmp_path):
  dataset, expected, *overrides = make(tmp_path)
  config = tiny_config(dataset=dataset, **(overrides[0] if overrides else {}))
  with pytest.raises(ConfigError) as e:
    run(config)
  message = str(e.value)
  assert message.startswith(f"--dataset={dataset!r}"), message
  assert re.search(expected, message), message
  assert "\n" not in message
  assert not (tmp_path / "run" / "checkpoints").exists()  # nothing compiled or trained


def test_corrupt_image_mid_dataset_is_one_error_line(cli, tmp_path):
  """Files past the first are decoded as batches are read: the main still ends with one line
  naming the file, not a pipeline traceback."""
  root = _folder(tmp_path / "imgs", per_class=10)
  bad = root / "c1" / "7.png"
  bad.write_bytes(bad.read_bytes()[:40])  # truncated
  # No validation split: the truncated file stays in a split the run reads (train or test).
  out = cli.run(tmp_path / "run", f"--dataset=folder:{root}", "--steps=6",
                "--validation_fraction=0")
  assert out.returncode == 1, out.stderr[-3000:]
  assert out.stderr.startswith(f"error: cannot decode image {bad}: "), out.stderr[-3000:]
  assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_npz_bomb_is_one_error_line_exit_2(cli, tmp_path):
  """The training CLI on an npz whose header declares 128 GB: status 2, one line, nothing run."""
  dataset, expected = npz_header_declaring_128_gb(tmp_path)
  cli.dataset = dataset
  out = cli.run(tmp_path / "run")
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr[-3000:]
  assert re.search(expected, out.stderr), out.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_images_of_mixed_sizes_train(tiny_config, tmp_path):
  root = _folder(tmp_path / "imgs", per_class=10, sizes=((8, 8), (13, 6), (5, 21), (32, 32)))
  result = finetune(tiny_config(dataset=f"folder:{root}", steps=4, checkpoint_every=0))
  assert result.steps == 4 and 0.0 <= result.metrics["accuracy"] <= 1.0


# --------------------------------------------------------------------- labels and pixels
# Loader-level (no training): what is handled rather than refused, and how.

PEAK_BYTES = 50 << 20  # loading a 30-row file stays far below range(10**9) (5.8 GB of names)


def test_labels_are_the_distinct_values_present(tmp_path):
  """A label of 10**9, a 30-digit one (OverflowError in int64 before) and a 5,000-digit one
  (ValueError from int() before) are classes like any other, without allocating a range."""
  import tracemalloc

  from jaxpretrain.data import load_dataset

  huge = "9" * 5000
  path = _csv(tmp_path / "d.csv", "text,label\n" + "".join(
      f"t{i},{v}\n" for i, v in enumerate([7, 10**9, 0] * 10)))
  tracemalloc.start()
  src, meta = load_dataset(f"csv:{path}", split="all")
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert meta.class_names == ("0", "7", "1000000000") and peak < PEAK_BYTES
  assert [src[i]["label"] for i in range(3)] == [1, 2, 0]
  path = _csv(tmp_path / "o.csv", f"text,label\na,1\nb,{'9' * 30}\nc,{huge}\nd,1\n")
  src, meta = load_dataset(f"csv:{path}", split="all")  # a name is any string: sorted as text
  assert meta.class_names == ("1", "9" * 30, huge)
  assert [src[i]["label"] for i in range(4)] == [0, 1, 2, 0]
  images, _ = make_images(6)
  for labels in (np.array([0, 10**9] * 3), np.array([3, 2**63 + 5] * 3, np.uint64)):
    path = _npz(tmp_path / "d.npz", image=images, label=labels)
    src, meta = load_dataset(f"npz:{path}", split="all")
    assert meta.class_names == tuple(str(v) for v in sorted(set(labels.tolist())))
    assert [src[i]["label"] for i in range(6)] == [0, 1] * 3
  keras = _npz(tmp_path / "k.npz", x_train=images, y_train=np.array([5, 9] * 3),
               x_test=images[:2], y_test=np.array([9, 9]))
  _, train_meta = load_dataset(f"npz:{keras}", split="train")
  test, meta = load_dataset(f"npz:{keras}", split="test")
  assert train_meta.class_names == meta.class_names == ("5", "9") and test[0]["label"] == 1


def test_high_bit_depth_images_are_scaled_and_a_bom_is_stripped(tmp_path):
  from jaxpretrain.data import load_dataset
  from jaxpretrain.data.loaders import DataError, read_image

  ramp = np.arange(64, dtype=np.float64).reshape(8, 8) / 63  # 64 grey levels in [0, 1]
  want = np.round(ramp * 255).astype(np.uint8)[..., None]
  _png(tmp_path / "g16.png", np.round(ramp * 65535).astype(np.uint16))
  PIL.Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "f.tif")
  PIL.Image.fromarray((ramp * 255).astype(np.float32)).save(tmp_path / "f255.tif")
  for name in ("g16.png", "f.tif", "f255.tif"):
    got = read_image(tmp_path / name, 1)
    assert got.dtype == np.uint8 and len(np.unique(got)) == 64, name  # not 2 grey levels
    np.testing.assert_array_equal(got, want, err_msg=name)
  np.save(tmp_path / "c2.npy", np.zeros((8, 8, 2), np.uint8))  # mid-run: one DataError line
  with pytest.raises(DataError, match=r"c2\.npy: image with 2 channels"):
    read_image(tmp_path / "c2.npy", 3)
  path = _csv(tmp_path / "bom.csv", b"\xef\xbb\xbftext,label\n" + _rows(4).encode())
  src, meta = load_dataset(f"csv:{path}", split="all")
  assert meta.class_names == ("neg", "pos") and src[0]["text"] == "text number 0"


BOMB_PEAK_BYTES = 1 << 20  # refusing a 6 MB bomb reads headers only (a loaded one: 6 MB)


def test_npz_bomb_refused_before_decompressing(tmp_path, monkeypatch):
  """A real deflate bomb (6 MB of zeros in ~6 KB) past MAX_NPZ_BYTES (lowered to 1 MiB here;
  8 GiB in use) is refused from its declared sizes, and a real .npz within it still loads."""
  import tracemalloc

  from jaxpretrain.data import load_dataset, loaders

  path = tmp_path / "bomb.npz"
  np.savez_compressed(path, image=np.zeros((2000, 32, 32, 3), np.uint8),
                      label=np.arange(2000) % 2)
  assert path.stat().st_size < 10_000
  monkeypatch.setattr(loaders, "MAX_NPZ_BYTES", 1 << 20)
  tracemalloc.start()
  try:
    with pytest.raises(loaders.DataError) as e:
      load_dataset(f"npz:{path}", split="all")
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert str(e.value) == (
      f"{path}: member 'image.npy': declares 6,144,128 bytes (6,144,128 in all so far), more "
      "than MAX_NPZ_BYTES=1,048,576; refused unread (large data belongs in a folder: or TFDS "
      "dataset)")
  assert peak < BOMB_PEAK_BYTES, peak
  real = tmp_path / "real.npz"
  np.savez_compressed(real, image=make_images(20)[0], label=np.arange(20) % 2)
  assert load_dataset(f"npz:{real}", split="all")[1].num_examples == 20
  small = _npz(tmp_path / "ok.npz", image=make_images(20)[0], label=np.arange(20) % 2)
  assert load_dataset(f"npz:{small}", split="all")[1].num_examples == 20
  path = set_central_size(tmp_path / "ok.npz", "label.npy", 999)  # stored: sizes must agree
  with pytest.raises(loaders.DataError, match=rf"^{path}: member 'label.npy' is stored "
                     r"uncompressed in \d+ bytes but declares 999; a corrupt or hostile archive$"):
    load_dataset(f"npz:{path}", split="all")


@pytest.mark.parametrize("shape,expected", [
    ((80_000, 80_000, 3), r"declares a uint8 array of shape \(80000, 80000, 3\) "
                          r"\(19,200,000,000 bytes\), but holds 192 bytes of data; a truncated "
                          "or corrupt file"),
    ((8, 8, 3, 1, 1), r"uint8 array of shape \(8, 8, 3, 1, 1\); expected \[h, w\] or \[h, w, c\]"),
    ((8, 12, 2), r"image with 2 channels \(shape \(8, 12, 2\)\); allowed: 1, 3, 4"),
])
def test_npy_image_header_checked_before_reading(tmp_path, shape, expected):
  """A .npy image (192 real bytes) whose header declares `shape`: refused from the header."""
  from jaxpretrain.data.loaders import DataError, read_image

  path = tmp_path / "x.npy"
  image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)
  path.write_bytes(_npy(image, shape))
  with pytest.raises(DataError) as e:
    read_image(path, 3)
  assert re.fullmatch(rf"{re.escape(str(path))}: {expected}", str(e.value)), str(e.value)
  path.write_bytes(_npy(image))
  np.testing.assert_array_equal(read_image(path, 3), image)


def test_a_test_file_with_fewer_classes_is_evaluated_by_class_name():
  """Classes are the labels present, so a separate test file may number them differently;
  evaluation maps them to the checkpoint's classes by name, and refuses unknown ones."""
  from jaxpretrain.job.evaluation import label_mapping

  to_model = label_mapping(["3", "7"], ["0", "3", "7"], what="--dataset='csv:t'")
  assert to_model[np.array([0, 1, 1])].tolist() == [1, 2, 2]
  with pytest.raises(ConfigError, match=r"--dataset='csv:t' has label '9', which the model "
                     r"does not know; the model's classes: '0', '3'"):
    label_mapping(["9"], ["0", "3"], what="--dataset='csv:t'")
