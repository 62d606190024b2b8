"""Load any checkpoint and use it: `jaxpretrain.load(source)` -> classify, embed, features.

    import jaxpretrain
    model = jaxpretrain.load("resnet18-f37072fd.pth", arch="resnet18")
    labels, scores = model.classify(["photo.jpg"], top_k=5)   # ImageNet names, softmax probs
    text = jaxpretrain.load("minilm")
    vectors = text.embed(["A man is playing a guitar."])     # = SentenceTransformer.encode
    clip = jaxpretrain.load("out/clip")                      # a converted CLIPModel
    labels, scores = clip.classify(["photo.jpg"], labels=["cat", "dog"])  # zero-shot

`source` is anything `--init_checkpoint` takes: a converted checkpoint folder, a run's workdir
(its `model/`) or that `model/` folder, a Hugging Face folder, a torchvision weights file (with
`arch=`), or "minilm" (the packaged all-MiniLM-L6-v2). Folders and files that are not
jaxpretrain checkpoints are converted once into a cache folder (`$JAXPRETRAIN_CACHE`, else
`~/.cache/jaxpretrain/converted`; a temporary folder if that cannot be written), never into
the source.

Inputs are made as the checkpoint's preprocessing record says (`jaxpretrain.preprocess`):
images (file paths, PIL images or uint8 arrays) are resized, cropped and normalized as torch
did in training; texts go through the checkpoint's tokenizer.json (a CLIPModel's label
prompts through its text tower's tokenizer.json). Every method is batched
and jit-compiled; batches are padded to a power of two (and text to a power-of-two length),
so a few shapes are compiled, not one per call.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxpretrain import preprocess, pretrained

MINILM = "minilm"
CACHE_ENV = "JAXPRETRAIN_CACHE"
# Pooled features ("what select uses") and sentence-transformers' poolings.
POOLINGS = ("pooled", *preprocess.POOLINGS)
MAX_CLASS_NAME_CHARS = 1000
MIN_TEXT_LENGTH = 16  # shortest padded text length: fewer compiled shapes for short texts
# A run's exported model, inside its workdir (jaxpretrain.job.loop).
RUN_MODEL_DIR = "model"
# Keys of a CLIPModel's preprocessing record that describe its text tower's prompts, not its
# images (ports/hf_clip.py writes both into one record).
PROMPT_KEYS = ("tokenizer", "max_len", "pad_token_id", "lowercase")
MAX_LABELS = 100_000  # zero-shot labels per call: ImageNet-21k's 21,841 fit


class LoadError(ValueError):
  """A source cannot be loaded or used this way; the message says why and what to do."""


# ----------------------------------------------------------------------------- sources


def cache_root() -> pathlib.Path:
  """Where converted sources are kept: $JAXPRETRAIN_CACHE, else ~/.cache/jaxpretrain."""
  root = os.environ.get(CACHE_ENV)
  if root:
    return pathlib.Path(root).expanduser()
  xdg = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(xdg) / "jaxpretrain"


def _is_checkpoint(folder: pathlib.Path) -> bool:
  if not (folder / pretrained.CONFIG).is_file():
    return False
  try:
    pretrained.read_config(folder)
    return True
  except ValueError:
    return False  # a Hugging Face folder's config.json


def _fingerprint(src: pathlib.Path, arch: str | None) -> str:
  """Changes when the source's files change: its path, arch, and each file's size and mtime."""
  files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.is_file())
  stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
  raw = json.dumps({"src": str(src.resolve()), "arch": arch, "files": stats})
  return hashlib.sha256(raw.encode()).hexdigest()[:16]


def check_source(source: str | os.PathLike, *, arch: str | None = None) -> None:
  """Checks a source's format in milliseconds, converting and loading nothing.

  Raises:
    LoadError: no such file or folder; a folder that is neither a checkpoint, a run's workdir
      nor a Hugging Face folder of a ported model_type (e.g. GPT-2); a weights file without
      `arch`.
  """
  if str(source) == MINILM:
    from jaxpretrain.job import task  # noqa: PLC0415

    try:
      task.minilm_folder()
    except FileNotFoundError as e:
      raise LoadError(str(e)) from None
    return
  src = pathlib.Path(source).expanduser()
  if src.is_dir():
    if _is_checkpoint(src) or _is_checkpoint(src / RUN_MODEL_DIR):
      return
    if not (src / pretrained.CONFIG).is_file():
      raise LoadError(f"{src}: neither a checkpoint folder, a run's workdir with "
                      f"{RUN_MODEL_DIR}/config.json, nor a Hugging Face folder (no config.json)")
    check_hf_folder(src)
  elif src.is_file():
    if not arch:
      raise LoadError(f"{src} is a weights file: name its architecture (arch=, --arch, "
                      "--model), e.g. resnet18")
  else:
    raise LoadError(f"{source!s}: no such file or folder; allowed: a checkpoint folder, a run's "
                    f"workdir, a Hugging Face folder, a torchvision file (with arch) or "
                    f"'{MINILM}'")


def check_hf_folder(src: pathlib.Path) -> None:
  """A Hugging Face folder's config.json names a ported model_type (else LoadError)."""
  from jaxpretrain import safe_io  # noqa: PLC0415
  from ports import convert  # noqa: PLC0415 -- the table of ported model types; no torch

  try:
    hf = safe_io.read_json(src / pretrained.CONFIG)
  except ValueError as e:
    raise LoadError(str(e)) from None
  model_type = hf.get("model_type") if isinstance(hf, dict) else None
  known = convert.hf_ports()
  if not isinstance(model_type, str) or model_type not in known:
    raise LoadError(f"{src}: a Hugging Face folder of model_type {safe_io.short(model_type)}, "
                    f"which has no port; supported: {', '.join(sorted(known))}")


def resolve(source: str | os.PathLike, *, arch: str | None = None,
            cache_dir: str | os.PathLike | None = None,
            log: Callable[[str], None] | None = None) -> tuple[pathlib.Path, bool]:
  """A source -> (checkpoint folder, whether it is a temporary folder to delete after loading).

  Args:
    source: see the module docstring.
    arch: a torchvision file's architecture (e.g. "resnet18").
    cache_dir: where conversions go (default `cache_root() / "converted"`).
    log: receives one line when a source is converted (default: stderr).
  """
  log = log or (lambda msg: print(msg, file=sys.stderr))
  if str(source) == MINILM:
    from jaxpretrain.job import task  # noqa: PLC0415

    src = task.minilm_folder()
  else:
    src = pathlib.Path(source).expanduser()
  if src.is_dir():
    if _is_checkpoint(src):
      return src, False
    if _is_checkpoint(src / RUN_MODEL_DIR):
      return src / RUN_MODEL_DIR, False
    if not (src / pretrained.CONFIG).is_file():
      raise LoadError(f"{src}: neither a checkpoint folder, a run's workdir with "
                      f"{RUN_MODEL_DIR}/config.json, nor a Hugging Face folder (no config.json)")
  elif src.is_file():
    if not arch:
      raise LoadError(f"{src} is a weights file: name its architecture with arch= (--arch), "
                      "e.g. arch='resnet18'")
  else:
    raise LoadError(f"{source!s}: no such file or folder; allowed: a checkpoint folder, a run's "
                    f"workdir, a Hugging Face folder, a torchvision file (with arch) or "
                    f"'{MINILM}'")
  if src.is_dir():
    check_hf_folder(src)  # an unported model_type fails here, before any conversion
  name = MINILM if str(source) == MINILM else src.name
  return _convert(src, name, arch if src.is_file() else None, cache_dir, log)


def _convert(src: pathlib.Path, name: str, arch: str | None, cache_dir, log
             ) -> tuple[pathlib.Path, bool]:
  from ports import convert  # noqa: PLC0415 -- only to convert
  from ports.rules import PortError  # noqa: PLC0415

  root = pathlib.Path(cache_dir) if cache_dir else cache_root() / "converted"
  dst = root / f"{name}-{_fingerprint(src, arch)}"
  if _is_checkpoint(dst):
    return dst, False
  temporary = False
  try:
    root.mkdir(parents=True, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=root)  # noqa: SIM115 -- a writability probe
    probe.close()
  except OSError as e:
    log(f"cannot write the cache {root} ({e.strerror}); converting into a temporary folder")
    dst, temporary = pathlib.Path(tempfile.mkdtemp(prefix="jaxpretrain-")) / name, True
  log(f"converting {src} into {dst}")
  try:
    convert.convert(src, dst, arch=arch)
  except PortError as e:
    raise LoadError(f"{src}: {e}") from None
  except FileExistsError:  # another process converted it meanwhile
    if not _is_checkpoint(dst):
      raise
  except OSError:
    if not _is_checkpoint(dst):  # lost a race to rename into place
      raise
  return dst, temporary


def load(source: str | os.PathLike, *, arch: str | None = None,
         cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
         log: Callable[[str], None] | None = None) -> Pretrained:
  """Loads a checkpoint from any source (module docstring) with what it needs to run.

  Args:
    source: a checkpoint folder, a run's workdir, a Hugging Face folder, a torchvision file
      (with `arch`) or "minilm".
    arch: a torchvision file's architecture.
    cache_dir: where conversions are kept (default `cache_root() / "converted"`).
    batch_size: examples per compiled call.
    log: receives progress lines (default: stderr).
  Returns:
    A `Pretrained`.
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise LoadError(f"batch_size={batch_size!r}; allowed: an integer >= 1")
  folder, temporary = resolve(source, arch=arch, cache_dir=cache_dir, log=log)
  try:
    return Pretrained.from_folder(folder, batch_size=batch_size)
  finally:
    if temporary:
      shutil.rmtree(folder.parent, ignore_errors=True)


# ----------------------------------------------------------------------------- the model


def _inside(folder: pathlib.Path, name: str) -> pathlib.Path:
  path = (folder / name).resolve()
  if not path.is_relative_to(folder.resolve()) or not path.is_file():
    raise LoadError(f"{folder}: no file '{name}' inside the folder")
  return path


def _class_names(config: Mapping[str, Any], num_classes: int | None) -> list[str] | None:
  """config.json's "class_names" (runs before it existed: preprocessing's), validated."""
  where = "class_names"
  names = config.get("class_names")
  if names is None:
    names, where = (config.get("preprocessing") or {}).get("class_names"), \
        "preprocessing.class_names"
  if num_classes is None:
    return None
  if names is None:
    return [f"class_{i}" for i in range(num_classes)]
  if not isinstance(names, list) or not all(
      isinstance(n, str) and len(n) <= MAX_CLASS_NAME_CHARS for n in names):
    raise LoadError(f"config.json: {where} must be a list of strings (at most "
                    f"{MAX_CLASS_NAME_CHARS} characters each)")
  if len(names) != num_classes:
    raise LoadError(f"config.json: {where} has {len(names)} names but the head has "
                    f"{num_classes} outputs")
  return list(names)


@dataclasses.dataclass(eq=False)
class Pretrained:
  """A loaded checkpoint: module, variables, preprocessing, tokenizer and class names."""
  path: pathlib.Path
  config: dict[str, Any]  # config.json
  model: Any  # flax.linen.Module
  variables: Any  # {"params": ..., "batch_stats": ...} on the default device
  modality: str  # "image" | "text"
  preprocessing: dict[str, Any]  # a normalized record (jaxpretrain.preprocess)
  tokenizer: Any  # tokenizers.Tokenizer for text models and CLIP's text tower, else None
  num_classes: int | None  # outputs of the classification head; None: no head
  class_names: list[str] | None  # index = class id (class_<i> when the checkpoint has none)
  batch_size: int = 32
  # A CLIPModel's label prompts (zero_shot): the text record (tokenizer, max_len,
  # pad_token_id); None for models without a text tower.
  prompt_preprocessing: dict[str, Any] | None = None
  _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def from_folder(cls, folder: str | os.PathLike, *, batch_size: int = 32) -> Pretrained:
    """Loads a checkpoint folder (config.json + variables)."""
    import jax  # noqa: PLC0415

    folder = pathlib.Path(folder)
    config = pretrained.read_config(folder)
    model, variables = pretrained.load_pretrained(folder)
    return cls.from_parts(folder, config, model, jax.device_put(variables),
                          batch_size=batch_size)

  @classmethod
  def from_parts(cls, folder: str | os.PathLike, config: Mapping[str, Any], model: Any,
                 variables: Any, *, batch_size: int = 32) -> Pretrained:
    """A checkpoint already loaded (its config.json, module and variables, e.g. a `select`
    candidate's), its variables used as given; the tokenizer is read from `folder`."""
    import jax  # noqa: PLC0415

    from jaxpretrain import models  # noqa: PLC0415

    folder, config = pathlib.Path(folder), dict(config)
    inputs = models.dummy_inputs(config["model"], model)
    x = inputs.pop("x")
    modality = "text" if np.issubdtype(x.dtype, np.integer) else "image"
    _, aux = jax.eval_shape(lambda v: model.apply(v, x, train=False, **inputs), variables)
    logits = aux.get("logits")
    num_classes = int(logits.shape[-1]) if logits is not None and logits.ndim == 2 else None
    raw = config.get("preprocessing") or {}
    prompt_record = tokenizer = None
    try:
      if modality == "image" and isinstance(raw, Mapping):
        if has_text_tower(model):
          prompt_record = preprocess.normalize_record(
              {k: raw[k] for k in PROMPT_KEYS if k in raw}, modality="text")
          prompt_record["max_len"] = min(prompt_record["max_len"],
                                         model.text_max_position_embeddings)
        raw = {k: v for k, v in raw.items() if k not in PROMPT_KEYS}
      record = preprocess.normalize_record(
          raw, modality=modality, default_size=getattr(model, "image_size", None) or 224)
    except ValueError as e:
      raise LoadError(f"{folder / pretrained.CONFIG}: preprocessing: {e}") from None
    if prompt_record is not None and (folder / prompt_record["tokenizer"]).is_file():
      tokenizer = preprocess.load_tokenizer(_inside(folder, prompt_record["tokenizer"]),
                                            prompt_record["max_len"])
    if modality == "image":
      record["channels"] = int(getattr(model, "num_channels", record["channels"]))
      record = preprocess.normalize_record(record)
    else:
      limit = getattr(model, "max_position_embeddings", None)
      record["max_len"] = min(record["max_len"], limit) if limit else record["max_len"]
      tokenizer = preprocess.load_tokenizer(_inside(folder, record["tokenizer"]),
                                            record["max_len"])
    return cls(path=folder, config=config, model=model, variables=variables,
               modality=modality, preprocessing=record, tokenizer=tokenizer,
               num_classes=num_classes, class_names=_class_names(config, num_classes),
               batch_size=batch_size, prompt_preprocessing=prompt_record)

  # -- inputs

  def _as_list(self, inputs: Any) -> list:
    if self.modality == "text":
      if isinstance(inputs, str):
        return [inputs]
      inputs = list(inputs)
      bad = [type(t).__name__ for t in inputs if not isinstance(t, str)]
      if bad:
        raise LoadError(f"a text model takes strings; got {bad[0]}")
      return inputs
    if isinstance(inputs, (str, os.PathLike)) or _is_pil(inputs):
      return [inputs]
    if isinstance(inputs, np.ndarray):
      return list(inputs) if inputs.ndim == 4 else [inputs]
    return list(inputs)

  def preprocess(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
    """Model inputs of one batch, unpadded.

    Args:
      inputs: images (paths, PIL images, uint8 arrays [h, w(, c)]) or texts.
    Returns:
      {"image": float32 [b, H, W, C]} or {"input_ids", "attention_mask", "token_type_ids":
      int32 [b, length]} (length: the longest text, rounded up to a power of two).
    """
    items = self._as_list(inputs)
    if self.modality == "image":
      imgs = [preprocess.open_image(x) if isinstance(x, (str, os.PathLike)) else x
              for x in items]
      return {"image": preprocess.images(self.preprocessing, imgs)}
    rec = self.preprocessing
    batch = preprocess.tokenize(self.tokenizer, items, None, preprocess.pad_id(
        self.tokenizer, rec), lowercase=rec.get("lowercase", False))
    n = batch["input_ids"].shape[1]
    length = min(max(MIN_TEXT_LENGTH, 1 << (n - 1).bit_length()), max(n, rec["max_len"]))
    pad = {"input_ids": preprocess.pad_id(self.tokenizer, rec)}
    return {k: np.pad(v, ((0, 0), (0, length - n)), constant_values=pad.get(k, 0))
            for k, v in batch.items()}

  # -- compiled forward

  def _fn(self, pooling: str | None):
    """jit of (variables, batch) -> {"logits"?, "features"?} for one pooling (None: logits)."""
    if pooling not in self._compiled:
      import jax  # noqa: PLC0415

      from jaxpretrain import perf  # noqa: PLC0415
      from jaxpretrain.models import registry  # noqa: PLC0415

      family = registry.family_of(self.config["model"])
      self._compiled[pooling] = jax.jit(
          functools.partial(_forward, self.model, family, pooling=pooling),
          compiler_options=perf.compiler_options("inference"))
    return self._compiled[pooling]

  def _run(self, inputs: Any, pooling: str | None, key: str) -> np.ndarray:
    fn = self._fn(pooling)
    return self._batched(inputs, lambda batch: fn(self.variables, batch)[key])

  def logits(self, inputs: Any) -> np.ndarray:
    """float32 [n, num_classes] classification logits."""
    self.require_head()
    return self._run(inputs, None, "logits")

  def probabilities(self, inputs: Any) -> np.ndarray:
    """float32 [n, num_classes] softmax probabilities."""
    z = self.logits(inputs).astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)

  def classify(self, inputs: Any, top_k: int = 5, labels: Sequence[str] | None = None,
               template: str | None = None) -> tuple[list[list[str]], np.ndarray]:
    """Top-k class names and softmax probabilities.

    Args:
      inputs: images (paths, PIL images, uint8 arrays) or texts; one or a list.
      top_k: how many classes per input (at most num_classes, or len(labels)).
      labels: class names for zero-shot classification by a CLIPModel (`zero_shot`); None:
        the model's classification head and its class names.
      template: with labels, the prompt (default clip.PROMPT, "a photo of a {label}").
    Returns:
      (labels, scores): n lists of top_k names, best first, and float32 [n, top_k].
    """
    if labels is None:
      probs, names = self.probabilities(inputs), self.class_names
    else:
      probs, names = self.zero_shot(inputs, labels, template), list(labels)
    idx = top_indices(probs, top_k)
    return [[names[i] for i in row] for row in idx], np.take_along_axis(probs, idx, axis=1)

  # -- zero-shot (CLIPModel)

  def check_zero_shot(self, labels: Sequence[str], template: str | None = None
                      ) -> tuple[list[str], str]:
    """Checks labels and template for `zero_shot` (LoadError naming the bad value).

    Returns:
      (labels as a list, the template).
    """
    from jaxpretrain.models import clip  # noqa: PLC0415

    template = clip.PROMPT if template is None else template
    if not has_text_tower(self.model):
      what = ("a CLIP converted without its text tower (CLIPForImageClassification)"
              if isinstance(self.model, clip.CLIP) else f"'{self.config['model']}'")
      raise LoadError(f"{self.path}: labels need a CLIP model with its text tower "
                      f"(CLIPModel); this model is {what}")
    if isinstance(labels, str) or not isinstance(labels, Sequence):
      raise LoadError(f"labels={_short(labels)}: give a list of label strings, e.g. "
                      "['cat', 'dog']")
    labels = list(labels)
    if not labels:
      raise LoadError("labels=[]: give at least one label")
    if len(labels) > MAX_LABELS:
      raise LoadError(f"{len(labels)} labels; at most {MAX_LABELS}")
    seen = set()
    for label in labels:
      if not isinstance(label, str):
        raise LoadError(f"label {_short(label)} ({type(label).__name__}) is not a string")
      if not label.strip() or len(label) > MAX_CLASS_NAME_CHARS:
        raise LoadError(f"label {_short(label)}: labels are non-empty strings of at most "
                        f"{MAX_CLASS_NAME_CHARS} characters")
      if label in seen:
        raise LoadError(f"label {label!r} appears twice; labels must be distinct")
      seen.add(label)
    if not isinstance(template, str) or "{label}" not in template:
      raise LoadError(f"template={_short(template)} has no '{{label}}'; e.g. {clip.PROMPT!r}")
    try:
      template.format(label="x")
    except (KeyError, IndexError, ValueError) as e:
      raise LoadError(f"template={template!r}: only '{{label}}' may be in braces ({e!r}); "
                      "write a literal brace as '{{' or '}}'") from None
    if self.tokenizer is None:
      raise LoadError(f"{self.path}: no {self.prompt_preprocessing['tokenizer']} for the "
                      "label prompts; convert from a CLIP folder that has one, or add it with "
                      "python -m ports.convert --tokenizer FOLDER")
    return labels, template

  def zero_shot(self, images: Any, labels: Sequence[str], template: str | None = None
                ) -> np.ndarray:
    """float32 [n, len(labels)] probabilities that each image shows each label, untrained.

    A CLIPModel scores each image against the prompt `template.format(label=...)` of each
    label: softmax of its logits_per_image (jaxpretrain.models.clip.zero_shot_classify).

    Args:
      images: images (paths, PIL images, uint8 arrays); one or a list.
      labels: distinct class names, e.g. ["cat", "dog"].
      template: the prompt, with "{label}" (default clip.PROMPT, "a photo of a {label}").
    """
    weights = self.zero_shot_weights(labels, template)
    fn = self._zero_shot_fn("image")
    z = self._batched(images, lambda batch: fn(self.variables, batch["image"], weights))
    z = z.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)

  def zero_shot_weights(self, labels: Sequence[str], template: str | None = None
                        ) -> np.ndarray:
    """float32 [len(labels), projection_dim] unit text features of the labels' prompts: the
    zero-shot classifier (`zero_shot`; `select`'s zero_shot score). Checked as `zero_shot`."""
    labels, template = self.check_zero_shot(labels, template)
    return self._label_weights(tuple(labels), template)

  def _zero_shot_fn(self, which: str):
    """jit of the label prompts' weights ("text") or the images' logits ("image")."""
    key = f"zero_shot_{which}"
    if key not in self._compiled:
      import jax  # noqa: PLC0415

      from jaxpretrain import perf  # noqa: PLC0415
      from jaxpretrain.models import clip  # noqa: PLC0415

      fn = (functools.partial(clip.zero_shot_weights, self.model) if which == "text" else
            functools.partial(clip.zero_shot_logits, self.model))
      self._compiled[key] = jax.jit(fn, compiler_options=perf.compiler_options("inference"))
    return self._compiled[key]

  def _label_weights(self, labels: tuple[str, ...], template: str):
    """[labels, projection_dim] unit text features of the prompts (the last set is kept)."""
    cached = self._compiled.get("zero_shot_weights")
    if cached is not None and cached[0] == (labels, template):
      return cached[1]
    from jaxpretrain.models import clip  # noqa: PLC0415

    texts = clip.prompts(labels, template)
    fn, step, out = self._zero_shot_fn("text"), self.batch_size, []
    for start in range(0, len(texts), step):
      chunk = texts[start:start + step]
      batch = _padded(self.prompt_tokens(chunk), len(chunk), step)
      out.append(np.asarray(fn(self.variables, batch["input_ids"],
                               batch["attention_mask"]))[:len(chunk)])
    weights = np.concatenate(out)
    self._compiled["zero_shot_weights"] = ((labels, template), weights)
    return weights

  def prompt_tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """A CLIPModel's prompts -> {"input_ids", "attention_mask": int32 [b, length]}, padded
    to a power-of-two length (at most the text tower's positions); each row is checked to
    hold the end-of-text token the text tower pools at."""
    rec, model = self.prompt_preprocessing, self.model
    pad = preprocess.pad_id(self.tokenizer, rec)
    batch = preprocess.tokenize(self.tokenizer, texts, None, pad,
                                lowercase=rec.get("lowercase", False))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n = ids.shape[1]
    length = min(max(MIN_TEXT_LENGTH, 1 << (n - 1).bit_length()), max(n, rec["max_len"]))
    ids = np.pad(ids, ((0, 0), (0, length - n)), constant_values=pad)
    mask = np.pad(mask, ((0, 0), (0, length - n)))
    where = self.path / rec["tokenizer"]
    if ids.max() >= model.text_vocab_size or ids.min() < 0:
      bad = int(ids.max() if ids.max() >= model.text_vocab_size else ids.min())
      raise LoadError(f"{where}: token id {bad} (pad_token_id {pad}) is outside the text "
                      f"tower's vocabulary of {model.text_vocab_size}")
    _check_end_of_text(ids, mask, model.text_eos_token_id, texts, where)
    return {"input_ids": ids, "attention_mask": mask}

  def _batched(self, inputs: Any, fn: Callable[[dict[str, np.ndarray]], Any]) -> np.ndarray:
    """fn(batch) of every batch of inputs, padded to a power of two, concatenated."""
    items = self._as_list(inputs)
    if not items:
      raise LoadError("no inputs")
    out = []
    step = self.batch_size
    if self.modality == "image" and preprocess.output_size(self.preprocessing) is None:
      step = 1  # images keep their own sizes: one at a time
    for start in range(0, len(items), step):
      chunk = items[start:start + step]
      batch = _padded(self.preprocess(chunk), len(chunk), step)
      out.append(np.asarray(fn(batch))[:len(chunk)])
    return np.concatenate(out)

  def features(self, inputs: Any, pooling: str = "pooled") -> np.ndarray:
    """float32 [n, d] features: `pooled` is what `select` uses (the model's pooled output:
    ResNet's average pool, BERT's pooler, ViT's pooler or [CLS]); text models also take
    "mean", "cls", "max" and "mean_sqrt_len" over the last hidden state's real tokens."""
    if pooling not in POOLINGS:
      raise LoadError(f"pooling={pooling!r}; allowed: {', '.join(POOLINGS)}")
    if pooling != "pooled" and self.modality != "text":
      raise LoadError(f"pooling={pooling!r} is for text models; image models take 'pooled'")
    return self._run(inputs, pooling, "features")

  def embed(self, texts: str | Sequence[str]) -> np.ndarray:
    """float32 [n, d] sentence embeddings: the recorded pooling (sentence-transformers'
    Pooling; "mean" when none is recorded), L2-normalized if the record says so."""
    if self.modality != "text":
      raise LoadError(f"{self.path}: embed() takes texts, and this model takes images; use "
                      "features(images)")
    x = self.features(texts, self.preprocessing.get("pooling") or "mean")
    if self.preprocessing.get("normalize"):  # torch.nn.functional.normalize, eps 1e-12
      x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x.astype(np.float32)

  def require_head(self) -> None:
    """Fails with a clear message when the model has no classification head."""
    if self.num_classes is None:
      zero_shot = ("; or classify zero-shot from label names: labels=['cat', 'dog'] "
                   "(predict --labels=cat,dog)" if has_text_tower(self.model) else "")
      raise LoadError(
          f"{self.path}: the model ('{self.config['model']}') has no classification head; use "
          "embed()/features() for its features, or fine-tune it first (python -m "
          f"jaxpretrain.finetune --init_checkpoint={self.path} --dataset=...){zero_shot}")


def _padded(batch: Mapping[str, np.ndarray], count: int, step: int) -> dict[str, np.ndarray]:
  """`count` rows padded with copies of the last to a power of two (at most `step`), so
  that jit compiles few shapes; callers keep the first `count` outputs."""
  size = min(step, 1 << (count - 1).bit_length())
  return {k: np.concatenate([v, np.repeat(v[-1:], size - count, 0)]) for k, v in batch.items()}


def top_indices(probs: np.ndarray, k: int) -> np.ndarray:
  """int [n, min(k, C)] indices of the k largest values per row, largest first (stable)."""
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise LoadError(f"top_k={k!r}; allowed: an integer >= 1")
  k = min(k, probs.shape[-1])
  return np.argsort(-probs, axis=-1, kind="stable")[:, :k]


def has_text_tower(model: Any) -> bool:
  """A CLIPModel (head None): label prompts can classify its images zero-shot."""
  from jaxpretrain.models import clip  # noqa: PLC0415

  return isinstance(model, clip.CLIP) and model.head is None


def _check_end_of_text(ids: np.ndarray, mask: np.ndarray, eos_token_id: int,
                       texts: Sequence[str], where: pathlib.Path) -> None:
  """Each prompt holds the end-of-text token where CLIP's text tower pools (clip.TextTower):
  the largest id, its last token, for legacy eos_token_id 2; else the first eos_token_id."""
  from jaxpretrain.models import clip  # noqa: PLC0415

  lengths = mask.sum(-1)
  if eos_token_id == clip.LEGACY_EOS_TOKEN_ID:
    ok = np.argmax(ids, axis=-1) == lengths - 1
    want = "end with the end-of-text token, the largest id"
  else:
    pos = np.argmax(ids == eos_token_id, axis=-1)
    ok = (ids[np.arange(len(ids)), pos] == eos_token_id) & (pos < lengths)
    want = f"hold the end-of-text token {eos_token_id}"
  if not ok.all():
    i = int(np.argmin(ok))
    raise LoadError(f"{where}: the prompt {_short(texts[i])} tokenizes to "
                    f"{_short(ids[i, :lengths[i]].tolist())}; CLIP's text tower pools at the "
                    f"end-of-text token, so prompts must {want}")


def _short(value: Any, limit: int = 80) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 1] + "…"


def _is_pil(x: Any) -> bool:
  return type(x).__module__.startswith("PIL.")


def _forward(model, family, variables, batch, *, pooling: str | None):
  """The model on a batch -> {"logits"} (pooling None) or {"features"}.

  The family's `inputs` choose what the model takes (DistilBERT has no token types).
  """
  import jax.numpy as jnp  # noqa: PLC0415

  _, aux = family.forward(model, variables, batch, train=False)
  mask = batch.get("attention_mask")
  if pooling is None:
    return {"logits": aux["logits"].astype(jnp.float32)}
  return {"features": pool(aux, mask, pooling)}


def pool(aux: Mapping[str, Any], attention_mask, pooling: str):
  """float32 [b, d] features from a model's aux dict (see `Pretrained.features`).

  "mean", "cls", "max" and "mean_sqrt_len" are sentence-transformers' Pooling modes over
  aux["last_hidden_state"] [b, s, d] and the attention mask [b, s].
  """
  import jax.numpy as jnp  # noqa: PLC0415

  if pooling == "pooled":
    for key in ("pooled", "pre_logits"):
      if key in aux:
        return aux[key].astype(jnp.float32)
    raise LoadError(f"pooling 'pooled': the model gives no pooled output (aux keys "
                    f"{sorted(aux)}); use pooling 'mean'")
  h = aux["last_hidden_state"].astype(jnp.float32)  # [b, s, d]
  if pooling == "cls":
    return h[:, 0]
  m = (jnp.ones(h.shape[:2]) if attention_mask is None else attention_mask).astype(
      jnp.float32)[..., None]  # [b, s, 1]
  if pooling == "max":  # sentence-transformers sets padding to -1e9 before the max
    return jnp.where(m > 0, h, -1e9).max(1)
  total, count = (h * m).sum(1), m.sum(1)
  if pooling == "mean_sqrt_len":
    return total / jnp.sqrt(jnp.maximum(count, 1e-9))
  return total / jnp.maximum(count, 1e-9)  # "mean", clamped as sentence-transformers does
