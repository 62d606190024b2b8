"""`load_dataset` for folder:, csv:, npz: and TFDS specs, and its errors on bad input."""

import numpy as np
import PIL.Image
import pytest

from jaxpretrain.data import ImagePreprocess, eval_iterator, load_dataset
from jaxpretrain.data.loaders import check_spec


def _png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(array).save(path)


def _gray(value, shape=(6, 5)):
  return np.full(shape, value, np.uint8)


@pytest.fixture
def split_folder(tmp_path):
  """root/{train,test}/{cat,dog}/ with PNGs (gray), plus one .npy image."""
  root = tmp_path / "pets"
  for split, n in (("train", 3), ("test", 2)):
    for c, name in enumerate(("cat", "dog")):
      for i in range(n):
        _png(root / split / name / f"{i}.png", _gray(10 * c + i))
  np.save(root / "train" / "dog" / "extra.npy", _gray(99)[..., None])
  (root / "train" / "dog" / "notes.txt").write_text("not an image")
  return root


def test_folder_with_split_dirs(split_folder):
  train, meta = load_dataset(f"folder:{split_folder}", split="train")
  assert meta.class_names == ("cat", "dog") and meta.num_classes == 2
  assert meta.modality == "image" and meta.image_shape == (6, 5, 1)
  assert len(train) == meta.num_examples == 7  # 3 + 3 PNGs + 1 npy; notes.txt ignored.
  examples = [train[i] for i in range(len(train))]
  assert [ex["label"] for ex in examples] == [0, 0, 0, 1, 1, 1, 1]
  assert sorted(int(ex["image"][0, 0, 0]) for ex in examples) == [0, 1, 2, 10, 11, 12, 99]
  test, _ = load_dataset(f"folder:{split_folder}", split="test")
  assert len(test) == 4
  rgb, meta3 = load_dataset(f"folder:{split_folder}", split="test", channels=3)
  assert meta3.image_shape == (6, 5, 3) and rgb[3]["image"][2, 2].tolist() == [11, 11, 11]


def test_folder_with_fraction_split(tmp_path):
  for c, name in enumerate(("a", "b", "c")):
    for i in range(10):
      _png(tmp_path / name / f"{i:02d}.png", np.full((4, 4, 3), [c, i, 7], np.uint8))
  train, meta = load_dataset(f"folder:{tmp_path}", split="train", test_fraction=0.3, seed=1)
  test, _ = load_dataset(f"folder:{tmp_path}", split="test", test_fraction=0.3, seed=1)
  again, _ = load_dataset(f"folder:{tmp_path}", split="test", test_fraction=0.3, seed=1)
  assert meta.image_shape == (4, 4, 3) and (len(train), len(test)) == (21, 9)
  key = lambda src: {tuple(src[i]["image"][0, 0]) for i in range(len(src))}  # noqa: E731
  assert key(test) == key(again) and not key(train) & key(test)
  assert np.bincount([test[i]["label"] for i in range(len(test))]).tolist() == [3, 3, 3]


def test_folder_errors(tmp_path, split_folder):
  (tmp_path / "empty" / "cls").mkdir(parents=True)
  with pytest.raises(ValueError, match="empty/cls: no image files"):
    load_dataset(f"folder:{tmp_path / 'empty'}")
  (tmp_path / "noclass").mkdir()
  with pytest.raises(ValueError, match="no class sub-folders"):
    load_dataset(f"folder:{tmp_path / 'noclass'}")
  (split_folder / "test" / "bird").mkdir()
  with pytest.raises(ValueError, match="class 'bird' is not in the train classes"):
    load_dataset(f"folder:{split_folder}", split="test")
  for name in ("cat", "dog", "bird"):  # An empty test split.
    for f in (split_folder / "test" / name).iterdir():
      f.unlink()
    (split_folder / "test" / name).rmdir()
  with pytest.raises(ValueError, match="split 'test' is empty"):
    load_dataset(f"folder:{split_folder}", split="test")
  _png(tmp_path / "tiny" / "x" / "0.png", _gray(1))
  _png(tmp_path / "tiny" / "y" / "0.png", _gray(2))
  with pytest.raises(ValueError, match="split 'test' is empty"):
    load_dataset(f"folder:{tmp_path / 'tiny'}", split="test", test_fraction=0.3)


def test_corrupt_image_names_the_file(split_folder):
  bad = split_folder / "train" / "cat" / "1.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  source, _ = load_dataset(f"folder:{split_folder}", split="train")
  with pytest.raises(ValueError, match=r"cannot decode image .*cat/1\.png"):
    source[1]
  it = eval_iterator(source, ImagePreprocess(image_size=8, channels=1, mean=(0.5,),
                                             std=(0.5,)),
                     global_batch_size=4, process_index=0, process_count=1,
                     local_device_count=1, num_threads=0)
  with pytest.raises(ValueError, match=r"cat/1\.png"):
    list(it)


def _write_csv(path, text):
  path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
  return path


def test_csv(tmp_path):
  rows = "".join(f'"tweet, number {i}",{"pos" if i % 2 else "neg"},x\n' for i in range(20))
  path = _write_csv(tmp_path / "t.csv", "body,mood,other\n" + rows)
  train, meta = load_dataset(f"csv:{path}", split="train", text_column="body",
                             label_column="mood", test_fraction=0.25)
  test, _ = load_dataset(f"csv:{path}", split="test", text_column="body", label_column="mood",
                         test_fraction=0.25)
  assert meta.modality == "text" and meta.class_names == ("neg", "pos")
  assert meta.image_shape is None and (len(train), len(test)) == (16, 4)
  texts = {train[i]["text"] for i in range(16)} | {test[i]["text"] for i in range(4)}
  assert texts == {f"tweet, number {i}" for i in range(20)}
  assert all(test[i]["label"] == int(test[i]["text"].split()[-1]) % 2 for i in range(4))
  ints = _write_csv(tmp_path / "i.csv", "text,label\n" + "".join(f"t{i},{i % 3}\n"
                                                                 for i in range(9)))
  src, meta = load_dataset(f"csv:{ints}", split="all", class_names=["a", "b", "c"])
  assert meta.class_names == ("a", "b", "c") and src[4] == {"text": "t4", "label": 1}


def test_csv_errors(tmp_path):
  path = _write_csv(tmp_path / "t.csv", "text,label\nhello,0\nworld,1\n")
  with pytest.raises(ValueError, match=r"t\.csv: no column 'sentence'; columns: \['text'"):
    load_dataset(f"csv:{path}", text_column="sentence")
  bad = _write_csv(tmp_path / "r.csv", "text,label\na,0\nb,1\nc,7\n")
  with pytest.raises(ValueError, match=r"r\.csv:4: label 7 out of range \[0, 2\)"):
    load_dataset(f"csv:{bad}", class_names=["x", "y"])
  neg = _write_csv(tmp_path / "n.csv", "text,label\na,0\nb,-1\n")
  with pytest.raises(ValueError, match=r"n\.csv:3: label -1 out of range"):
    load_dataset(f"csv:{neg}")
  names = _write_csv(tmp_path / "s.csv", "text,label\na,pos\nb,meh\n")
  with pytest.raises(ValueError, match=r"s\.csv:3: label 'meh' is not a class"):
    load_dataset(f"csv:{names}", class_names=["neg", "pos"])
  latin = _write_csv(tmp_path / "l.csv", b"text,label\nfine,0\ncaf\xe9,1\n")
  with pytest.raises(ValueError, match=r"l\.csv:3: not UTF-8"):
    load_dataset(f"csv:{latin}")
  src, _ = load_dataset(f"csv:{latin}", split="all", encoding_errors="replace")
  assert src[1]["text"] == "caf\ufffd"
  empty = _write_csv(tmp_path / "e.csv", "text,label\n")
  with pytest.raises(ValueError, match=r"e\.csv: no examples"):
    load_dataset(f"csv:{empty}")
  with pytest.raises(ValueError, match=r"no validation split \(validation_fraction=0\)"):
    load_dataset(f"csv:{path}", split="validation")
  with pytest.raises(ValueError, match="unknown split 'valid'"):
    load_dataset(f"csv:{path}", split="valid")
  with pytest.raises(ValueError, match="unknown dataset kind 'parquet'"):
    load_dataset(f"parquet:{path}")


def test_npz(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 5, 5), dtype=np.uint8)
  labels = np.arange(40) % 4
  np.savez(tmp_path / "auto.npz", x=images, y=labels)
  train, meta = load_dataset(f"npz:{tmp_path / 'auto.npz'}", split="train")
  assert meta.image_shape == (5, 5, 1) and meta.num_classes == 4 and len(train) == 32
  np.savez(tmp_path / "named.npz", pixels=images, cls=labels, class_names=list("abcd"))
  src, meta = load_dataset(f"npz:{tmp_path / 'named.npz'}", split="all", image_key="pixels",
                           label_key="cls")
  assert meta.class_names == ("a", "b", "c", "d")
  np.testing.assert_array_equal(src[7]["image"][..., 0], images[7])
  assert src[7]["label"] == 3
  np.savez(tmp_path / "keras.npz", x_train=images[:30], y_train=labels[:30],
           x_test=images[30:], y_test=labels[30:])
  test, meta = load_dataset(f"npz:{tmp_path / 'keras.npz'}", split="test")
  assert len(test) == 10 and test[0]["label"] == labels[30]


def test_npz_errors(tmp_path):
  images = np.zeros((6, 4, 4), np.uint8)
  np.savez(tmp_path / "range.npz", images=images, labels=np.array([0, 1, 2, 3, 1, 0]))
  with pytest.raises(ValueError, match=r"range\.npz: labels\[3\]: label 3 out of range"):
    load_dataset(f"npz:{tmp_path / 'range.npz'}", class_names=["a", "b", "c"])
  np.savez(tmp_path / "keys.npz", foo=images, bar=np.zeros(6, int))
  with pytest.raises(ValueError, match="cannot find the image array among"):
    load_dataset(f"npz:{tmp_path / 'keys.npz'}")
  with pytest.raises(ValueError, match="no array 'pixels'"):
    load_dataset(f"npz:{tmp_path / 'keys.npz'}", image_key="pixels")
  np.savez(tmp_path / "float.npz", x=images.astype(np.float32), y=np.zeros(6, int))
  with pytest.raises(ValueError, match="expected uint8"):
    load_dataset(f"npz:{tmp_path / 'float.npz'}")
  np.savez(tmp_path / "len.npz", x=images, y=np.zeros(5, int))
  with pytest.raises(ValueError, match="6 images but 5 labels"):
    load_dataset(f"npz:{tmp_path / 'len.npz'}")


def test_tfds_specs(built_data_dir):
  src, meta = load_dataset("tweets_sentiment", built_data_dir, "test")
  assert meta.modality == "text" and meta.class_names == ("negative", "neutral", "positive")
  assert len(src) == meta.num_examples == 3816 and isinstance(src[0]["text"], str)
  src, meta = load_dataset("tfds:digits_local", built_data_dir, "train[:10]")
  assert meta.image_shape == (8, 8, 1) and len(src) == 10 and src[0]["image"].dtype == np.uint8
  with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset'; known: "):
    load_dataset("no_such_dataset", built_data_dir)
  src, meta = load_dataset("mnist_local", built_data_dir, "validation")
  assert len(src) == 400 and meta.num_classes == 10


def test_csv_with_a_separate_test_file(tmp_path):
  train = _write_csv(tmp_path / "train.csv", "body,topic,x\n" + "".join(
      f"train {i},{'ab'[i % 2]},0\n" for i in range(20)))
  test = _write_csv(tmp_path / "test.csv", "body,topic,x\n" + "".join(
      f"test {i},{'ab'[i % 2]},0\n" for i in range(6)))
  spec = f"csv:{train}?test={test}&text=body&label=topic"
  tr, meta = load_dataset(spec, split="train")
  te, test_meta = load_dataset(spec, split="test")
  assert (len(tr), len(te)) == (20, 6)  # all of train.csv is trained on; test.csv is test
  assert {tr[i]["text"] for i in range(20)} == {f"train {i}" for i in range(20)}
  assert [te[i] for i in range(2)] == [{"text": "test 0", "label": 0},
                                       {"text": "test 1", "label": 1}]
  assert meta.class_names == test_meta.class_names == ("a", "b")
  tr, _ = load_dataset(spec, split="train", validation_fraction=0.2)
  val, _ = load_dataset(spec, split="validation", validation_fraction=0.2)
  assert (len(tr), len(val)) == (16, 4)
  assert not {tr[i]["text"] for i in range(16)} & {val[i]["text"] for i in range(4)}
  assert len(load_dataset(spec, split="all")[0]) == 20  # --split=all: the first file, whole


def test_csv_options_are_checked(tmp_path):
  train = _write_csv(tmp_path / "train.csv", "text,label\na,0\nb,1\n")
  for query, message in (("tset=x.csv", r"unknown option\(s\) 'tset'; allowed: test, text, "
                          "label"), ("text=a&text=b", "option 'text' given twice"),
                         ("test", "option 'test' is not KEY=VALUE")):
    with pytest.raises(ValueError, match=message):
      load_dataset(f"csv:{train}?{query}")
  with pytest.raises(ValueError, match="missing.csv: no such CSV file"):
    check_spec(f"csv:{train}?test={tmp_path / 'missing.csv'}")


def test_validation_fraction_of_user_data(tmp_path, split_folder):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "a.npz", x=rng.integers(0, 256, (100, 4, 4), dtype=np.uint8),
           y=np.arange(100) % 5)
  spec = f"npz:{tmp_path / 'a.npz'}"
  sizes = {s: len(load_dataset(spec, split=s, validation_fraction=0.1)[0])
           for s in ("train", "validation", "test")}
  assert sizes == {"train": 70, "validation": 10, "test": 20}  # per class: 20 -> 14/2/4
  val, _ = load_dataset(spec, split="validation", validation_fraction=0.1)
  assert np.bincount([val[i]["label"] for i in range(len(val))]).tolist() == [2] * 5
  train, _ = load_dataset(f"folder:{split_folder}", split="train", validation_fraction=0.5)
  val, _ = load_dataset(f"folder:{split_folder}", split="validation", validation_fraction=0.5)
  whole, _ = load_dataset(f"folder:{split_folder}", split="train")
  assert len(train) + len(val) == len(whole) and len(val) > 0


def test_check_spec_says_did_you_mean(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset 'tweets_sentimnt'; did you mean "
                     r"'tweets_sentiment'\? known: \["):
    check_spec("tweets_sentimnt", str(tmp_path))
  with pytest.raises(ValueError, match=r"unknown dataset kind 'cvs:'.*did you mean 'csv:'"):
    check_spec("cvs:x.csv")
  (tmp_path / "my_prepared").mkdir()
  check_spec("tfds:my_prepared", str(tmp_path))  # prepared there: accepted
  check_spec("digits_local", str(tmp_path / "nowhere"))  # offline builders: always
  with pytest.raises(ValueError, match="not a folder"):
    check_spec(f"folder:{tmp_path / 'nope'}")
