"""Evaluate a checkpoint folder on a dataset split: metrics, per-class table, confusion matrix.

    metrics = evaluate_checkpoint("workdirs/run/model", "mnist_local", split="test")

The checkpoint folder is one written by `ports.convert`, `finetune` or `pretrain` (a run's
workdir is accepted too: its `model/` is used). Preprocessing (image size, mean/std, tokenizer,
max_len) comes from the checkpoint's config.json; flags may override size and length. Results
are written as `eval_<dataset>_<split>.md` and `.json` into `output_dir`.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
from typing import Any

import jax
import numpy as np

from jaxpretrain import perf, pretrained
from jaxpretrain.job import metrics as metrics_lib
from jaxpretrain.job import report as report_lib
from jaxpretrain.job import task as task_lib
from jaxpretrain.job.config import ConfigError, JobConfig
from jaxpretrain.train import step as step_lib


def resolve_model_dir(path: str | pathlib.Path) -> pathlib.Path:
  """A checkpoint folder, or a run's workdir (-> its model/)."""
  path = pathlib.Path(path)
  if (path / pretrained.CONFIG).is_file():
    return path
  if (path / "model" / pretrained.CONFIG).is_file():
    return path / "model"
  raise ConfigError(f"--checkpoint={str(path)!r}: neither a checkpoint folder (config.json) "
                    "nor a workdir with model/config.json")


def predict_source(model, variables, source, preprocess, batch_size: int):
  """(logits [n, C], labels [n]) of a whole split on the default device."""
  from jaxpretrain.data import pipeline  # noqa: PLC0415

  @functools.partial(jax.jit, compiler_options=perf.compiler_options("inference"))
  def fwd(batch):
    args, kwargs = step_lib.model_inputs(batch)
    out = model.apply(variables, *args, train=False, **kwargs)
    return out[0] if isinstance(out, tuple) else out

  it = pipeline.eval_iterator(source, preprocess, global_batch_size=batch_size,
                              local_device_count=1, process_count=1, process_index=0,
                              num_threads=2, prefetch_buffer_size=4)
  logits, labels = [], []
  for batch in it:
    keep = batch.pop("mask") > 0
    logits.append(np.asarray(fwd(batch), np.float32)[keep])
    labels.append(batch["label"][keep])
  it.close()
  return np.concatenate(logits), np.concatenate(labels)


def to_trained_classes(labels: np.ndarray, names: list[str], trained: list[str],
                       dataset: str) -> tuple[np.ndarray, list[str]]:
  """Dataset labels -> the checkpoint's class indices, by class name: a test file's classes
  are the labels present in it, which may be fewer than the training file's."""
  index = {n: i for i, n in enumerate(trained)}
  missing = [n for n in names if n not in index]
  if missing:
    raise ConfigError(f"--dataset={dataset!r} has classes the checkpoint was not trained on: "
                      f"{missing[:10]}; its classes: {trained[:10]}"
                      f"{' ...' if len(trained) > 10 else ''}")
  lookup = np.asarray([index[n] for n in names], np.int64)
  return lookup[labels], list(trained)


def evaluate_checkpoint(checkpoint: str | pathlib.Path, dataset: str, *, split: str = "test",
                        data_dir: str | None = None, batch_size: int = 64,
                        max_len: int | None = None, image_size: int | None = None,
                        output_dir: str | pathlib.Path | None = None,
                        log=print) -> dict[str, Any]:
  """Evaluates a classifier checkpoint; writes markdown + JSON; returns the metrics dict."""
  model_dir = resolve_model_dir(checkpoint)
  cfg = pretrained.read_config(model_dir)
  model, variables = pretrained.load_pretrained(model_dir)
  prep = dict(cfg.get("preprocessing", {}))
  if (model_dir / "tokenizer.json").is_file():
    prep["tokenizer_path"] = str(model_dir / "tokenizer.json")
  job = JobConfig(workdir=str(model_dir), dataset=dataset, data_dir=data_dir, model=cfg["model"],
                  steps=1, max_len=max_len or prep.get("max_len", 128), image_size=image_size)
  data = task_lib.load_data(job, None, split=split, train=False, preprocessing=prep)
  family = task_lib.models.family_of(cfg["model"])
  if task_lib.MODALITY[family] != data.test_meta.modality:
    raise ConfigError(f"--dataset={dataset!r} holds {data.test_meta.modality}s but the "
                      f"checkpoint's model '{cfg['model']}' takes {task_lib.MODALITY[family]}s")
  logits, labels = predict_source(model, variables, data.test, data.eval_preprocess, batch_size)
  if logits.ndim != 2:
    raise ConfigError(f"--checkpoint={str(checkpoint)!r}: the model has no classification head "
                      f"(output shape {logits.shape[1:]} per example); fine-tune it first")
  names = list(data.test_meta.class_names)
  trained = prep.get("class_names")  # the classes of the run that wrote the checkpoint
  if isinstance(trained, list) and names != trained:
    labels, names = to_trained_classes(labels, names, [str(n) for n in trained], dataset)
  if labels.max(initial=0) >= logits.shape[-1]:
    raise ConfigError(f"--dataset={dataset!r} has labels up to {labels.max()} but the "
                      f"checkpoint's head has {logits.shape[-1]} outputs")
  names += [f"class_{i}" for i in range(len(names), logits.shape[-1])]
  result = metrics_lib.classification_metrics(logits, labels, names[:logits.shape[-1]])
  result.update(checkpoint=str(model_dir), dataset=dataset, split=split)
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
