"""How a checkpoint's inputs are made: one record in its config.json, applied by this module.

Every checkpoint folder's config.json holds a `"preprocessing"` record. Images:

    {"kind": "image",
     "resize": {"shorter": 256} | {"size": [H, W]} | null,  # shorter side to N (aspect kept),
                                                           # or exactly H x W, or no resize
     "interpolation": "bilinear",  # PIL filter: "nearest" | "bilinear" | "bicubic" |
                                   # "lanczos" | "box" | "hamming"
     "antialias": true,            # PIL always filters when shrinking (torchvision's
                                   # antialias=True on PIL images); false is refused
     "crop": [H, W] | null,        # center crop (zero-padded first when the image is smaller)
     "crop_offset": "round",       # torchvision's int(round((h - H) / 2)); "floor": Hugging
                                   # Face's (h - H) // 2. They differ when h - H is odd.
     "rescale": 0.00392156862745098,  # 1/255: uint8 -> [0, 1]
     "mean": [3 floats], "std": [3 floats],  # per channel, after rescaling (1 value: all)
     "channels": 3,                # the model's: images are converted like torchvision's
                                   # ImageFolder loader, PIL `.convert("RGB")` (or "L" for 1)
     "image_size": [H, W] | int}   # derived: the output size when it is fixed (informative)

Text:

    {"kind": "text", "tokenizer": "tokenizer.json",  # a file in the checkpoint folder
     "max_len": 128,               # tokens per example, truncated
     "pooling": "mean" | "cls" | "max" | "mean_sqrt_len" | null,  # sentence embedding
                                   # (sentence-transformers' Pooling); null: not recorded
     "normalize": false,           # L2-normalize embeddings (sentence-transformers' Normalize)
     "lowercase": false,           # lowercase before tokenizing (when the tokenizer does not)
     "pad_token_id": 0}            # optional; else the tokenizer's padding token

Images go through PIL exactly as torchvision's `Resize(256)`, `CenterCrop(224)`, `ToTensor()`,
`Normalize(mean, std)` take a PIL image (and as Hugging Face's ViTImageProcessor with its PIL
backend): convert, resize with PIL (output rounded to uint8, as PIL does), crop, then
`x * rescale`, `(x - mean) / std` in float32. Output is NHWC float32.

Records written before this schema (`image_size`/`resize_size`/`mean`/`std`/`scale`/
`resize: "resize"`, and `tokenizer`/`max_len`) are translated by `normalize_record`: a
`resize_size` (torchvision ports) means "shorter side to resize_size, center-crop image_size",
anything else "resize to image_size x image_size". Every value is validated (types, ranges,
sizes) before use: a record comes from a stranger's checkpoint.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's normalization, in [0, 1] units.
IMAGENET_STD = (0.229, 0.224, 0.225)
RESCALE = 1 / 255
# Largest image side a record may ask for: far above any model input, small enough that a
# crafted record cannot make one resize allocate gigabytes.
MAX_SIDE = 8192
MAX_TOKENS = 1 << 16  # largest max_len accepted from a record
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CROP_OFFSETS = ("round", "floor")
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len")
IMAGE_KEYS = ("kind", "resize", "interpolation", "antialias", "crop", "crop_offset", "rescale",
              "mean", "std", "channels", "image_size")
TEXT_KEYS = ("kind", "tokenizer", "max_len", "pooling", "normalize", "lowercase",
             "pad_token_id")


class PreprocessingError(ValueError):
  """A preprocessing record is malformed; the message names the key and the allowed values."""


class ImageError(ValueError):
  """An image cannot be decoded or used; the message names it."""


# ----------------------------------------------------------------------------- records


def image_record(*, size: int | Sequence[int] | None = None, shorter: int | None = None,
                 crop: int | Sequence[int] | None = None, interpolation: str = "bilinear",
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 rescale: float = RESCALE, channels: int = 3,
                 crop_offset: str = "round") -> dict[str, Any]:
  """A validated image record: resize to `size` (H x W) or the shorter side to `shorter`."""
  if size is not None and shorter is not None:
    raise PreprocessingError("give size or shorter, not both")
  resize = ({"size": _pair(size, "resize.size")} if size is not None
            else {"shorter": int(shorter)} if shorter is not None else None)
  return normalize_record({
      "kind": "image", "resize": resize, "interpolation": interpolation, "antialias": True,
      "crop": None if crop is None else _pair(crop, "crop"), "crop_offset": crop_offset,
      "rescale": rescale, "mean": list(mean), "std": list(std), "channels": channels})


def normalize_record(record: Mapping[str, Any] | None, *, modality: str | None = None,
                     default_size: int | Sequence[int] | None = None) -> dict[str, Any]:
  """Any record (this schema or an older one) -> a validated record of this schema.

  Args:
    record: config.json's "preprocessing" (untrusted), or None/{} for none.
    modality: "image" or "text" when the caller knows it (an empty record then gets the
      defaults; a record of the other kind is an error).
    default_size: image side(s) when an old image record has no image_size.
  Returns:
    A new dict holding only the schema's keys (others, e.g. an old "dataset", are dropped).
  """
  if record is not None and not isinstance(record, Mapping):
    raise PreprocessingError(f"preprocessing must be a JSON object, not {type(record).__name__}")
  record = dict(record or {})
  kind = record.get("kind") or _guess_kind(record, modality)
  if modality is not None and kind != modality:
    raise PreprocessingError(f"preprocessing kind '{kind}' but the model takes {modality}s")
  if kind == "image":
    return _image(record, default_size)
  if kind == "text":
    return _text(record)
  raise PreprocessingError(f"preprocessing kind {kind!r}; allowed: 'image', 'text'")


def _guess_kind(record: Mapping[str, Any], modality: str | None) -> str:
  if any(k in record for k in ("tokenizer", "tokenizer_path", "max_len")):
    return "text"
  if any(k in record for k in ("image_size", "mean", "std", "resize_size")):
    return "image"
  if modality is None:
    raise PreprocessingError(f"cannot tell an image record from a text one: keys "
                             f"{sorted(record)}; set \"kind\"")
  return modality


def _image(r: dict[str, Any], default_size) -> dict[str, Any]:
  if "kind" not in r:  # an old record: translate (module docstring)
    size = r.get("image_size", default_size)
    if "resize_size" in r:
      r["resize"] = {"shorter": r["resize_size"]}
      r["crop"] = size
    else:
      r["resize"] = None if size is None else {"size": size}
      r.setdefault("crop", None)
    r.setdefault("rescale", r.get("scale", RESCALE))
  out = {"kind": "image"}
  out["resize"] = _resize(r.get("resize"))
  out["interpolation"] = _choice(r.get("interpolation", "bilinear"), INTERPOLATIONS,
                                 "interpolation")
  if r.get("antialias", True) is not True:
    raise PreprocessingError(f"antialias={r.get('antialias')!r}; allowed: true (PIL always "
                             "antialiases when shrinking)")
  out["antialias"] = True
  out["crop"] = None if r.get("crop") is None else _pair(r["crop"], "crop")
  out["crop_offset"] = _choice(r.get("crop_offset", "round"), CROP_OFFSETS, "crop_offset")
  out["rescale"] = _number(r.get("rescale", RESCALE), "rescale", positive=True)
  out["channels"] = _choice(r.get("channels", 3), (1, 3), "channels")
  for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
    out[key] = _floats(r.get(key, default), key, out["channels"], positive=key == "std")
  fixed = output_size(out)
  if fixed is not None:
    out["image_size"] = fixed[0] if isinstance(r.get("image_size"), int) and \
        fixed[0] == fixed[1] else list(fixed)
  else:
    out.pop("image_size", None)
  return out


def _text(r: dict[str, Any]) -> dict[str, Any]:
  out = {"kind": "text"}
  tok = r.get("tokenizer", "tokenizer.json")
  if (not isinstance(tok, str) or not tok or "/" in tok or "\\" in tok or tok in (".", "..")
      or len(tok) > 255):
    raise PreprocessingError(f"tokenizer={tok!r}; must be a file name inside the checkpoint "
                             "folder (e.g. 'tokenizer.json')")
  out["tokenizer"] = tok
  out["max_len"] = _int(r.get("max_len", 512), "max_len", 2, MAX_TOKENS)
  pooling = r.get("pooling")
  out["pooling"] = None if pooling is None else _choice(pooling, POOLINGS, "pooling")
  for key in ("normalize", "lowercase"):
    if not isinstance(r.get(key, False), bool):
      raise PreprocessingError(f"{key}={r[key]!r}; allowed: true, false")
    out[key] = r.get(key, False)
  if r.get("pad_token_id") is not None:
    out["pad_token_id"] = _int(r["pad_token_id"], "pad_token_id", 0, 1 << 24)
  return out


def _resize(resize: Any) -> dict[str, Any] | None:
  if resize is None:
    return None
  if resize == "resize":  # an old job record with no size: nothing to resize to
    return None
  if isinstance(resize, Mapping) and set(resize) == {"shorter"}:
    return {"shorter": _int(resize["shorter"], "resize.shorter", 1, MAX_SIDE)}
  if isinstance(resize, Mapping) and set(resize) == {"size"}:
    return {"size": _pair(resize["size"], "resize.size")}
  raise PreprocessingError(f"resize={resize!r}; allowed: {{\"shorter\": N}}, "
                           "{\"size\": [H, W]} or null")


def _pair(value: Any, key: str) -> list[int]:
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    value = [value, value]
  if not isinstance(value, (list, tuple)) or len(value) != 2:
    raise PreprocessingError(f"{key}={value!r}; allowed: N or [H, W] with 1 <= N <= {MAX_SIDE}")
  return [_int(v, key, 1, MAX_SIDE) for v in value]


def _int(value: Any, key: str, low: int, high: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
      low <= value <= high):
    raise PreprocessingError(f"{key}={value!r}; allowed: an integer in [{low}, {high}]")
  return int(value)


def _number(value: Any, key: str, positive: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not \
      math.isfinite(value) or (positive and value <= 0):
    raise PreprocessingError(f"{key}={value!r}; allowed: a finite number"
                             + (" > 0" if positive else ""))
  return float(value)


def _floats(values: Any, key: str, channels: int, positive: bool) -> list[float]:
  if isinstance(values, (int, float)) and not isinstance(values, bool):
    values = [values]
  if not isinstance(values, (list, tuple)) or len(values) not in (1, channels):
    raise PreprocessingError(f"{key}={values!r}; allowed: 1 or {channels} numbers "
                             "(one per channel)")
  return [_number(v, key, positive) for v in values]


def _choice(value: Any, allowed: Iterable, key: str):
  allowed = tuple(allowed)
  if isinstance(value, bool) or value not in allowed:
    raise PreprocessingError(f"{key}={value!r}; allowed: {', '.join(map(repr, allowed))}")
  return value


def output_size(record: Mapping[str, Any]) -> tuple[int, int] | None:
  """(H, W) every image comes out as, or None when it depends on the image."""
  if record.get("crop"):
    return tuple(record["crop"])
  resize = record.get("resize") or {}
  return tuple(resize["size"]) if "size" in resize else None


def with_image_size(record: Mapping[str, Any], size: int) -> dict[str, Any]:
  """The record with every image resized to size x size and no crop (`--image_size`)."""
  out = dict(record)
  out.update(resize={"size": [size, size]}, crop=None)
  out.pop("image_size", None)
  return normalize_record(out)


def with_eval_sizes(record: Mapping[str, Any], *, resize_size: int | None = None,
                    crop_size: int | None = None) -> dict[str, Any]:
  """An image record with its shorter side resized to resize_size and/or center-cropped to
  crop_size x crop_size (torchvision's `Resize(resize_size)`, `CenterCrop(crop_size)`)."""
  out = normalize_record(record, modality="image")
  if resize_size is not None:
    out["resize"] = {"shorter": resize_size}
  if crop_size is not None:
    out["crop"] = [crop_size, crop_size]
  if isinstance(out.pop("image_size", None), int):  # keep the int form (square output)
    out["image_size"] = crop_size or out["crop"][0] if out["crop"] else None
  return normalize_record(out)


def describe(record: Mapping[str, Any]) -> str:
  """One line saying what the record does, for consoles and reports."""
  if record.get("kind") == "text":
    parts = [f"tokenizer {record['tokenizer']}", f"max_len {record['max_len']}"]
    if record.get("pooling"):
      parts.append(f"{record['pooling']} pooling" + (", normalized" if record.get("normalize")
                                                      else ""))
    return ", ".join(parts)
  resize = record.get("resize") or {}
  parts = [f"{'RGB' if record['channels'] == 3 else 'gray'}"]
  if "shorter" in resize:
    parts.append(f"resize shorter side to {resize['shorter']} ({record['interpolation']})")
  elif "size" in resize:
    parts.append(f"resize to {resize['size'][0]}x{resize['size'][1]} "
                 f"({record['interpolation']})")
  if record.get("crop"):
    parts.append(f"center crop {record['crop'][0]}x{record['crop'][1]}")
  parts.append(f"x{record['rescale']:.6g}, mean {_fmt(record['mean'])}, std {_fmt(record['std'])}")
  return ", ".join(parts)


def _fmt(values: Sequence[float]) -> str:
  return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


# ----------------------------------------------------------------------------- images


def _pil():
  import PIL.Image  # noqa: PLC0415 -- only where images are made

  return PIL.Image


def open_image(path: str | pathlib.Path):
  """Decodes an image file fully (a PIL image); ImageError names the file if it cannot."""
  Image = _pil()
  try:
    with Image.open(path) as im:
      im.load()
      return im.copy()
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
          MemoryError) as e:  # PIL: UnidentifiedImageError (an OSError), truncated files, ...
    raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def to_pil(image: Any, channels: int = 3):
  """An image file, a PIL image or a uint8 array [h, w] / [h, w, 1|3|4] -> PIL "RGB" or "L".

  Conversion is PIL's `.convert` (torchvision's ImageFolder loader): gray is repeated, alpha
  dropped, palettes expanded; RGB -> gray by ITU-R 601-2 luma.
  """
  Image = _pil()
  mode = "RGB" if channels == 3 else "L"
  if isinstance(image, (str, os.PathLike)):
    image = open_image(image)
  if isinstance(image, Image.Image):
    return image if image.mode == mode else image.convert(mode)
  x = np.asarray(image)
  if x.dtype != np.uint8:
    raise ImageError(f"image array of dtype {x.dtype}; expected uint8 (0-255) [h, w] or "
                     "[h, w, 1|3|4]")
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim == 2:
    src = "L"
  elif x.ndim == 3 and x.shape[-1] in (3, 4):
    src = "RGB" if x.shape[-1] == 3 else "RGBA"
  else:
    raise ImageError(f"image array of shape {x.shape}; expected [h, w] or [h, w, 1|3|4]")
  if min(x.shape[:2]) < 1 or max(x.shape[:2]) > 4 * MAX_SIDE:
    raise ImageError(f"image of {x.shape[0]}x{x.shape[1]} pixels; sides must be in "
                     f"[1, {4 * MAX_SIDE}]")
  im = Image.fromarray(np.ascontiguousarray(x), src)
  return im if src == mode else im.convert(mode)


def resized_size(height: int, width: int, resize: Mapping[str, Any] | None) -> tuple[int, int]:
  """(h, w) after `resize`: torchvision's Resize([n]) arithmetic for "shorter"."""
  if not resize:
    return height, width
  if "size" in resize:
    return tuple(resize["size"])
  n = resize["shorter"]
  if width <= height:
    return int(n * height / width), n
  return n, int(n * width / height)


def pixels(record: Mapping[str, Any], image: Any) -> np.ndarray:
  """One image -> uint8 [H, W, channels]: converted, resized and cropped, not yet normalized.

  Args:
    record: a normalized image record.
    image: an image file, a PIL image (any mode) or a uint8 array [h, w] / [h, w, 1|3|4].
  """
  Image = _pil()
  im = to_pil(image, record["channels"])
  h, w = resized_size(im.height, im.width, record.get("resize"))
  if (h, w) != (im.height, im.width):
    im = im.resize((w, h), getattr(Image.Resampling, record["interpolation"].upper()))
  x = np.asarray(im)
  x = x[..., None] if x.ndim == 2 else x
  if record.get("crop"):
    x = center_crop(x, tuple(record["crop"]), record.get("crop_offset", "round"))
  return x


def center_crop(x: np.ndarray, size: tuple[int, int], offset: str = "round") -> np.ndarray:
  """[h, w, c] -> [H, W, c], zero-padded first where the image is smaller (torchvision).

  offset "round" is torchvision's `int(round((h - H) / 2))` (Python rounds halves to even);
  "floor" is Hugging Face's `(h - H) // 2`.
  """
  ch, cw = size
  h, w = x.shape[:2]
  if ch > h or cw > w:  # torchvision: pad left/top by d // 2, right/bottom by (d + 1) // 2
    dh, dw = max(ch - h, 0), max(cw - w, 0)
    x = np.pad(x, ((dh // 2, (dh + 1) // 2), (dw // 2, (dw + 1) // 2), (0, 0)))
    h, w = x.shape[:2]
  if offset == "round":
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
  else:
    top, left = (h - ch) // 2, (w - cw) // 2
  return x[top:top + ch, left:left + cw]


def normalize(record: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
  """uint8 (or float pixel-valued) [..., c] -> float32 `(x * rescale - mean) / std`."""
  mean = np.asarray(record["mean"], np.float32)
  std = np.asarray(record["std"], np.float32)
  return ((x.astype(np.float32) * np.float32(record["rescale"]) - mean) / std).astype(
      np.float32)


def image(record: Mapping[str, Any], img: Any) -> np.ndarray:
  """One image -> float32 [H, W, channels], ready for the model."""
  return normalize(record, pixels(record, img))


def images(record: Mapping[str, Any], imgs: Sequence[Any]) -> np.ndarray:
  """Images -> float32 [b, H, W, channels]; they must all come out the same size."""
  out = [pixels(record, im) for im in imgs]
  shapes = {x.shape for x in out}
  if len(shapes) > 1:
    raise ImageError(f"images come out in {len(shapes)} sizes {sorted(shapes)[:3]}...; a "
                     "batch needs a record with a crop or a fixed resize size")
  return normalize(record, np.stack(out))


# ----------------------------------------------------------------------------- text


def load_tokenizer(path: str | pathlib.Path, max_len: int):
  """A `tokenizers.Tokenizer` from tokenizer.json, truncating to max_len, not padding."""
  from tokenizers import Tokenizer  # noqa: PLC0415

  try:
    tok = Tokenizer.from_file(str(path))
  except Exception as e:  # tokenizers raises its own Exception type for bad JSON
    raise PreprocessingError(f"{path}: not a readable tokenizer.json ({e})") from None
  tok.no_padding()
  tok.enable_truncation(max_length=int(max_len))
  return tok


def pad_id(tokenizer, record: Mapping[str, Any] | None = None) -> int:
  """The padding token: the record's, else the tokenizer's padding, "[PAD]", "<pad>", else 0."""
  if record and record.get("pad_token_id") is not None:
    return int(record["pad_token_id"])
  for token in ("[PAD]", "<pad>"):
    found = tokenizer.token_to_id(token)
    if found is not None:
      return int(found)
  return 0


def tokenize(tokenizer, texts: Sequence[str], length: int | None = None, pad: int = 0, *,
             lowercase: bool = False, round_to: int = 1) -> dict[str, np.ndarray]:
  """Texts -> int32 [b, length] input_ids, attention_mask, token_type_ids (right-padded).

  Args:
    tokenizer: from `load_tokenizer` (truncates to the record's max_len).
    texts: b strings.
    length: the padded length (longer encodings are cut to it); None: the longest encoding
      rounded up to a multiple of `round_to` (fewer shapes for jit to compile).
    pad: the padding token id.
    lowercase: lowercase the texts first.
  """
  texts = [str(t).lower() if lowercase else str(t) for t in texts]
  encodings = tokenizer.encode_batch(texts)
  if length is None:
    longest = max([len(e.ids) for e in encodings], default=1)
    length = max(round_to, -(-longest // round_to) * round_to)
    cap = (tokenizer.truncation or {}).get("max_length")
    length = max(min(length, cap), longest) if cap else length  # never past max_len
  ids = np.full((len(texts), length), pad, np.int32)
  mask = np.zeros((len(texts), length), np.int32)
  types = np.zeros((len(texts), length), np.int32)
  for i, e in enumerate(encodings):
    n = min(len(e.ids), length)
    ids[i, :n], mask[i, :n], types[i, :n] = e.ids[:n], e.attention_mask[:n], e.type_ids[:n]
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
