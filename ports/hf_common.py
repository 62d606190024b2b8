"""Steps every Hugging Face port shares: the base-model prefix, config-vs-weights checks, labels.

A Hugging Face checkpoint stores backbone tensors bare (`embeddings.…`, as BertModel saves
them) or under the base model's prefix (`bert.embeddings.…`, as BertFor… heads save them);
heads (`classifier.…`, `cls.…`) are never prefixed. Ports build their rule table for the
prefix they detect and write the same prefix back on export.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ports.rules import PortError, Rule, _template_regex


def detect_prefix(weights: Mapping[str, Any], base_prefix: str, backbone_key: str) -> bool:
  """True when backbone tensors carry `base_prefix` ('bert.'), False when they are bare.

  Args:
    weights: source-named tensors.
    base_prefix: e.g. "bert.", "roberta.", "vit.".
    backbone_key: a key every checkpoint of the family has, unprefixed (e.g. the word
      embeddings), used to tell the two layouts apart.
  """
  prefixed, bare = base_prefix + backbone_key in weights, backbone_key in weights
  if prefixed and bare:
    raise PortError(f"weights hold both '{backbone_key}' and '{base_prefix}{backbone_key}'; "
                    "cannot tell which is the model")
  if not (prefixed or bare):
    raise PortError(f"weights lack '{backbone_key}' (with or without the '{base_prefix}' "
                    f"prefix); first keys: {sorted(weights)[:8]}")
  return prefixed


def _shape_view(shape: tuple[int, ...]) -> np.ndarray:
  """A zero-stride array of `shape` (no memory) on which transposes report their shape."""
  return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape, (0,) * len(shape))


def source_shapes(table: Iterable[Rule], target_shapes: Mapping[str, tuple]) -> dict[str, tuple]:
  """The model's '/'-joined variable shapes -> the source keys and shapes the table expects."""
  compiled = [(_template_regex(r.target), r) for r in table]
  out = {}
  for path, shape in target_shapes.items():
    for regex, rule in compiled:
      m = regex.fullmatch(path)
      if m:
        out[rule.source.format(**m.groupdict())] = rule.transform.inverse(_shape_view(shape)).shape
        break
    else:
      raise PortError(f"no rule produces model variable '{path}'")
  return out


def check_against_config(weights: Mapping[str, Any], expected: Mapping[str, tuple],
                         ignored: Iterable[str], where: str) -> None:
  """Fails, naming source keys and both shapes, when the weights do not fit config.json.

  Args:
    weights: source-named tensors (memory-mapped is fine: only shapes are read).
    expected: source key -> shape the config implies (from `source_shapes`).
    ignored: regexes (fullmatch) of source keys that are deliberately dropped.
    where: the weights' file or folder, for the message.
  """
  ignore = [re.compile(p) for p in ignored]
  have = {k: tuple(np.shape(weights[k])) for k in weights
          if not any(p.fullmatch(k) for p in ignore)}
  missing = [f"- {k} {tuple(s)}" for k, s in expected.items() if k not in have]
  extra = [f"+ {k} {s}" for k, s in have.items() if k not in expected]
  wrong = [f"~ {k}: weights {have[k]} vs config.json {tuple(s)}"
           for k, s in expected.items() if k in have and have[k] != tuple(s)]
  if missing or extra or wrong:
    lines = [line for group in (wrong, missing, extra) for line in _first(sorted(group))]
    raise PortError(
        f"{where}: weights do not match config.json (- missing from the weights, + not in the "
        "architecture config.json describes, ~ shape differs):\n  " + "\n  ".join(lines))


def _first(lines: list[str], n: int = 12) -> list[str]:
  """At most n lines of a group, then how many were left out (a hidden-size typo hits all)."""
  return lines if len(lines) <= n else [*lines[:n], f"  ... and {len(lines) - n} more"]


def module_fields(module) -> dict[str, Any]:
  """A Flax module's dataclass fields (defaults filled in), without parent and name."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.name not in ("parent", "name")}


def describe(weights: Mapping[str, Any]) -> str:
  """The file a weights mapping was read from, when it knows it."""
  # SafetensorsFile knows its file; ShardedTensors its folder; a pickle's dict nothing.
  path = getattr(weights, "path", None) or getattr(weights, "_folder", None)
  return str(path) if path is not None else "weights"


def num_labels(hf_config: Mapping[str, Any]) -> int:
  """Hugging Face derives num_labels from id2label; a bare num_labels or 2 otherwise."""
  if hf_config.get("id2label"):
    return len(hf_config["id2label"])
  return int(hf_config.get("num_labels", 2))


def set_num_labels(hf_config: dict[str, Any], n: int) -> None:
  """Keeps id2label/label2id when they have n entries, else writes LABEL_i ones (as HF)."""
  if len(hf_config.get("id2label") or {}) != n:
    hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
    hf_config["label2id"] = {f"LABEL_{i}": i for i in range(n)}
  hf_config.pop("num_labels", None)


MAX_CLASS_NAME_CHARS = 1000  # a label longer than this is not a class name


def class_names(hf_config: Mapping[str, Any], n: int) -> list[str] | None:
  """config.json's id2label as a list (index = class id), validated; None without one.

  id2label comes from a stranger: it must map every id in [0, n) (keys are JSON strings of
  ints) to a string of at most MAX_CLASS_NAME_CHARS characters.
  """
  id2label = hf_config.get("id2label")
  if not id2label:
    return None
  if not isinstance(id2label, Mapping):
    raise PortError(f"config.json: id2label is {type(id2label).__name__}; expected an object")
  names: dict[int, str] = {}
  for key, name in id2label.items():
    try:
      i = int(key)
    except (TypeError, ValueError):
      raise PortError(f"config.json: id2label key {key!r} is not an integer") from None
    if not 0 <= i < n or i in names:
      raise PortError(f"config.json: id2label id {key!r} is out of [0, {n}) or repeated")
    if not isinstance(name, str) or len(name) > MAX_CLASS_NAME_CHARS:
      raise PortError(f"config.json: id2label[{key!r}] must be a string of at most "
                      f"{MAX_CLASS_NAME_CHARS} characters")
    names[i] = name
  if len(names) != n:
    raise PortError(f"config.json: id2label has {len(names)} labels for {n} outputs")
  return [names[i] for i in range(n)]
