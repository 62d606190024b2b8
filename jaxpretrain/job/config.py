"""A training job's settings as one frozen dataclass, and their validation.

`JobConfig` is what the absl mains build from flags (`job/flags.py`) and what other code
passes to `job.finetune` / `job.pretrain` directly. Field names are the flag names, and every
error names the flag (`--epochs`) with the bad value and the allowed ones, so the same message
serves the command line and the library.

Each field is written once, here: its default, and in its metadata (`_field`) its help text,
its --help group, its allowed values and how it reads from and writes to a flag. job/flags.py
derives the flag definitions, the config of the parsed flags and the flagfile from these.

`validate(config)` is pure (no JAX, no files): it runs before any work. Checks that need the
model (a `--freeze` regex matching nothing) or the devices (batch divisibility) live in
`check_param_regexes` and `check_devices`, called as soon as those are known, still before
data is built or a step is compiled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any

from jaxpretrain.train.kinds import DTYPES, PARALLEL

TASKS = ("classification", "mlm")  # mlm: masked-LM pretraining of BERT models
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
ON_NAN = ("stop", "skip")
PROGRESS = ("auto", "bar", "log")  # job/report.py's Progress modes
MINILM = "minilm"  # --init_checkpoint shorthand for the packaged all-MiniLM-L6-v2 folder
GROUPS = ("model", "data", "optimization", "run", "distributed")  # --help's sections, in order
REQUIRED = dataclasses.MISSING  # a field without default (the flag's default is None)
_KINDS = {str: "string", int: "integer", float: "float", bool: "bool"}  # type -> absl DEFINE_*


class ConfigError(ValueError):
  """A bad flag value or combination; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class FlagSpec:
  """How a JobConfig field is a flag: `dataclasses.fields(JobConfig)[i].metadata["flag"]`."""
  help: str
  group: str  # one of GROUPS
  choices: tuple[str, ...] | None = None  # an enum flag
  kind: str | None = None  # absl's DEFINE_<kind>; None: enum with choices, else the field's type
  parse: Callable[[Any], Any] | None = None  # the parsed flag's value -> the field's value
  unparse: Callable[[Any], Any] | None = None  # the field's value -> the flag's (str or list)
  at_least: float | None = None  # validate: the smallest value (None passes if the default)
  pretrain_only: bool = False  # a flag of pretrain only (finetune is classification)
  # On resuming a run (config.resume_differences): "same" must not change; "neutral" may
  # (the result does not depend on it); "tolerance" may, the result agreeing to float
  # tolerance only; "path" must resolve to the same file or folder.
  on_resume: str = "same"


def _field(default: Any, help: str, group: str, **spec: Any) -> Any:
  """A JobConfig field with its flag's `FlagSpec` (keyword arguments) in its metadata."""
  metadata = {"flag": FlagSpec(help, group, **spec)}
  if group not in GROUPS:
    raise ValueError(f"flag group {group!r} unknown; known: {GROUPS}")
  if default is REQUIRED:
    return dataclasses.field(metadata=metadata)
  if isinstance(default, dict):
    return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
  """--model_kwargs's JSON text -> a dict (validate checks that it is an object)."""
  try:
    return json.loads(text or "{}")
  except json.JSONDecodeError as e:
    raise ConfigError(f"--model_kwargs={text!r}; allowed: a JSON object ({e})") from None


def parse_lr_mults(items: Sequence[str] | None) -> tuple[tuple[str, float], ...]:
  """["encoder/.*=0.1", ...] -> (("encoder/.*", 0.1), ...); the last "=" splits."""
  out = []
  for item in items or ():
    regex, sep, mult = item.rpartition("=")
    try:
      value = float(mult)
    except ValueError:
      value = None
    if not sep or not regex or value is None:
      _fail("lr_mult", item, "REGEX=MULTIPLIER, e.g. 'encoder/.*=0.1'")
    out.append((regex, value))
  return tuple(out)


MODEL, DATA, OPTIM, RUN, DIST = GROUPS


@dataclasses.dataclass(frozen=True)
class JobConfig:
  """Everything a fine-tuning or pretraining run needs. Fields are listed in --help by group,
  in this order within each group (see BUILD.md, "Adding a flag to the job")."""
  workdir: str = _field(
      REQUIRED, "Run folder: flags, git revision, metrics.jsonl, checkpoints, report. Rerunning "
      "the same command resumes from it.", RUN)
  dataset: str = _field(
      REQUIRED, "fashion_mnist_local | mnist_local | digits_local | tweets_sentiment | "
      "folder:PATH | csv:PATH | npz:PATH | tfds:NAME. Built offline on first use.", DATA,
      on_resume="path")
  # Model: a checkpoint to start from, or a registry name to train from scratch.
  init_checkpoint: str | None = _field(
      None, "Start from this: a converted checkpoint folder (python -m ports.convert), a "
      "Hugging Face folder or a torchvision weights file (converted on the fly into "
      f"<workdir>/init_checkpoint), or '{MINILM}' for the packaged all-MiniLM-L6-v2. Unset: "
      "train --model from scratch.", MODEL, on_resume="path")
  model: str | None = _field(
      None, "Registry name to train from scratch (resnet18, resnet_tiny, minilm_l6, bert, vit, "
      "...), or the architecture of a torchvision weights file given as --init_checkpoint.", MODEL)
  model_kwargs: dict[str, Any] = _field(
      {}, "JSON object of model constructor overrides, e.g. '{\"num_hidden_layers\": 2}'.", MODEL,
      kind="string", parse=parse_model_kwargs,
      unparse=lambda v: json.dumps(v, sort_keys=True))
  num_classes: int | None = _field(None, "Classes of the new head; default: the dataset's.", MODEL)
  reset_head: bool = _field(
      False, "Put a freshly initialized head on the checkpoint even when its head already has "
      "--num_classes outputs (another task with the same number of classes).", MODEL)
  # Data.
  data_dir: str | None = _field(
      None, "TFDS data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.", DATA,
      on_resume="path")
  max_len: int = _field(128, "Text: tokens per example (truncated and padded).", DATA, at_least=2)
  image_size: int | None = _field(
      None, "Images: resized to this square size; default the checkpoint's, else 32.", DATA,
      at_least=8)
  crop_padding: int = _field(
      0, "Images, training: zero-pad by this many pixels and crop back at random (0 = off).", DATA,
      at_least=0)
  flip: bool = _field(False, "Images, training: random horizontal flips.", DATA)
  validation_fraction: float = _field(
      0.1, "Share of each class of the training data held out as the validation split that "
      "--eval_every evaluates on (csv:/folder:/npz:; the offline datasets have their own "
      "10% split). 0: no validation split, evaluate on test during training.", DATA)
  train_per_class: int = _field(
      0, "The low-data regime: train on only this many labelled examples of each class (a "
      "seeded draw, the same for every --seed; 10 per class is inside 100 per class). 0: all.",
      DATA, at_least=0)
  task: str = _field(
      "classification", "classification (images or text, labels) or mlm (masked-LM on the "
      "texts of a text dataset; BERT models).", DATA, choices=TASKS, pretrain_only=True)
  mask_rate: float = _field(0.15, "mlm: share of tokens masked (BERT: 0.15).", DATA,
                            pretrain_only=True)
  # Optimization.
  batch_size: int = _field(32, "Global batch size (over all devices and processes).", OPTIM,
                           at_least=1)
  epochs: float | None = _field(
      None, "Train for this many epochs (fractions allowed); or --steps.", OPTIM)
  steps: int | None = _field(None, "Train for this many optimizer steps; or --epochs.", OPTIM)
  optimizer: str = _field("adamw", "adamw (torch.optim.AdamW) | sgd (with momentum).", OPTIM,
                          choices=OPTIMIZERS)
  lr: float = _field(1e-3, "Peak learning rate.", OPTIM)
  schedule: str = _field("cosine", "Learning-rate decay after warmup.", OPTIM, choices=SCHEDULES)
  warmup: int = _field(0, "Steps of linear warmup from 0.", OPTIM, at_least=0)
  weight_decay: float = _field(
      0.0, "adamw: decoupled decay; sgd: L2. Biases and norm scales are never decayed.", OPTIM)
  momentum: float = _field(0.9, "sgd momentum.", OPTIM)
  clip_norm: float | None = _field(
      None, "Clip gradients to this global norm (unset = no clip).", OPTIM)
  freeze: tuple[str, ...] = _field(
      (), "Regex over '/'-joined parameter paths (encoder/layer_0/.*, layer1_0/.*); matching "
      "parameters never change. Repeatable; each must match something.", OPTIM,
      kind="multi_string", parse=lambda v: tuple(v or ()), unparse=list)
  lr_mult: tuple[tuple[str, float], ...] = _field(
      (), "REGEX=MULT: scale the learning rate of matching parameters (first match wins). "
      "Repeatable.", OPTIM, kind="multi_string", parse=parse_lr_mults,
      unparse=lambda v: [f"{regex}={mult}" for regex, mult in v])
  label_smoothing: float = _field(0.0, "Label smoothing of the cross-entropy.", OPTIM)
  # Runtime.
  seed: int = _field(0, "Seed of initialization, data order and dropout.", RUN, at_least=0)
  dtype: str = _field("float32", "Compute dtype (parameters stay float32).", RUN, choices=DTYPES)
  # --parallel, --cpu_devices and the distributed flags change how the step is compiled and
  # how gradients are reduced over devices, so a resumed run agrees with an uninterrupted one
  # only to float tolerance, not bit for bit (a resume with other --cpu_devices moved
  # parameters by 1.4e-6). They may change, with a message: moving a preempted run to other
  # hardware is what resuming is for.
  parallel: str = _field(
      "jit", "jit (one program over a device mesh) | fsdp (jit, state sharded) | pmap.", RUN,
      choices=PARALLEL, on_resume="tolerance")
  cpu_devices: int = _field(
      0, "Split the CPU into this many XLA devices (data parallelism on one machine; 0 = "
      "leave as is). Takes effect only before JAX starts.", RUN, at_least=0,
      on_resume="tolerance")
  eval_every: int = _field(
      0, "Evaluate on the validation split every N steps (0 = never); the test split is "
      "evaluated once, at the end.", RUN, at_least=0, on_resume="neutral")
  log_every: int = _field(50, "Log training metrics every N steps.", RUN, at_least=1,
                          on_resume="neutral")
  checkpoint_every: int = _field(
      0, "Checkpoint every N steps (0 = at the end and on SIGTERM only).", RUN, at_least=0,
      on_resume="neutral")
  keep_checkpoints: int = _field(2, "Checkpoints kept in the workdir.", RUN, at_least=1,
                                 on_resume="neutral")
  on_nan: str = _field(
      "stop", "A non-finite loss or gradient norm: stop (error naming the step and metric) | "
      "skip (roll back to the last checkpoint, replay up to the bad batch, skip it; at most "
      "--max_skips times).", RUN, choices=ON_NAN, on_resume="neutral")
  max_skips: int = _field(10, "--on_nan=skip: stop after this many skipped batches.", RUN,
                          at_least=0)
  progress: str = _field(
      "auto", "auto (a progress bar on a terminal, log lines otherwise) | bar | log.", RUN,
      choices=PROGRESS, on_resume="neutral")
  export_dir: str | None = _field(
      None, "Where the final model is written as a checkpoint folder; default <workdir>/model.",
      RUN, on_resume="path")
  # Distributed.
  coordinator_address: str | None = _field(
      None, "Multi-process: host:port of process 0.", DIST, on_resume="tolerance")
  num_processes: int | None = _field(None, "Multi-process: number of processes.", DIST,
                                     on_resume="tolerance")
  process_id: int | None = _field(None, "Multi-process: this process's index.", DIST,
                                  on_resume="tolerance")

  def to_json(self) -> dict[str, Any]:
    """A JSON-friendly dict (tuples as lists)."""
    return json_ready(dataclasses.asdict(self))


def flag_specs(*, pretrain: bool = True) -> list[tuple[str, FlagSpec, Any]]:
  """(name, spec with its kind, the flag's default) of every JobConfig field, in --help order:
  by group, then as JobConfig lists them. Without `pretrain`, finetune's (no pretrain_only)."""
  types = typing.get_type_hints(JobConfig)
  out = []
  for f in dataclasses.fields(JobConfig):
    spec = f.metadata["flag"]
    if spec.pretrain_only and not pretrain:
      continue
    kind = spec.kind or ("enum" if spec.choices else _KINDS[_not_none(types[f.name])])
    default = f.default_factory() if f.default_factory is not REQUIRED else (
        None if f.default is REQUIRED else f.default)
    out.append((f.name, dataclasses.replace(spec, kind=kind),
                spec.unparse(default) if spec.unparse and default is not None else default))
  return sorted(out, key=lambda x: GROUPS.index(x[1].group))


def _not_none(hint: Any) -> type:
  """int | None -> int."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  return args[0] if args else hint


def _resume_flags(kind: str) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(JobConfig)
               if f.metadata["flag"].on_resume == kind)


# Flags that may change between a run and its resumption. These do not change the result:
RESULT_NEUTRAL = _resume_flags("neutral")
# These agree only to float tolerance (see --parallel above); allowed, with a message.
FLOAT_TOLERANCE = _resume_flags("tolerance")
RESUMABLE_CHANGES = RESULT_NEUTRAL + FLOAT_TOLERANCE
# Paths are compared resolved (absolute, links followed), so a relative path given from
# another folder is the same flag. --workdir is never compared: the folder being resumed is
# the run, wherever it now is and however it is named.
PATH_FLAGS = _resume_flags("path")


def json_ready(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: json_ready(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_ready(v) for v in x]
  return x


def _fail(flag: str, value: Any, allowed: str) -> None:
  raise ConfigError(f"--{flag}={value!r}; allowed: {allowed}")


def _choice(config: JobConfig, flag: str, allowed: Sequence[Any]) -> None:
  value = getattr(config, flag)
  if value not in allowed:
    _fail(flag, value, ", ".join(map(str, allowed)))


def _at_least(config: JobConfig, flag: str, low: float, *, optional: bool = False) -> None:
  value = getattr(config, flag)
  if value is None and optional:
    return
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= low:
    _fail(flag, value, f">= {low}")


def validate(config: JobConfig) -> None:
  """Checks values and combinations; raises ConfigError naming the flag. Pure."""
  if not config.workdir:
    _fail("workdir", config.workdir, "a folder path")
  if not config.dataset:
    _fail("dataset", config.dataset,
          "a dataset name (fashion_mnist_local, mnist_local, digits_local, tweets_sentiment) "
          "or folder:PATH, csv:PATH, npz:PATH, tfds:NAME")
  for f in dataclasses.fields(JobConfig):  # enum values (absl checks the flags' already)
    if f.metadata["flag"].choices:
      _choice(config, f.name, f.metadata["flag"].choices)
  if config.init_checkpoint is None and config.model is None:
    raise ConfigError("give --init_checkpoint (a checkpoint folder, a Hugging Face folder, "
                      f"a torchvision file or '{MINILM}') or --model (train from scratch)")
  if config.init_checkpoint is not None and config.model is not None and not _is_file(
      config.init_checkpoint):
    raise ConfigError(f"--model={config.model!r} with --init_checkpoint="
                      f"{config.init_checkpoint!r}: the checkpoint names its model; --model "
                      "goes with --init_checkpoint only as the architecture of a torchvision "
                      "weights file")
  if not isinstance(config.model_kwargs, dict):
    _fail("model_kwargs", config.model_kwargs, "a JSON object")
  if config.num_classes is not None and (config.num_classes < 2 or config.task == "mlm"):
    _fail("num_classes", config.num_classes,
          ">= 2 (classification only)" if config.task == "classification"
          else "unset for --task=mlm (the vocabulary is the output)")
  for f in dataclasses.fields(JobConfig):
    if f.metadata["flag"].at_least is not None:
      _at_least(config, f.name, f.metadata["flag"].at_least, optional=f.default is None)
  if (config.epochs is None) == (config.steps is None):
    raise ConfigError(f"give exactly one of --epochs or --steps (got --epochs={config.epochs}, "
                      f"--steps={config.steps})")
  if config.epochs is not None and not 0 < config.epochs < math.inf:
    _fail("epochs", config.epochs, "> 0 and finite (fractions allowed)")
  if config.steps is not None and (not isinstance(config.steps, int) or config.steps < 1):
    _fail("steps", config.steps, "an int >= 1")
  if config.steps is not None and config.schedule != "constant" and config.warmup >= config.steps:
    _fail("warmup", config.warmup, f"< --steps={config.steps} with --schedule={config.schedule}")
  if not 0 < config.lr < math.inf:
    _fail("lr", config.lr, "> 0 and finite")
  if not 0 <= config.weight_decay < math.inf:
    _fail("weight_decay", config.weight_decay, ">= 0 and finite")
  if not 0 <= config.momentum < 1:
    _fail("momentum", config.momentum, "in [0, 1)")
  if config.clip_norm is not None and not config.clip_norm > 0:
    _fail("clip_norm", config.clip_norm, "> 0 or unset")
  if not 0 <= config.label_smoothing < 1:
    _fail("label_smoothing", config.label_smoothing, "in [0, 1)")
  if not 0 < config.mask_rate < 1:
    _fail("mask_rate", config.mask_rate, "in (0, 1)")
  if not 0 <= config.validation_fraction < 1:
    _fail("validation_fraction", config.validation_fraction, "in [0, 1)")
  for regex in config.freeze:
    _check_regex("freeze", regex)
  for regex, mult in config.lr_mult:
    _check_regex("lr_mult", regex)
    if not mult >= 0:
      _fail("lr_mult", f"{regex}={mult}", "multipliers >= 0")
  if config.on_nan == "skip" and not config.checkpoint_every:
    raise ConfigError("--on_nan=skip rolls back to the last checkpoint; set "
                      "--checkpoint_every > 0 (now 0)")
  given = [config.coordinator_address, config.num_processes, config.process_id]
  if any(v is not None for v in given) and config.num_processes != 1 and None in given:
    raise ConfigError("a multi-process run needs all of --coordinator_address, "
                      f"--num_processes, --process_id (got {given})")
  if config.num_processes is not None and config.process_id is not None and not (
      0 <= config.process_id < config.num_processes):
    _fail("process_id", config.process_id, f"in [0, --num_processes={config.num_processes})")


def _is_file(path: str) -> bool:
  import os  # noqa: PLC0415
  return os.path.isfile(path)


def _check_regex(flag: str, regex: str) -> None:
  try:
    re.compile(regex)
  except re.error as e:
    _fail(flag, regex, f"a valid regular expression ({e})")


def check_devices(config: JobConfig, device_count: int, local_device_count: int,
                  process_count: int) -> None:
  """The global batch must split evenly over every device (and so over processes)."""
  if config.batch_size % device_count:
    _fail("batch_size", config.batch_size,
          f"a multiple of the device count {device_count} "
          f"({process_count} process(es) x {local_device_count} local device(s))")


def check_param_regexes(config: JobConfig, paths: Sequence[str]) -> None:
  """Every --freeze and --lr_mult regex must fullmatch some parameter path."""
  shown = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
  for flag, regexes in (("freeze", config.freeze), ("lr_mult", [r for r, _ in config.lr_mult])):
    for regex in regexes:
      if not any(re.fullmatch(regex, p) for p in paths):
        raise ConfigError(f"--{flag} regex {regex!r} matches no parameter of the model; "
                          f"paths look like: {shown}")
  if config.freeze and all(any(re.fullmatch(r, p) for r in config.freeze) for p in paths):
    _fail("freeze", list(config.freeze), "regexes that leave some parameter trainable")


def total_steps(config: JobConfig, num_examples: int) -> int:
  """--steps, or --epochs over `num_examples` training examples (rounded up)."""
  if config.steps is not None:
    return config.steps
  steps = math.ceil(config.epochs * num_examples / config.batch_size)
  if config.schedule != "constant" and config.warmup >= steps:
    _fail("warmup", config.warmup, f"< the run's {steps} steps (--epochs={config.epochs})")
  return max(steps, 1)


def _resolve(path: str) -> str:
  return os.path.realpath(os.path.expanduser(path))


def resolved_paths(config: JobConfig) -> dict[str, str | None]:
  """The path flags resolved against the current folder (a dataset keeps its `kind:`)."""
  out = {}
  for flag in PATH_FLAGS:
    value = getattr(config, flag)
    if value is None or (flag == "init_checkpoint" and value == MINILM):
      out[flag] = value
    elif flag == "dataset":
      kind, sep, path = value.partition(":")
      out[flag] = f"{kind}:{_resolve(path)}" if sep and kind != "tfds" else value
    else:
      out[flag] = _resolve(value)
  return out


def resume_key(config: JobConfig, resolve: bool = True) -> dict[str, Any]:
  """The flags a resumed run must share with the run it resumes, paths resolved (JSON).
  `resolve=False` keeps the paths as given (for a flags.json written before they were
  stored resolved)."""
  key = {k: v for k, v in config.to_json().items()
         if k not in RESUMABLE_CHANGES and k != "workdir"}
  return {**key, **resolved_paths(config)} if resolve else key


def saved_resume_key(saved: dict[str, Any]) -> dict[str, Any]:
  """`resume_key` of a run from its flags.json (`to_json` plus "resolved_paths")."""
  key = {k: v for k, v in saved.items()
         if k not in RESUMABLE_CHANGES and k not in ("workdir", "resolved_paths")}
  resolved = saved.get("resolved_paths")
  return {**key, **resolved} if isinstance(resolved, dict) else key


def key_differences(saved_key: dict[str, Any], config: JobConfig,
                    resolve: bool = True) -> dict[str, tuple]:
  """{flag: (saved, now)} between a stored `resume_key` and `config`'s."""
  now = resume_key(config, resolve)
  return {k: (saved_key.get(k, _default(k)), v) for k, v in now.items()
          if saved_key.get(k, _default(k)) != v}


def _default(name: str) -> Any:
  """A field's default as JSON: what a run made before the field existed ran with (a new
  field's default keeps the old behaviour, so such a run resumes; BUILD.md)."""
  field = JobConfig.__dataclass_fields__.get(name)
  if field is None:
    return None
  if field.default_factory is not dataclasses.MISSING:
    return json_ready(field.default_factory())
  return None if field.default is dataclasses.MISSING else json_ready(field.default)


def resume_differences(saved: dict[str, Any], config: JobConfig) -> dict[str, tuple]:
  """{flag: (saved, now)} of flags that changed since the workdir's run started (flags.json).
  Flags a resume may change (RESUMABLE_CHANGES) and --workdir are not compared."""
  resolve = isinstance(saved.get("resolved_paths"), dict)
  return key_differences(saved_resume_key(saved), config, resolve)


def tolerance_differences(saved: dict[str, Any], config: JobConfig) -> dict[str, tuple]:
  """{flag: (saved, now)} of FLOAT_TOLERANCE flags changed (allowed, but said)."""
  now = config.to_json()
  return {k: (saved.get(k), now[k]) for k in FLOAT_TOLERANCE
          if k in saved and saved.get(k) != now[k]}
