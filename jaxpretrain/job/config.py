"""A training job's settings as one frozen dataclass, and their validation.

`JobConfig` is what the absl mains build from flags (`job/flags.py`) and what other code
passes to `job.finetune` / `job.pretrain` directly. Field names are the flag names, and every
error names the flag (`--epochs`) with the bad value and the allowed ones, so the same message
serves the command line and the library.

`validate(config)` is pure (no JAX, no files): it runs before any work. Checks that need the
model (a `--freeze` regex matching nothing) or the devices (batch divisibility) live in
`check_param_regexes` and `check_devices`, called as soon as those are known, still before
data is built or a step is compiled.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from typing import Any

TASKS = ("classification", "mlm")  # mlm: masked-LM pretraining of BERT models
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
PARALLEL = ("jit", "fsdp", "pmap")
DTYPES = ("float32", "bfloat16")
ON_NAN = ("stop", "skip")
MINILM = "minilm"  # --init_checkpoint shorthand for the packaged all-MiniLM-L6-v2 folder
# Flags that may change between a run and its resumption. These do not change the result:
RESULT_NEUTRAL = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "on_nan",
                  "progress")
# These change how the step is compiled and how gradients are reduced over devices, so the
# result agrees with an uninterrupted run only to float tolerance, not bit for bit (a resume
# with other --cpu_devices moved parameters by 1.4e-6). They are allowed, with a message:
# moving a preempted run to other hardware is what resuming is for.
FLOAT_TOLERANCE = ("parallel", "cpu_devices", "coordinator_address", "num_processes",
                   "process_id")
RESUMABLE_CHANGES = RESULT_NEUTRAL + FLOAT_TOLERANCE
# Paths are compared resolved (absolute, links followed), so a relative path given from
# another folder is the same flag. --workdir is never compared: the folder being resumed is
# the run, wherever it now is and however it is named.
PATH_FLAGS = ("dataset", "init_checkpoint", "data_dir", "export_dir")


class ConfigError(ValueError):
  """A bad flag value or combination; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class JobConfig:
  """Everything a fine-tuning or pretraining run needs (see job/flags.py for the help)."""
  workdir: str
  dataset: str
  task: str = "classification"
  # Model: a checkpoint to start from, or a registry name to train from scratch.
  init_checkpoint: str | None = None
  model: str | None = None
  model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  num_classes: int | None = None  # None: the dataset's
  reset_head: bool = False  # a new head even when the checkpoint's has num_classes outputs
  # Data.
  data_dir: str | None = None
  max_len: int = 128
  image_size: int | None = None  # None: the checkpoint's, else 32
  crop_padding: int = 0
  flip: bool = False
  mask_rate: float = 0.15
  # Share of the training part held out (stratified, seeded) for evaluation during the run;
  # the offline datasets have their own 10% split. 0: evaluate on test during the run.
  validation_fraction: float = 0.1
  # Optimization.
  batch_size: int = 32
  epochs: float | None = None
  steps: int | None = None
  optimizer: str = "adamw"
  lr: float = 1e-3
  schedule: str = "cosine"
  warmup: int = 0
  weight_decay: float = 0.0
  momentum: float = 0.9
  clip_norm: float | None = None
  freeze: tuple[str, ...] = ()
  lr_mult: tuple[tuple[str, float], ...] = ()
  label_smoothing: float = 0.0
  # Runtime.
  dtype: str = "float32"
  parallel: str = "jit"
  cpu_devices: int = 0
  seed: int = 0
  eval_every: int = 0
  checkpoint_every: int = 0
  keep_checkpoints: int = 2
  log_every: int = 50
  on_nan: str = "stop"
  max_skips: int = 10
  progress: str = "auto"  # "auto" (bar on a terminal) | "bar" | "log"
  export_dir: str | None = None  # None: <workdir>/model
  # Distributed.
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def to_json(self) -> dict[str, Any]:
    """A JSON-friendly dict (tuples as lists)."""
    return json_ready(dataclasses.asdict(self))


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


def parse_lr_mults(items: Sequence[str]) -> tuple[tuple[str, float], ...]:
  """["encoder/.*=0.1", ...] -> (("encoder/.*", 0.1), ...); the last "=" splits."""
  out = []
  for item in items:
    regex, sep, mult = item.rpartition("=")
    try:
      value = float(mult)
    except ValueError:
      value = None
    if not sep or not regex or value is None:
      _fail("lr_mult", item, "REGEX=MULTIPLIER, e.g. 'encoder/.*=0.1'")
    out.append((regex, value))
  return tuple(out)


def validate(config: JobConfig) -> None:
  """Checks values and combinations; raises ConfigError naming the flag. Pure."""
  if not config.workdir:
    _fail("workdir", config.workdir, "a folder path")
  if not config.dataset:
    _fail("dataset", config.dataset,
          "a dataset name (fashion_mnist_local, mnist_local, digits_local, tweets_sentiment) "
          "or folder:PATH, csv:PATH, npz:PATH, tfds:NAME")
  _choice(config, "task", TASKS)
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
  for flag, low in (("batch_size", 1), ("max_len", 2), ("warmup", 0), ("crop_padding", 0),
                    ("log_every", 1), ("eval_every", 0), ("checkpoint_every", 0),
                    ("keep_checkpoints", 1), ("seed", 0), ("cpu_devices", 0),
                    ("max_skips", 0)):
    _at_least(config, flag, low)
  _at_least(config, "image_size", 8, optional=True)
  if (config.epochs is None) == (config.steps is None):
    raise ConfigError(f"give exactly one of --epochs or --steps (got --epochs={config.epochs}, "
                      f"--steps={config.steps})")
  if config.epochs is not None and not 0 < config.epochs < math.inf:
    _fail("epochs", config.epochs, "> 0 and finite (fractions allowed)")
  if config.steps is not None and (not isinstance(config.steps, int) or config.steps < 1):
    _fail("steps", config.steps, "an int >= 1")
  if config.steps is not None and config.schedule != "constant" and config.warmup >= config.steps:
    _fail("warmup", config.warmup, f"< --steps={config.steps} with --schedule={config.schedule}")
  _choice(config, "optimizer", OPTIMIZERS)
  _choice(config, "schedule", SCHEDULES)
  _choice(config, "dtype", DTYPES)
  _choice(config, "parallel", PARALLEL)
  _choice(config, "on_nan", ON_NAN)
  _choice(config, "progress", ("auto", "bar", "log"))
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
  return {k: (saved_key.get(k), v) for k, v in now.items() if saved_key.get(k) != v}


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
