"""absl flags of the training mains, grouped, and their translation into a `JobConfig`.

    define_train_flags(pretrain=False)   # in finetune.py / pretrain.py, at import
    config = config_from_flags()         # in main(): a validated JobConfig

Groups (`--helpfull` lists the flags under these headings; `--help` lists them all):
  model         --init_checkpoint --model --model_kwargs --num_classes --reset_head
  data          --dataset --data_dir --max_len --image_size --crop_padding --flip --mask_rate
                --validation_fraction
  optimization  --batch_size --epochs --steps --optimizer --lr --schedule --warmup
                --weight_decay --momentum --clip_norm --freeze --lr_mult --label_smoothing
  run           --workdir --seed --dtype --parallel --cpu_devices --eval_every --log_every
                --checkpoint_every --keep_checkpoints --on_nan --max_skips --progress
                --export_dir
  distributed   --coordinator_address --num_processes --process_id

Unknown flags are rejected by absl when parsing; bad values and combinations by
`config.validate` (both before any work).
"""

from __future__ import annotations

import json

from absl import flags

from jaxpretrain.job import config as config_lib

FLAGS = flags.FLAGS
_GROUP = "jaxpretrain.job: {}"


def _define(kind: str, name: str, default, help_: str, group: str, **kw) -> None:
  module_name = _GROUP.format(group)
  if kind == "enum":  # DEFINE_enum(name, default, enum_values, help)
    flags.DEFINE_enum(name, default, kw.pop("enum_values"), help_, module_name=module_name, **kw)
  else:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_, module_name=module_name, **kw)
  flags.declare_key_flag(name)


def define_train_flags(*, pretrain: bool = False) -> None:
  """Registers the training flags (once per process; `pretrain` adds --task)."""
  m, d, o, r, x = "model", "data", "optimization", "run", "distributed"
  _define("string", "init_checkpoint", None,
          "Start from this: a converted checkpoint folder (python -m ports.convert), a Hugging "
          "Face folder or a torchvision weights file (converted on the fly into "
          f"<workdir>/init_checkpoint), or '{config_lib.MINILM}' for the packaged "
          "all-MiniLM-L6-v2. Unset: train --model from scratch.", m)
  _define("string", "model", None,
          "Registry name to train from scratch (resnet18, resnet_tiny, minilm_l6, bert, vit, "
          "...), or the architecture of a torchvision weights file given as --init_checkpoint.",
          m)
  _define("string", "model_kwargs", "{}",
          "JSON object of model constructor overrides, e.g. '{\"num_hidden_layers\": 2}'.", m)
  _define("integer", "num_classes", None,
          "Classes of the new head; default: the dataset's.", m)
  _define("bool", "reset_head", False,
          "Put a freshly initialized head on the checkpoint even when its head already has "
          "--num_classes outputs (another task with the same number of classes).", m)
  _define("string", "dataset", None,
          "fashion_mnist_local | mnist_local | digits_local | tweets_sentiment | folder:PATH | "
          "csv:PATH | npz:PATH | tfds:NAME. Built offline on first use.", d)
  _define("string", "data_dir", None,
          "TFDS data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.", d)
  _define("integer", "max_len", 128, "Text: tokens per example (truncated and padded).", d)
  _define("integer", "image_size", None,
          "Images: resized to this square size; default the checkpoint's, else 32.", d)
  _define("integer", "crop_padding", 0,
          "Images, training: zero-pad by this many pixels and crop back at random (0 = off).", d)
  _define("bool", "flip", False, "Images, training: random horizontal flips.", d)
  _define("float", "validation_fraction", 0.1,
          "Share of each class of the training data held out as the validation split that "
          "--eval_every evaluates on (csv:/folder:/npz:; the offline datasets have their own "
          "10% split). 0: no validation split, evaluate on test during training.", d)
  if pretrain:
    _define("enum", "task", "classification", "classification (images or text, labels) or "
            "mlm (masked-LM on the texts of a text dataset; BERT models).", d,
            enum_values=list(config_lib.TASKS))
    _define("float", "mask_rate", 0.15, "mlm: share of tokens masked (BERT: 0.15).", d)
  _define("integer", "batch_size", 32, "Global batch size (over all devices and processes).", o)
  _define("float", "epochs", None, "Train for this many epochs (fractions allowed); or --steps.",
          o)
  _define("integer", "steps", None, "Train for this many optimizer steps; or --epochs.", o)
  _define("enum", "optimizer", "adamw", "adamw (torch.optim.AdamW) | sgd (with momentum).", o,
          enum_values=list(config_lib.OPTIMIZERS))
  _define("float", "lr", 1e-3, "Peak learning rate.", o)
  _define("enum", "schedule", "cosine", "Learning-rate decay after warmup.", o,
          enum_values=list(config_lib.SCHEDULES))
  _define("integer", "warmup", 0, "Steps of linear warmup from 0.", o)
  _define("float", "weight_decay", 0.0,
          "adamw: decoupled decay; sgd: L2. Biases and norm scales are never decayed.", o)
  _define("float", "momentum", 0.9, "sgd momentum.", o)
  _define("float", "clip_norm", None, "Clip gradients to this global norm (unset = no clip).", o)
  _define("multi_string", "freeze", [],
          "Regex over '/'-joined parameter paths (encoder/layer_0/.*, layer1_0/.*); matching "
          "parameters never change. Repeatable; each must match something.", o)
  _define("multi_string", "lr_mult", [],
          "REGEX=MULT: scale the learning rate of matching parameters (first match wins). "
          "Repeatable.", o)
  _define("float", "label_smoothing", 0.0, "Label smoothing of the cross-entropy.", o)
  _define("string", "workdir", None,
          "Run folder: flags, git revision, metrics.jsonl, checkpoints, report. Rerunning the "
          "same command resumes from it.", r)
  _define("integer", "seed", 0, "Seed of initialization, data order and dropout.", r)
  _define("enum", "dtype", "float32", "Compute dtype (parameters stay float32).", r,
          enum_values=list(config_lib.DTYPES))
  _define("enum", "parallel", "jit",
          "jit (one program over a device mesh) | fsdp (jit, state sharded) | pmap.", r,
          enum_values=list(config_lib.PARALLEL))
  _define("integer", "cpu_devices", 0,
          "Split the CPU into this many XLA devices (data parallelism on one machine; 0 = "
          "leave as is). Takes effect only before JAX starts.", r)
  _define("integer", "eval_every", 0, "Evaluate on the validation split every N steps (0 = "
          "never); the test split is evaluated once, at the end.", r)
  _define("integer", "log_every", 50, "Log training metrics every N steps.", r)
  _define("integer", "checkpoint_every", 0,
          "Checkpoint every N steps (0 = at the end and on SIGTERM only).", r)
  _define("integer", "keep_checkpoints", 2, "Checkpoints kept in the workdir.", r)
  _define("enum", "on_nan", "stop",
          "A non-finite loss or gradient norm: stop (error naming the step and metric) | skip "
          "(roll back to the last checkpoint, replay up to the bad batch, skip it; at most "
          "--max_skips times).", r, enum_values=list(config_lib.ON_NAN))
  _define("integer", "max_skips", 10, "--on_nan=skip: stop after this many skipped batches.", r)
  _define("enum", "progress", "auto",
          "auto (a progress bar on a terminal, log lines otherwise) | bar | log.", r,
          enum_values=["auto", "bar", "log"])
  _define("string", "export_dir", None,
          "Where the final model is written as a checkpoint folder; default <workdir>/model.", r)
  _define("string", "coordinator_address", None, "Multi-process: host:port of process 0.", x)
  _define("integer", "num_processes", None, "Multi-process: number of processes.", x)
  _define("integer", "process_id", None, "Multi-process: this process's index.", x)


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.JobConfig:
  """The parsed flags as a validated JobConfig (ConfigError names a bad flag)."""
  f = flag_values
  try:
    model_kwargs = json.loads(f.model_kwargs or "{}")
  except json.JSONDecodeError as e:
    raise config_lib.ConfigError(f"--model_kwargs={f.model_kwargs!r}; allowed: a JSON object "
                                 f"({e})") from None
  extra = {}
  if "task" in f:
    extra = dict(task=f.task, mask_rate=f.mask_rate)
  config = config_lib.JobConfig(
      workdir=f.workdir, dataset=f.dataset, init_checkpoint=f.init_checkpoint, model=f.model,
      model_kwargs=model_kwargs, num_classes=f.num_classes, reset_head=f.reset_head,
      data_dir=f.data_dir, max_len=f.max_len, image_size=f.image_size,
      crop_padding=f.crop_padding, flip=f.flip, validation_fraction=f.validation_fraction,
      batch_size=f.batch_size, epochs=f.epochs,
      steps=f.steps, optimizer=f.optimizer, lr=f.lr, schedule=f.schedule, warmup=f.warmup,
      weight_decay=f.weight_decay, momentum=f.momentum, clip_norm=f.clip_norm,
      freeze=tuple(f.freeze), lr_mult=config_lib.parse_lr_mults(f.lr_mult),
      label_smoothing=f.label_smoothing, dtype=f.dtype, parallel=f.parallel,
      cpu_devices=f.cpu_devices, seed=f.seed, eval_every=f.eval_every,
      checkpoint_every=f.checkpoint_every, keep_checkpoints=f.keep_checkpoints,
      log_every=f.log_every, on_nan=f.on_nan, max_skips=f.max_skips, progress=f.progress,
      export_dir=f.export_dir, coordinator_address=f.coordinator_address,
      num_processes=f.num_processes, process_id=f.process_id, **extra)
  config_lib.validate(config)
  return config


def flagfile_text(config: config_lib.JobConfig) -> str:
  """The config as a flagfile (`--name=value` lines) that reproduces the run."""
  lines = []
  for key, value in config.to_json().items():
    if value is None or (key in ("task", "mask_rate") and config.task == "classification"):
      continue  # finetune has no --task / --mask_rate
    if key == "model_kwargs":
      lines.append(f"--model_kwargs={json.dumps(value, sort_keys=True)}")
    elif key == "freeze":
      lines += [f"--freeze={v}" for v in value]
    elif key == "lr_mult":
      lines += [f"--lr_mult={regex}={mult}" for regex, mult in value]
    elif isinstance(value, bool):
      lines.append(f"--{key}" if value else f"--no{key}")
    else:
      lines.append(f"--{key}={value}")
  return "\n".join(lines) + "\n"
