"""grain pipelines: shuffling, sharding, eval padding, resumable state, preprocessing."""

import json

import numpy as np
import PIL.Image
import pytest

from jaxpretrain.data import (
    ImagePreprocess,
    TextPreprocess,
    eval_iterator,
    load_dataset,
    minilm_tokenizer_path,
    split_for_devices,
    train_iterator,
)
from jaxpretrain.data.loaders import ArraySource, TextSource
from jaxpretrain.data.pipeline import (
    pad_images,
    random_bits,
    random_crop_flip,
    resize_images,
    resize_weights,
)

N = 64  # Examples in the toy source; label == example index, so batches name their examples.
# Identity normalization on 4x4 gray images keeps pixel values readable in assertions.
RAW = ImagePreprocess(image_size=4, channels=1, mean=(0.0,), std=(1 / 255,), crop_padding=0,
                      flip=False)


def _source(n=N):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  return ArraySource(images, np.arange(n))


def _host(n=N, **kw):
  kw = {"global_batch_size": 16, "seed": 0, "process_index": 0, "process_count": 1,
        "local_device_count": 1, "num_threads": 0, **kw}
  return train_iterator(_source(n), RAW, **kw)


def _labels(it, steps):
  return [next(it)["label"].tolist() for _ in range(steps)]


def test_shuffle_reproducible_by_seed_and_new_each_epoch():
  a, b, c = _labels(_host(), 8), _labels(_host(), 8), _labels(_host(seed=1), 8)
  assert a == b and a != c
  epoch0, epoch1 = sum(a[:4], []), sum(a[4:], [])  # 4 batches of 16 = one epoch of 64.
  assert sorted(epoch0) == sorted(epoch1) == list(range(N))
  assert epoch0 != epoch1 and epoch0 != list(range(N))


def test_sharding_two_processes_disjoint_complete_and_same_global_batches():
  single = _labels(_host(), 8)
  hosts = [_labels(_host(process_index=i, process_count=2, local_device_count=2), 8)
           for i in range(2)]
  for step in range(8):
    h0, h1 = hosts[0][step], hosts[1][step]
    assert len(h0) == len(h1) == 8 and not set(h0) & set(h1)
    assert sorted(h0 + h1) == sorted(single[step])  # Global batch k is host-count free.
    assert h0 + h1 == single[step]  # hosts in order: row for row the one-process batch
  for epoch in range(2):
    seen = sum((h[s] for h in hosts for s in range(4 * epoch, 4 * epoch + 4)), [])
    assert sorted(seen) == list(range(N))


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match=r"process_count \* local_device_count = 2 \* 4 = 8"):
    _host(global_batch_size=12, process_index=0, process_count=2, local_device_count=4)
  with pytest.raises(ValueError, match="process_index=2 not in"):
    _host(process_index=2, process_count=2)
  with pytest.raises(ValueError, match="empty split"):
    _host(n=0)


def test_finite_epochs_stop():
  it = _host(num_epochs=2, global_batch_size=24)  # 128 examples -> 5 full batches.
  assert len(it) == 5 and len(list(it)) == 5


@pytest.mark.parametrize("n, process_count", [(37, 2), (64, 2), (5, 4), (1, 2)])
def test_eval_pads_and_masks_each_example_once(n, process_count):
  counts = np.zeros(n, int)
  lengths = set()
  for i in range(process_count):
    it = eval_iterator(_source(n), RAW, global_batch_size=8 * process_count,
                       process_index=i, process_count=process_count, local_device_count=2,
                       num_threads=0)
    lengths.add(len(it))
    batches = list(it)
    assert len(batches) == len(it)
    for b in batches:
      assert b["mask"].shape == (8,) and b["mask"].dtype == np.float32
      assert b["image"].shape == (8, 4, 4, 1)
      np.add.at(counts, b["label"][b["mask"] == 1], 1)
  assert counts.tolist() == [1] * n and len(lengths) == 1  # Same step count on every host.


def test_state_save_restore_continues_the_same_sequence():
  it = _host(process_index=1, process_count=2, local_device_count=2)
  _labels(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # Must survive a JSON checkpoint.
  assert state["step"] == 5 and state["epoch"] == 1
  expected = [next(it) for _ in range(3)]
  resumed = _host(process_index=1, process_count=2, local_device_count=2)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["image"], want["image"])
  with pytest.raises(ValueError, match="does not match this pipeline.*'seed': \\(0, 1\\)"):
    _host(seed=1).set_state(state)


def test_augmentation_is_seeded_and_varies_by_epoch():
  pp = ImagePreprocess(image_size=8, channels=3, crop_padding=2, flip=True)
  images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)
  make = lambda seed: train_iterator(  # noqa: E731
      ArraySource(images, np.arange(8)), pp, global_batch_size=8, seed=seed, process_index=0,
      process_count=1, local_device_count=1, num_threads=0)
  a, b = make(0), make(0)
  a0, a1 = next(a), next(a)
  np.testing.assert_array_equal(a0["image"], next(b)["image"])
  assert a0["image"].shape == (8, 8, 8, 3) and a0["image"].dtype == np.float32
  by_label = lambda batch: batch["image"][np.argsort(batch["label"])]  # noqa: E731
  assert not np.array_equal(by_label(a0), by_label(a1))  # Same examples, new crops/flips.


def test_threads_and_worker_processes_give_the_same_batches():
  base = _labels(_host(), 6)
  assert _labels(_host(num_threads=3), 6) == base
  it = _host(worker_count=1)
  assert _labels(it, 6) == base
  it.close()


def test_image_preprocess():
  gray = np.full((28, 28, 1), 51, np.uint8)
  pp = ImagePreprocess(image_size=32, channels=3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
  out = pp.batch([{"image": gray, "label": 7}, {"image": gray[:20], "label": 2}], bits=None)
  assert out["image"].shape == (2, 32, 32, 3) and out["image"].dtype == np.float32
  assert out["label"].tolist() == [7, 2] and out["label"].dtype == np.int32
  np.testing.assert_allclose(out["image"][:, 5, 5], [(0.2 - np.array([0.1, 0.2, 0.3])) / 0.5] * 2,
                             atol=1e-6)  # A constant image stays constant through resizing.
  padded = pad_images([gray], 32)
  assert padded.shape == (1, 32, 32, 1) and padded[0, 0, 0, 0] == 0 and padded[0, 2, 2, 0] == 51
  with pytest.raises(ValueError, match="larger than image_size=16"):
    pad_images([gray], 16)
  with pytest.raises(ValueError, match="resize='crop'"):
    ImagePreprocess(resize="crop")


def test_resize_matches_pil_bilinear():
  image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
  for size in (32, 14):  # Up, and down (where PIL antialiases too).
    ours = resize_images([image], size)[0, ..., 0]
    pil = np.asarray(PIL.Image.fromarray(image[..., 0]).resize((size, size),
                                                               PIL.Image.BILINEAR))
    assert np.abs(ours - pil).max() <= 2.0, size  # PIL rounds to uint8 and uses fixed point.
  assert resize_weights(28, 32).sum(axis=1) == pytest.approx(np.ones(32))


def test_crop_and_flip():
  ramp = np.tile(np.arange(8, dtype=np.float32)[None, :, None], (8, 1, 1))[None]  # [1,8,8,1]
  bits = random_bits(0, np.arange(200))
  assert np.array_equal(bits, random_bits(0, np.arange(200)))
  assert not np.array_equal(bits, random_bits(1, np.arange(200)))
  flipped = {int(random_crop_flip(ramp, bits[i:i + 1], 0, True)[0, 0, 0, 0]) for i in range(200)}
  assert flipped == {0, 7}  # Unflipped or mirrored, nothing else.
  crops = np.stack([random_crop_flip(ramp, bits[i:i + 1], 2, False)[0] for i in range(200)])
  assert crops.shape == (200, 8, 8, 1)
  assert {int(c[4, 0, 0]) for c in crops} == {0, 1, 2}  # dx - 2 in {-2..2}: zero or shifted.
  assert (crops == 0).any() and (crops == ramp[0]).all(axis=(1, 2, 3)).any()


def test_tokenization_with_minilm():
  tp = TextPreprocess(minilm_tokenizer_path(), max_len=16)
  texts = ["hello world", "word " * 50, "I can't trust a self-driving car"]
  src = TextSource(texts, np.array([0, 1, 2]))
  batch = next(eval_iterator(src, tp, global_batch_size=4, process_index=0, process_count=1,
                             local_device_count=2, num_threads=0))
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    assert batch[key].shape == (4, 16) and batch[key].dtype == np.int32
  assert batch["input_ids"][0, :5].tolist() == [101, 7592, 2088, 102, 0]  # [CLS] hello world
  assert batch["attention_mask"][0].sum() == 4 and batch["attention_mask"][1].sum() == 16
  assert batch["input_ids"][1, -1] == 102  # Truncated, still ends in [SEP].
  assert batch["mask"].tolist() == [1, 1, 1, 0] and batch["label"].tolist()[:3] == [0, 1, 2]
  assert not batch["token_type_ids"].any()


def test_real_datasets_through_the_pipelines(built_data_dir):
  src, meta = load_dataset("mnist_local", built_data_dir, "train")
  it = train_iterator(src, ImagePreprocess(image_size=32, channels=3), global_batch_size=16,
                      seed=0, process_index=0, process_count=1, local_device_count=8)
  batch = next(it)
  assert batch["image"].shape == (16, 32, 32, 3) and batch["label"].max() < meta.num_classes
  assert split_for_devices(batch, 8)["image"].shape == (8, 2, 32, 32, 3)
  src, _ = load_dataset("tweets_sentiment", built_data_dir, "test")
  tp = TextPreprocess(minilm_tokenizer_path(), max_len=128)
  it = eval_iterator(src, tp, global_batch_size=32, process_index=0, process_count=1,
                     local_device_count=8)
  assert len(it) == 120  # ceil(3816 / 32)
  batch = next(it)
  assert batch["input_ids"].shape == (32, 128) and batch["input_ids"][:, 0].tolist() == [101] * 32
