"""What a run's exported model (`<workdir>/model`) records besides its weights.

- `class_names`: the training data's class names, index = output (config.json, top level), so
  evaluation and prediction keep the model's labels;
- `source.base`: the base checkpoint's own `source` (format, Hugging Face config, ...), so
  `python -m ports.export` can write the model back in the format the user came from;
- `source.run`: steps, hyperparameters and test metrics, for the exported model card;
- the tokenizer files (tokenizer.json, tokenizer_config.json, vocab, merges, special tokens
  map) of the base checkpoint, or of the tokenizer the run used.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from jaxpretrain import pretrained

# Files a text model's folder carries (Hugging Face's names). A checkpoint's `files` list is
# untrusted: only these names are ever copied, and only regular files.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "merges.txt", "special_tokens_map.json")
# Flags the model card lists as hyperparameters (job/config.py names).
HYPERPARAMETERS = ("steps", "epochs", "batch_size", "optimizer", "lr", "schedule", "warmup",
                   "weight_decay", "momentum", "clip_norm", "label_smoothing", "freeze",
                   "lr_mult", "reset_head", "num_classes", "max_len", "image_size",
                   "crop_padding", "flip", "mask_rate", "dtype", "seed")
# Test metrics kept (scalars of metrics.classification_metrics or the masked-LM evaluation).
METRICS = ("num_examples", "accuracy", "top5", "macro_f1", "mcc", "loss",
           "majority_baseline", "perplexity")


def class_names(dataset_names: Sequence[str], num_outputs: int) -> list[str]:
  """One name per head output: the dataset's, then `class_<i>` for outputs beyond them."""
  names = [str(n) for n in dataset_names][:num_outputs]
  return names + [f"class_{i}" for i in range(len(names), num_outputs)]


def carried_files(spec_files: Mapping[str, pathlib.Path],
                  tokenizer: pathlib.Path | None) -> dict[str, pathlib.Path]:
  """name -> file to copy into the run's model folder (text models only).

  The base checkpoint's tokenizer files when the run used its tokenizer.json; otherwise (a
  run from scratch, with the packaged MiniLM tokenizer) that tokenizer and the files beside it.
  """
  if tokenizer is None:
    return {}
  tokenizer = pathlib.Path(tokenizer)
  files = {n: pathlib.Path(p) for n, p in spec_files.items() if n in TOKENIZER_FILES}
  if files.get("tokenizer.json") != tokenizer:
    files = {n: tokenizer.parent / n for n in TOKENIZER_FILES}
    files["tokenizer.json"] = tokenizer
  return {n: p for n, p in files.items() if p.is_file()}


def base_source(checkpoint: pathlib.Path | None) -> dict[str, Any] | None:
  """The `source` of the checkpoint a run started from (None: trained from scratch)."""
  if checkpoint is None:
    return None
  return dict(pretrained.read_config(checkpoint).get("source") or {})


def run_record(flags: Mapping[str, Any], steps: int,
               final: Mapping[str, Any] | None) -> dict[str, Any]:
  """Steps, hyperparameters and the final test metrics of a run (JSON-ready)."""
  return {"steps": int(steps),
          "hyperparameters": {k: flags[k] for k in HYPERPARAMETERS if k in flags},
          "test_metrics": {k: final[k] for k in METRICS if k in (final or {})}}
