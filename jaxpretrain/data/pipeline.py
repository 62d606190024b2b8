"""Input pipelines on grain's `MapDataset`: shuffled, sharded per host, batched, resumable.

The training stream is one global sequence, the same for any number of hosts:
  position p (0, 1, 2, ...) -> example `perm_e[p % N]`, e = p // N, where perm_e is grain's
  index shuffle of the N examples seeded with `seed + e` (a new order every epoch);
  augmentation at p uses `random_bits(seed, p)`.
Global batch k is positions [k*G, (k+1)*G); host i of P takes the contiguous positions
[k*G + i*G/P, k*G + (i+1)*G/P), so hosts are disjoint and together complete, and the global
array `make_array_from_process_local_data` assembles from them (hosts' devices in order) is
row for row the one-process batch. Batch k is a pure function of (seed, k). The
iterator state is therefore just the step (plus a fingerprint to catch mismatched resumes),
valid for any worker count and any process count.

Evaluation walks the split once in order, host i taking examples i, i+P, ...; every host emits
the same number of full batches (ceil(ceil(N / P) / host_batch)), padded with copies of a real
example whose `mask` is 0, so `sum(mask)` over all hosts and batches is exactly N.

Batches are NumPy dicts with a leading [host_batch] axis (host_batch = G / P, divisible by the
local device count): images `image` float32 [b, size, size, c] and `label` int32 [b]; text
`input_ids`, `attention_mask`, `token_type_ids` int32 [b, max_len] and `label`; eval adds
`mask` float32 [b]. grain batches example indices; each batch is then read with one
`source.__getitems__` call when the source has it (TFDS) and preprocessed as a whole.
Parallelism: `num_threads` threads prepare whole batches (grain `ReadOptions`), and
`worker_count` > 0 adds that many processes (grain `mp_prefetch`).
"""

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from jaxpretrain import preprocess
from jaxpretrain.data.loaders import to_channels
from jaxpretrain.preprocess import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 -- re-exported


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
  """Examples -> normalized float32 [b, H, W, channels]; crop and flip in training.

  The images are made as a preprocessing record says (`jaxpretrain.preprocess`: PIL resize,
  center crop, rescale, mean/std, like torchvision's eval transforms). Without a record, the
  fields below make one: resize to image_size x image_size. `from_record` builds one from a
  checkpoint's record. Training augmentation (zero-pad and crop back, flip) runs on the
  uint8 pixels before normalization, so the padding is black.
  """
  image_size: int | tuple[int, int] = 32  # the output size (set from `record` when given)
  channels: int = 3  # The model's; gray inputs are repeated to RGB.
  mean: Sequence[float] = IMAGENET_MEAN  # Per output channel, in [0, 1] units.
  std: Sequence[float] = IMAGENET_STD
  resize: str = "resize"  # "resize" (as `record` says) | "pad" (zero-pad, centred)
  crop_padding: int = 4  # Training: zero-pad by this, then crop back at random (0: off).
  flip: bool = True  # Training: horizontal flip with probability 1/2.
  record: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    if self.resize not in ("resize", "pad"):
      raise ValueError(f"resize='{self.resize}'; allowed: 'resize', 'pad'")
    if self.record is None:
      for name in ("mean", "std"):
        if len(getattr(self, name)) not in (1, self.channels):
          raise ValueError(f"{name} has {len(getattr(self, name))} values; need 1 or "
                           f"channels={self.channels}")
      record = preprocess.image_record(size=self.image_size, mean=self.mean, std=self.std,
                                       channels=self.channels)
    else:
      record = preprocess.normalize_record(self.record, modality="image")
    size = preprocess.output_size(record)
    if size is None:
      raise ValueError(f"preprocessing '{preprocess.describe(record)}' gives images of "
                       "different sizes; a batch needs a crop or a fixed resize size")
    set_ = functools.partial(object.__setattr__, self)
    set_("record", record)
    set_("image_size", size[0] if size[0] == size[1] else tuple(size))
    set_("channels", record["channels"])
    set_("mean", tuple(record["mean"]))
    set_("std", tuple(record["std"]))

  @classmethod
  def from_record(cls, record: Mapping[str, Any] | None, *, image_size: int | None = None,
                  channels: int | None = None, default_size: int = 32,
                  crop_padding: int = 0, flip: bool = False) -> "ImagePreprocess":
    """The preprocessing a checkpoint records, with overrides.

    Args:
      record: config.json's "preprocessing" (any version; None or {}: the defaults).
      image_size: resize every image to image_size x image_size, no crop (`--image_size`).
      channels: the model's input channels (overrides the record's).
      default_size: the size when neither the record nor image_size gives one.
      crop_padding, flip: training augmentation.
    """
    rec = preprocess.normalize_record(record or {}, modality="image",
                                      default_size=default_size)
    if channels is not None:
      rec["channels"] = channels
    if image_size is not None or preprocess.output_size(rec) is None and not rec["resize"]:
      rec = preprocess.with_image_size(rec, image_size or default_size)
    return cls(record=rec, crop_padding=crop_padding, flip=flip)

  def batch(self, examples: Sequence[dict], bits: np.ndarray | None) -> dict:
    """Preprocesses a batch.

    Args:
      examples: b dicts with "image" uint8 [h, w, c] (sizes may differ) and "label".
      bits: uint64 [b] random bits per example for augmentation; None = evaluation.

    Returns:
      {"image": float32 [b, H, W, channels], "label": int32 [b]}.
    """
    if self.resize == "pad":
      images = [to_channels(np.asarray(ex["image"]), self.channels) for ex in examples]
      x = pad_images(images, self.image_size)
    else:
      x = np.stack([preprocess.pixels(self.record, ex["image"]) for ex in examples])
    if bits is not None:
      x = random_crop_flip(x, bits, self.crop_padding, self.flip)
    return {"image": preprocess.normalize(self.record, x),
            "label": np.asarray([ex["label"] for ex in examples], np.int32)}


class TextPreprocess:
  """Tokenizes whole batches with a HF `tokenizers` tokenizer.json, truncated and padded.

  `record` (a text preprocessing record) adds its lowercasing and padding token.
  """

  def __init__(self, tokenizer_path: str, max_len: int = 128,
               record: Mapping[str, Any] | None = None):
    self.tokenizer_path, self.max_len = str(tokenizer_path), max_len
    self.record = dict(record or {})
    self._tokenizer = None

  def __getstate__(self):  # Worker processes load their own tokenizer.
    return {"tokenizer_path": self.tokenizer_path, "max_len": self.max_len,
            "record": self.record, "_tokenizer": None}

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      self._tokenizer = preprocess.load_tokenizer(self.tokenizer_path, self.max_len)
    return self._tokenizer

  def batch(self, examples: Sequence[dict], bits: np.ndarray | None) -> dict:
    """b dicts with "text" and "label" -> token arrays int32 [b, max_len] and "label" [b]."""
    del bits  # No text augmentation.
    tok = self.tokenizer
    out = preprocess.tokenize(tok, [str(ex["text"]) for ex in examples], self.max_len,
                              preprocess.pad_id(tok, self.record),
                              lowercase=bool(self.record.get("lowercase")))
    out["label"] = np.asarray([ex["label"] for ex in examples], np.int32)
    return out


@functools.lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int) -> np.ndarray:
  """Linear-interpolation matrix float32 [out_size, in_size], half-pixel centres.

  When shrinking, the triangle kernel is widened by in/out (antialiasing), as PIL's BILINEAR
  and `jax.image.resize(..., "linear")` do; rows are renormalized at the borders.
  """
  scale = max(in_size / out_size, 1.0)
  centres = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(in_size)[None, :] - centres[:, None]) / scale)
  return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
  """uint8 [h_i, w_i, c] images -> float32 [b, size, size, c] (batched when shapes agree)."""
  def resize(x):  # [b, h, w, c] -> [b, size, size, c], as wy @ x @ wx.T per channel.
    wy, wx = resize_weights(x.shape[1], size), resize_weights(x.shape[2], size)
    return (wy @ x.astype(np.float32).transpose(0, 3, 1, 2) @ wx.T).transpose(0, 2, 3, 1)

  if len({im.shape for im in images}) == 1:
    return resize(np.stack(images))
  return np.concatenate([resize(im[None]) for im in images])


def pad_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
  """Zero-pads uint8 [h_i, w_i, c] images, centred, to float32 [b, size, size, c].

  E.g. 28 -> 32 as LeNet-5 fed MNIST; images larger than `size` are an error.
  """
  out = np.zeros((len(images), size, size, images[0].shape[-1]), np.float32)
  for i, im in enumerate(images):
    h, w, _ = im.shape
    if h > size or w > size:
      raise ValueError(f"image {h}x{w} is larger than image_size={size}; use resize='resize'")
    top, left = (size - h) // 2, (size - w) // 2
    out[i, top:top + h, left:left + w] = im
  return out


def random_crop_flip(x: np.ndarray, bits: np.ndarray, padding: int, flip: bool) -> np.ndarray:
  """The CIFAR recipe (He et al. 2016, sec. 4.2): zero-pad, crop back at random, flip.

  Args:
    x: float32 [b, h, w, c].
    bits: uint64 [b] random bits per example: offsets from bits 0-39, flip from bit 40.
    padding: pixels of zero padding per side (0: no crop).
    flip: whether to flip horizontally with probability 1/2.

  Returns:
    float32 [b, h, w, c].
  """
  _, h, w, _ = x.shape
  span = np.uint64(2 * padding + 1)
  dys = (bits % span).astype(np.int64)
  dxs = ((bits >> np.uint64(20)) % span).astype(np.int64)
  flips = flip & ((bits >> np.uint64(40)) & np.uint64(1)).astype(bool)
  padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out = np.empty_like(x)
  for i, (dy, dx, f) in enumerate(zip(dys, dxs, flips, strict=True)):  # Beats a fancy gather.
    crop = padded[i, dy:dy + h, dx:dx + w]
    out[i] = crop[:, ::-1] if f else crop
  return out


def random_bits(seed: int, positions: np.ndarray) -> np.ndarray:
  """uint64 [b] bits that depend only on (seed, position): splitmix64 (Steele et al. 2014)."""
  def mix(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))

  with np.errstate(over="ignore"):  # Arithmetic is mod 2**64 by design.
    return mix(mix(np.full(len(positions), seed, np.uint64)) ^ positions.astype(np.uint64))


@dataclasses.dataclass(frozen=True)
class Topology:
  """Which part of the global batch this process produces."""
  process_index: int
  process_count: int
  local_device_count: int
  global_batch_size: int

  @property
  def host_batch_size(self) -> int:
    return self.global_batch_size // self.process_count


def topology(global_batch_size: int, process_index: int | None = None,
             process_count: int | None = None,
             local_device_count: int | None = None) -> Topology:
  """Fills unset values from JAX and checks the batch divides over all devices."""
  if None in (process_index, process_count, local_device_count):
    import jax  # Lazy: tests and tools pass all three explicitly.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local_device_count = (jax.local_device_count() if local_device_count is None
                          else local_device_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  devices = process_count * local_device_count
  if global_batch_size <= 0 or global_batch_size % devices:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of "
        f"process_count * local_device_count = {process_count} * {local_device_count} = "
        f"{devices}")
  return Topology(process_index, process_count, local_device_count, global_batch_size)


class _TrainIndex:
  """(global position p, example index) -> the record `_LoadBatch` reads."""

  def __call__(self, position: int, index: int) -> dict:
    return {"index": index, "position": position}


class _HostSlice:
  """A global batch of index records -> this host's contiguous part of it."""

  def __init__(self, process_index: int, host_batch_size: int):
    self.start, self.stop = process_index * host_batch_size, (process_index + 1) * host_batch_size

  def __call__(self, records: dict) -> dict:
    return {k: v[self.start:self.stop] for k, v in records.items()}


class _EvalIndex:
  """Host position j -> example i + j*P, or a masked copy of example 0 past the end."""

  def __init__(self, process_index: int, process_count: int, num_examples: int):
    self.indices = range(process_index, num_examples, process_count)

  def __call__(self, j: int) -> dict:
    real = j < len(self.indices)
    return {"index": self.indices[j] if real else 0, "mask": np.float32(real)}


class _LoadBatch:
  """A batch of index records -> a preprocessed batch, reading the source once per batch."""

  def __init__(self, source, preprocess, seed: int | None):
    self.source, self.preprocess, self.seed = source, preprocess, seed

  def __call__(self, records: dict) -> dict:
    indices = [int(i) for i in records["index"]]
    if hasattr(self.source, "__getitems__"):  # TFDS: one batched array_record read.
      examples = self.source.__getitems__(indices)
    else:
      examples = [self.source[i] for i in indices]
    bits = None if self.seed is None else random_bits(self.seed, records["position"])
    batch = self.preprocess.batch(examples, bits)
    if "mask" in records:
      batch["mask"] = records["mask"]
    return batch


class DataIterator:
  """Iterator over host batches with `get_state() -> dict` / `set_state(dict)`.

  The state is {"step": batches consumed, "epoch": examples seen / N, **fingerprint}; it is
  JSON-serializable and restoring it restarts the grain pipeline at that batch.
  """

  def __init__(self, batches: grain.MapDataset, fingerprint: dict, *, num_threads: int,
               prefetch_buffer_size: int, worker_count: int, num_batches: int | None):
    self._batches, self.fingerprint, self.num_batches = batches, fingerprint, num_batches
    self._read = grain.ReadOptions(num_threads=num_threads,
                                   prefetch_buffer_size=prefetch_buffer_size)
    self._worker_count = worker_count
    self._step, self._it = 0, None

  def _start(self):
    ds = self._batches[self._step:].to_iter_dataset(self._read)
    if self._worker_count:
      # grain's mp_prefetch reads absl flags; outside an absl app (pytest, notebooks) they were
      # never parsed, so take their defaults rather than fail with UnparsedFlagAccessError.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
    self._it = iter(ds)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._it is None:
      self._start()
    batch = next(self._it)
    self._step += 1
    return batch

  def __len__(self) -> int:
    if self.num_batches is None:
      raise TypeError("a training iterator repeats forever; it has no length")
    return self.num_batches

  def get_state(self) -> dict:
    seen = self._step * self.fingerprint["global_batch_size"]
    return {"step": self._step, "epoch": seen // self.fingerprint["num_examples"],
            **self.fingerprint}

  def set_state(self, state: dict) -> None:
    diff = {k: (state.get(k), v) for k, v in self.fingerprint.items() if state.get(k) != v}
    if diff:
      raise ValueError(f"iterator state does not match this pipeline: {{key: (saved, now)}} "
                       f"= {diff}")
    self.close()
    self._step = int(state["step"])

  def close(self) -> None:
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


def _check_source(source) -> int:
  n = len(source)
  if n == 0:
    raise ValueError("the source has no examples (empty split)")
  return n


def train_iterator(source, preprocess, *, global_batch_size: int, seed: int,
                   process_index: int | None = None, process_count: int | None = None,
                   local_device_count: int | None = None, num_epochs: int | None = None,
                   num_threads: int = 4, prefetch_buffer_size: int = 8,
                   worker_count: int = 0) -> DataIterator:
  """Shuffled, augmented, repeating batches for this host.

  Args:
    source: random access (`len`, `source[i] -> dict`), e.g. from `load_dataset`.
    preprocess: `ImagePreprocess` or `TextPreprocess`.
    global_batch_size: summed over all processes; divisible by
      process_count * local_device_count.
    seed: in [0, 2**32); orders and augmentations follow from it alone.
    process_index, process_count, local_device_count: default to JAX's.
    num_epochs: None repeats forever; else stops after that many epochs (last partial batch
      dropped).
    num_threads: threads preparing batches; prefetch_buffer_size: batches kept ready.
    worker_count: extra processes (grain `mp_prefetch`); 0 = none.

  Returns:
    A `DataIterator` of host batches (see the module docstring for keys and shapes).
  """
  n = _check_source(source)
  topo = topology(global_batch_size, process_index, process_count, local_device_count)
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed={seed}; must be in [0, 2**32)")
  ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat(num_epochs)
  ds = ds.map_with_index(_TrainIndex()).batch(global_batch_size, drop_remainder=True)
  ds = ds.map(_HostSlice(topo.process_index, topo.host_batch_size))
  ds = ds.map(_LoadBatch(source, preprocess, seed))
  fingerprint = {"kind": "train", "seed": seed, "num_examples": n,
                 "global_batch_size": global_batch_size, "num_epochs": num_epochs}
  return DataIterator(ds, fingerprint, num_threads=num_threads,
                      prefetch_buffer_size=prefetch_buffer_size, worker_count=worker_count,
                      num_batches=None if num_epochs is None else len(ds))


def eval_iterator(source, preprocess, *, global_batch_size: int,
                  process_index: int | None = None, process_count: int | None = None,
                  local_device_count: int | None = None, num_threads: int = 4,
                  prefetch_buffer_size: int = 8, worker_count: int = 0) -> DataIterator:
  """One ordered pass, padded to full batches with `mask` float32 [b] (1 real, 0 padding).

  Arguments as in `train_iterator`. All hosts get the same `len(iterator)`.
  """
  n = _check_source(source)
  topo = topology(global_batch_size, process_index, process_count, local_device_count)
  per_host = -(-n // topo.process_count)
  num_batches = -(-per_host // topo.host_batch_size)
  ds = grain.MapDataset.range(num_batches * topo.host_batch_size)
  ds = ds.map(_EvalIndex(topo.process_index, topo.process_count, n))
  ds = ds.batch(topo.host_batch_size).map(_LoadBatch(source, preprocess, None))
  fingerprint = {"kind": "eval", "num_examples": n, "global_batch_size": global_batch_size}
  return DataIterator(ds, fingerprint, num_threads=num_threads,
                      prefetch_buffer_size=prefetch_buffer_size, worker_count=worker_count,
                      num_batches=num_batches)


def split_for_devices(batch: dict, num_devices: int) -> dict:
  """[host_batch, ...] -> [num_devices, host_batch / num_devices, ...] for `jax.pmap`.

  (For `jax.jit` with a `NamedSharding`, pass the flat host batch to
  `jax.make_array_from_process_local_data` instead.)
  """
  return {k: v.reshape(num_devices, v.shape[0] // num_devices, *v.shape[1:])
          for k, v in batch.items()}
