"""Ports as data: a table of rules, applied in one direction to convert and the other to export.

A rule pairs a source key template (torch / Hugging Face naming) with a target path template
(jaxpretrain's '/'-joined variable path, collection first) and a named transform:

    Rule("layer{i}.{j}.conv1.weight", "params/layer{i}_{j}/conv1/kernel", CONV)

Placeholders `{name}` match digits and must appear on both sides, so the same table serves
both directions. Transforms are chosen per rule, never by array rank.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
  """A named array transform and its inverse (the inverse is used by export)."""
  name: str
  forward: Callable[[np.ndarray], np.ndarray]
  inverse: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda a: a, lambda a: a)
# torch Linear weight [out, in] -> Flax Dense kernel [in, out].
LINEAR = Transform("linear_t", lambda a: a.T, lambda a: a.T)
# torch Conv2d weight [out, in, kh, kw] -> Flax Conv kernel [kh, kw, in, out].
CONV = Transform(
    "conv_oihw_to_hwio",
    lambda a: a.transpose(2, 3, 1, 0),
    lambda a: a.transpose(3, 2, 0, 1),
)


@dataclasses.dataclass(frozen=True)
class Rule:
  source: str  # e.g. "encoder.layer.{i}.attention.self.query.weight"
  target: str  # e.g. "params/encoder/layer_{i}/attention/query/kernel"
  transform: Transform = IDENTITY

  def __post_init__(self):
    if set(_fields(self.source)) != set(_fields(self.target)):
      raise ValueError(f"rule placeholders differ: '{self.source}' vs '{self.target}'")


def _fields(template: str) -> list[str]:
  return re.findall(r"\{(\w+)\}", template)


def _template_regex(template: str) -> re.Pattern:
  parts = re.split(r"(\{\w+\})", template)
  out = []
  seen = set()
  for p in parts:
    m = re.fullmatch(r"\{(\w+)\}", p)
    if m and m.group(1) in seen:
      out.append(f"(?P={m.group(1)})")
    elif m:
      seen.add(m.group(1))
      out.append(f"(?P<{m.group(1)}>[0-9]+)")
    else:
      out.append(re.escape(p))
  return re.compile("".join(out))


class PortError(ValueError):
  """A checkpoint does not fit the model; the message lists the keys and shapes."""


def _apply(table: Iterable[Rule], arrays: Mapping[str, np.ndarray], ignored: Iterable[str],
           *, reverse: bool) -> dict[str, np.ndarray]:
  rules = list(table)
  compiled = [(_template_regex(r.target if reverse else r.source), r) for r in rules]
  ignore = [re.compile(p) for p in ignored]
  out, unexpected, claimed = {}, [], {}
  for key, value in arrays.items():
    for regex, rule in compiled:
      m = regex.fullmatch(key)
      if m:
        dst = (rule.source if reverse else rule.target).format(**m.groupdict())
        if dst in out:
          raise PortError(f"keys '{claimed[dst]}' and '{key}' both map to '{dst}'")
        fn = rule.transform.inverse if reverse else rule.transform.forward
        # A view where the transform is a transpose (of a memory-mapped tensor, when reading
        # safetensors): no second copy of the checkpoint in memory; writers copy as they go.
        out[dst] = np.asarray(fn(np.asarray(value)))  # keeps 0-d arrays 0-d
        claimed[dst] = key
        break
    else:
      if not any(p.fullmatch(key) for p in ignore):
        unexpected.append(f"+ {key} {tuple(np.shape(value))}")
  if unexpected:
    raise PortError("keys no rule converts (+):\n  " + "\n  ".join(sorted(unexpected)))
  return out


def convert(table: Iterable[Rule], state_dict: Mapping[str, np.ndarray],
            ignored: Iterable[str] = ()) -> dict[str, np.ndarray]:
  """Source-named arrays -> {'params/...': array}. Every key is converted once or ignored."""
  return _apply(table, state_dict, ignored, reverse=False)


def export(table: Iterable[Rule],
           flat_variables: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{'params/...': array} -> source-named arrays, the same table read backwards."""
  return _apply(table, flat_variables, (), reverse=True)


def check_shapes(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple]) -> None:
  """Raises PortError listing missing (-), unexpected (+) and mis-shaped (~) paths."""
  missing = [f"- {k} {tuple(s)}" for k, s in expected.items() if k not in flat]
  extra = [f"+ {k} {tuple(np.shape(v))}" for k, v in flat.items() if k not in expected]
  wrong = [f"~ {k}: checkpoint {tuple(np.shape(flat[k]))} vs model {tuple(s)}"
           for k, s in expected.items() if k in flat and tuple(np.shape(flat[k])) != tuple(s)]
  if missing or extra or wrong:
    raise PortError(
        "checkpoint does not match the architecture (- missing, + unexpected, ~ shape):\n  "
        + "\n  ".join(sorted(missing) + sorted(extra) + sorted(wrong)))
