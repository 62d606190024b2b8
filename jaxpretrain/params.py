"""Parameter trees addressed by '/'-joined paths.

One way to select parameters everywhere (freezing, weight-decay masks, learning-rate
multipliers, `dont_load`): a regular expression matched with `re.fullmatch` against the
'/'-joined path of each leaf, e.g. ``params/layer4_1/conv2/kernel``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

PyTree = Any


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dicts -> {'a/b/c': leaf}. Only dict-like nodes are descended into."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(flatten(value, path))
    else:
      flat[path] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dicts (the inverse of `flatten`)."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise ValueError(f"path '{path}' passes through leaf '{part}'")
    if leaf in node:
      raise ValueError(f"duplicate path '{path}'")
    node[leaf] = value
  return tree


def tree_paths(tree: PyTree) -> list[str]:
  """'/'-joined key paths of every leaf of any pytree (dicts, FrozenDicts, dataclasses)."""
  return [_keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _keystr(keypath) -> str:
  parts = []
  for k in keypath:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def compile_patterns(patterns: str | Iterable[str] | None) -> list[re.Pattern]:
  """Accepts None, one regex, or several; raises naming a regex that does not compile."""
  if patterns is None:
    return []
  if isinstance(patterns, str):
    patterns = [patterns]
  compiled = []
  for p in patterns:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"bad parameter regex '{p}': {e}") from None
  return compiled


def matches(path: str, patterns: str | Iterable[str] | None) -> bool:
  """True when any pattern fullmatches the path."""
  return any(p.fullmatch(path) for p in compile_patterns(patterns))


def path_mask(tree: PyTree, patterns: str | Iterable[str] | None) -> PyTree:
  """A pytree of bools like `tree`: True where the leaf's path fullmatches a pattern."""
  compiled = compile_patterns(patterns)
  return jax.tree_util.tree_map_with_path(
      lambda kp, _: any(p.fullmatch(_keystr(kp)) for p in compiled), tree)


def merge_params(loaded: Mapping[str, Any], initialized: Mapping[str, Any],
                 dont_load: str | Iterable[str] | None = ()) -> dict[str, Any]:
  """Takes every leaf from `loaded`, except paths matching `dont_load` (kept from `initialized`).

  Fails loudly, listing the paths, when a leaf is missing from `loaded`, when `loaded` has a
  leaf the model does not, or when shapes differ, unless `dont_load` covers that path. This
  is how a new head is put on a pretrained backbone.

  Args:
    loaded: variables from a checkpoint (nested dicts).
    initialized: freshly initialized variables of the target model (nested dicts).
    dont_load: regexes over '/'-joined paths to take from `initialized`.
  Returns:
    Nested dicts with the structure of `initialized`.
  """
  skip = compile_patterns(dont_load)
  skipped = lambda path: any(p.fullmatch(path) for p in skip)
  src, dst = flatten(dict(loaded)), flatten(dict(initialized))
  missing = sorted(k for k in dst if k not in src and not skipped(k))
  unexpected = sorted(k for k in src if k not in dst and not skipped(k))
  mismatched = sorted(
      f"{k}: checkpoint {tuple(np.shape(src[k]))} vs model {tuple(np.shape(dst[k]))}"
      for k in dst
      if k in src and not skipped(k) and np.shape(src[k]) != np.shape(dst[k]))
  if missing or unexpected or mismatched:
    lines = [f"- {k}" for k in missing] + [f"+ {k}" for k in unexpected]
    lines += [f"~ {m}" for m in mismatched]
    raise ValueError(
        "checkpoint does not fit the model (- missing from checkpoint, + not in model, "
        "~ shape differs); cover intended differences with dont_load:\n  "
        + "\n  ".join(lines))
  merged = {k: (v if skipped(k) else src[k]) for k, v in dst.items()}
  return unflatten(merged)
