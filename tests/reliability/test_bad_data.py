"""Bad data reaches the user as one clear error naming the file (and the row or array index),
at start-up wherever it can be seen there, never as a traceback from deep in the pipeline.

Each case writes a small broken dataset and runs the real training loop on it (`job.run`);
the loaders' own unit tests are in tests/data. Images of mixed sizes are not an error: they
are resized, and a run on them trains.
"""

import re

import numpy as np
import PIL.Image
import pytest

from jaxpretrain.job import ConfigError, finetune, run
from tests.reliability.conftest import make_images


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


def _rows(n=20):
  return "".join(f"text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(n))


def label_beyond_class_names(tmp):
  images, labels = make_images(20)
  labels[13] = 7
  path = _npz(tmp / "d.npz", image=images, label=labels, class_names=np.array(list("abcd")))
  return f"npz:{path}", rf"{path}: label\[13\]: label 7 out of range \[0, 4\)"


def negative_csv_label(tmp):
  path = _csv(tmp / "d.csv", "text,label\n" + "a,0\nb,1\n" * 5 + "c,-1\n")
  return f"csv:{path}", rf"{path}:12: label -1 out of range \[0, 2\)"


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
  return f"npz:{path}", rf"{path}: split 'test' is empty \(4 examples, test_fraction=0.2\)"


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


CASES = [label_beyond_class_names, negative_csv_label, ragged_npz_images, truncated_npz,
         float_npz_images, npz_length_mismatch, npz_without_labels, empty_npz,
         empty_test_split, header_only_csv, non_utf8_csv, csv_without_the_columns,
         csv_short_row, missing_csv, text_for_an_image_model, folder_class_without_images,
         folder_without_classes, missing_folder, corrupt_first_image]


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_bad_dataset_fails_at_start_up_naming_the_file(make, tiny_config, tmp_path):
  dataset, expected = make(tmp_path)
  config = tiny_config(dataset=dataset)
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
  out = cli.run(tmp_path / "run", f"--dataset=folder:{root}", "--steps=6")
  assert out.returncode == 1, out.stderr[-3000:]
  assert out.stderr.startswith(f"error: cannot decode image {bad}: "), out.stderr[-3000:]
  assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_images_of_mixed_sizes_train(tiny_config, tmp_path):
  root = _folder(tmp_path / "imgs", per_class=10, sizes=((8, 8), (13, 6), (5, 21), (32, 32)))
  result = finetune(tiny_config(dataset=f"folder:{root}", steps=4, checkpoint_every=0))
  assert result.steps == 4 and 0.0 <= result.metrics["accuracy"] <= 1.0
