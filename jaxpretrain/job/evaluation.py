"""Evaluate a checkpoint folder on a dataset split: metrics, per-class table, confusion matrix.

    metrics = evaluate_checkpoint("workdirs/run/model", "mnist_local", split="test")

The checkpoint folder is one written by `ports.convert`, `finetune` or `pretrain` (a run's
workdir is accepted too: its `model/` is used). Preprocessing (image size, mean/std, tokenizer,
max_len) comes from the checkpoint's config.json; flags may override size and length. Results
are written as `eval_<dataset>_<split>.md` and `.json` into `output_dir`.

A run's checkpoint (its workdir, or the workdir's model/) is evaluated on that run's data
unless told otherwise: `dataset`, `data_dir` and `validation_fraction` default to the run's
flags.json (read with the bounded `safe_io.read_json`). Everything that can be checked
cheaply is, before the model is loaded or a batch is read: the dataset spec
(`loaders.check_spec`, with a "did you mean") and the checkpoint's classification head. An
offline dataset not yet built is built into the data dir after a line naming it. A split
holding a single class gets a warning (its accuracy, MCC and majority baseline say little).

Labels are the model's: the dataset's label *names* are mapped onto the class names the
checkpoint records (`class_names` in config.json), so a file holding some of the classes, in
any order, is scored against the right outputs, and the per-class table lists every class of
the model (support 0 for those absent from the data). A label the model does not know is an
error naming it. Only a checkpoint that records no class names falls back to taking the
dataset's label ids as the model's class ids, with a warning.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain import console, perf, pretrained, safe_io
from jaxpretrain.job import metrics as metrics_lib
from jaxpretrain.job import report as report_lib
from jaxpretrain.job import task as task_lib
from jaxpretrain.job.config import ConfigError
from jaxpretrain.models import registry


def resolve_model_dir(path: str | pathlib.Path) -> pathlib.Path:
  """A checkpoint folder, or a run's workdir (-> its model/)."""
  path = pathlib.Path(path)
  if (path / pretrained.CONFIG).is_file():
    return path
  if (path / "model" / pretrained.CONFIG).is_file():
    return path / "model"
  raise ConfigError(f"--checkpoint={str(path)!r}: neither a checkpoint folder (config.json) "
                    "nor a workdir with model/config.json")


def run_flags(checkpoint: str | pathlib.Path) -> dict[str, Any]:
  """The flags.json of the run `checkpoint` belongs to ({} when it is not a run's): the
  checkpoint itself if it is a workdir, else the folder holding it as model/."""
  path = pathlib.Path(checkpoint)
  for folder in (path, path.parent if path.name == "model" else None):
    if folder is not None and (folder / "flags.json").is_file():
      try:
        saved = safe_io.read_json(folder / "flags.json")
      except ValueError as e:
        raise ConfigError(f"--checkpoint={str(checkpoint)!r}: {e}") from None
      if not isinstance(saved, dict):
        raise ConfigError(f"{folder / 'flags.json'}: not a JSON object")
      for key in ("dataset", "data_dir"):
        if saved.get(key) is not None and not isinstance(saved[key], str):
          raise ConfigError(f"{folder / 'flags.json'}: {key} is {safe_io.short(saved[key])}; "
                            "expected a string")
      return saved
  return {}


def warn_single_class(labels: np.ndarray, what: str, warn=print) -> None:
  """Warns when an evaluated split holds one class: accuracy then only counts that class."""
  present = np.unique(np.asarray(labels))
  if len(present) == 1:
    warn(f"warning: {what} holds only one class (label id {int(present[0])}, {len(labels)} "
         "examples): accuracy, MCC and the majority baseline say little; evaluate a split "
         "with every class")


def check_head(cfg: dict[str, Any], model_dir: pathlib.Path) -> None:
  """A checkpoint without a classification head is refused before any data is read."""
  try:
    family = registry.family_of(cfg["model"])
  except ValueError as e:
    raise ConfigError(f"{model_dir / pretrained.CONFIG}: {e}") from None
  if family.head_size(cfg.get("model_kwargs", {})) is None:
    raise ConfigError(f"--checkpoint={str(model_dir)!r}: the model has no classification head "
                      f"({cfg['model']} without one); fine-tune it first")


def _is_id_names(names) -> bool:
  """Names a loader made up from integer labels ("0", "1", ...): the data has no names."""
  return all(n == str(i) for i, n in enumerate(names))


def label_mapping(data_names, model_names, *, what: str, warn=print) -> np.ndarray:
  """int64 [len(data_names)]: the model's class id of each dataset label id, by name.

  Args:
    data_names: the dataset's class names (index = its label id).
    model_names: the model's class names (index = output).
    what: names the dataset in messages (e.g. "--dataset='csv:x.csv'").
    warn: prints a warning (labels given as integers are taken as class ids).
  Raises:
    ConfigError: a dataset label the model does not know, or one that matches two classes.
  """
  data_names, model_names = list(data_names), list(model_names)
  index: dict[str, int] = {}
  twice = set()
  for i, name in enumerate(model_names):
    if name in index:
      twice.add(name)
    index.setdefault(name, i)
  unknown = [n for n in data_names if n not in index]
  if unknown and _is_id_names(data_names):
    if len(data_names) > len(model_names):
      raise ConfigError(f"{what} has integer labels up to {len(data_names) - 1} but the model "
                        f"has {len(model_names)} classes")
    warn(f"warning: {what} has integer labels, not names: taken as the model's class ids "
         f"({', '.join(f'{i}={n}' for i, n in enumerate(model_names[:len(data_names)][:10]))}"
         f"{', ...' if len(data_names) > 10 else ''})")
    return np.arange(len(data_names), dtype=np.int64)
  if unknown:
    shown = ", ".join(repr(n) for n in model_names[:20])
    more = f", ... ({len(model_names)} in all)" if len(model_names) > 20 else ""
    others = f" (and {len(unknown) - 1} more unknown labels)" if len(unknown) > 1 else ""
    raise ConfigError(f"{what} has label {unknown[0]!r}, which the model does not know{others}"
                      f"; the model's classes: {shown}{more}")
  ambiguous = [n for n in data_names if n in twice]
  if ambiguous:
    raise ConfigError(f"{what} has label {ambiguous[0]!r}, which names more than one of the "
                      "model's classes; cannot tell which it means")
  return np.asarray([index[n] for n in data_names], np.int64)


def predict_batch(model, family: registry.Family | str | None, variables, batch):
  """`(logits [b, C] float32, label [b], mask [b])` of a batch: the evaluation forward pass
  of `evaluate` and of a run (traced under jit or pmap). `family` feeds the batch to the model
  (`registry.forward`); None tells inputs by batch keys."""
  logits = registry.forward(family, model, variables, batch)[0]
  mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
  return logits.astype(jnp.float32), batch["label"], mask


def eval_batches(it, source, batch_size: int, what: str | None):
  """The eval iterator, with progress and an ETA on stderr when `what` names the phase."""
  if what is None:
    return it
  return console.progress(it, math.ceil(len(source) / batch_size), what)


def predict_split(predict, params, source, preprocess, batch_size: int, what: str | None = None,
                  **iterator_kwargs) -> tuple[np.ndarray, np.ndarray]:
  """(logits [n, C], labels [n]) over a whole split, padding dropped.

  `predict(params, host_batch) -> (logits, label, mask)` as NumPy (`predict_batch` compiled);
  `iterator_kwargs` go to `pipeline.eval_iterator` (the devices and processes it feeds).
  """
  from jaxpretrain.data import pipeline  # noqa: PLC0415

  it = pipeline.eval_iterator(source, preprocess, global_batch_size=batch_size, num_threads=2,
                              prefetch_buffer_size=4, **iterator_kwargs)
  logits, labels = [], []
  for batch in eval_batches(it, source, batch_size, what):
    out, y, mask = predict(params, batch)
    keep = mask > 0
    logits.append(out[keep])
    labels.append(y[keep])
  it.close()
  return np.concatenate(logits), np.concatenate(labels)


def predict_source(model, variables, source, preprocess, batch_size: int,
                   family: registry.Family | str | None = None, what: str | None = None):
  """(logits [n, C], labels [n]) of a whole split on the default device (`predict_split`)."""
  fwd = jax.jit(functools.partial(predict_batch, model, family),
                compiler_options=perf.compiler_options("inference"))
  return predict_split(lambda v, batch: jax.device_get(fwd(v, batch)), variables, source,
                       preprocess, batch_size, what, local_device_count=1, process_count=1,
                       process_index=0)


def evaluate_checkpoint(checkpoint: str | pathlib.Path, dataset: str | None = None, *,
                        split: str = "test",
                        data_dir: str | None = None, batch_size: int = 64,
                        max_len: int | None = None, image_size: int | None = None,
                        output_dir: str | pathlib.Path | None = None,
                        log=print, progress: bool = False) -> dict[str, Any]:
  """Evaluates a classifier checkpoint; writes markdown + JSON; returns the metrics dict.

  `progress`: a progress line with an ETA on stderr over the split (the CLI's).

  `dataset` and `data_dir` default to the run's (flags.json) when `checkpoint` is a run's.
  """
  from jaxpretrain.data import loaders  # noqa: PLC0415 -- TFDS import is slow

  model_dir = resolve_model_dir(checkpoint)
  saved = run_flags(checkpoint)
  if dataset is None:
    dataset = saved.get("dataset")
    if not dataset:
      raise ConfigError(f"--checkpoint={str(checkpoint)!r} is not a run's workdir (no "
                        "flags.json naming its dataset): give --dataset")
    data_dir = data_dir or saved.get("data_dir")
    log(f"evaluating on the run's dataset {dataset!r}"
        + (f" (--data_dir={data_dir})" if data_dir else ""))
  elif data_dir is None and dataset == saved.get("dataset"):
    data_dir = saved.get("data_dir")
  try:
    loaders.check_spec(dataset, data_dir)
  except ValueError as e:
    raise ConfigError(f"--dataset={dataset!r}: {e}") from None
  cfg = pretrained.read_config(model_dir)
  check_head(cfg, model_dir)
  try:
    model_names = pretrained.read_class_names(cfg, str(model_dir / pretrained.CONFIG))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if model_names and all(n == f"LABEL_{i}" for i, n in enumerate(model_names)):
    model_names = None  # Hugging Face's placeholders for a classifier without label names
  model, variables = pretrained.load_pretrained(model_dir)
  prep = dict(cfg.get("preprocessing", {}))
  if (model_dir / "tokenizer.json").is_file():
    prep["tokenizer_path"] = str(model_dir / "tokenizer.json")
  vf = saved.get("validation_fraction")
  extra = {"validation_fraction": vf} if isinstance(vf, float) and 0 <= vf < 1 else {}
  options = task_lib.DataOptions(dataset=dataset, data_dir=data_dir, image_size=image_size,
                                 max_len=max_len or prep.get("max_len", 128), **extra)
  data = task_lib.load_data(options, None, split=split, train=False, preprocessing=prep)
  family = registry.family_of(cfg["model"])
  if family.modality != data.test_meta.modality:
    raise ConfigError(f"--dataset={dataset!r} holds {data.test_meta.modality}s but the "
                      f"checkpoint's model '{cfg['model']}' takes {family.modality}s")
  to_model = None
  if model_names is not None:
    to_model = label_mapping(data.test_meta.class_names, model_names,
                             what=f"--dataset={dataset!r}", warn=log)
  else:
    log(f"warning: {model_dir} records no class names (config.json 'class_names', or only "
        "Hugging Face's LABEL_<i> placeholders), so the "
        f"dataset's label ids are taken as the model's class ids; the scores are wrong if "
        f"--dataset={dataset!r} orders or numbers its classes differently from the training "
        "data")
  logits, labels = predict_source(model, variables, data.test, data.eval_preprocess, batch_size,
                                  family, f"evaluating {split}" if progress else None)
  warn_single_class(labels, f"--dataset={dataset!r} split {split!r}", log)
  if logits.ndim != 2:
    raise ConfigError(f"--checkpoint={str(checkpoint)!r}: the model has no classification head "
                      f"(output shape {logits.shape[1:]} per example); fine-tune it first")
  if model_names is not None:
    if len(model_names) > logits.shape[-1]:
      raise ConfigError(f"{model_dir / pretrained.CONFIG}: {len(model_names)} class_names for "
                        f"a head of {logits.shape[-1]} outputs")
    # Runs exported before class_names was written kept only the dataset's names, also when
    # --num_classes gave the head more outputs: those extra outputs are unnamed.
    names = model_names + [f"class_{i}" for i in range(len(model_names), logits.shape[-1])]
    labels = to_model[labels]
  else:
    if labels.max(initial=0) >= logits.shape[-1]:
      raise ConfigError(f"--dataset={dataset!r} has labels up to {labels.max()} but the "
                        f"checkpoint's head has {logits.shape[-1]} outputs")
    names = list(data.test_meta.class_names)
    names += [f"class_{i}" for i in range(len(names), logits.shape[-1])]
    names = names[:logits.shape[-1]]
  result = metrics_lib.classification_metrics(logits, labels, names)
  result.update(checkpoint=str(model_dir), dataset=dataset, split=split,
                labels="mapped by name onto the model's class names" if model_names is not None
                else "dataset label ids taken as class ids (the checkpoint has no class names)")
  out_dir = pathlib.Path(output_dir or model_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  stem = f"eval_{re.sub(r'[^A-Za-z0-9_.-]+', '_', dataset)}_{split}"
  (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
  (out_dir / f"{stem}.md").write_text(report_lib.evaluation_markdown(
      result, f"{model_dir} on {dataset} ({split})"))
  log(f"{dataset} {split}: accuracy {result['accuracy']:.4f}, top-5 {result['top5']:.4f}, "
      f"macro-F1 {result['macro_f1']:.4f}, MCC {result['mcc']:.4f}; "
      f"written to {out_dir / stem}.md and .json")
  return result
