"""Ports as data: a table of rules, applied in one direction to convert and the other to export.

A rule pairs a source key template (torch / Hugging Face naming) with a target path template
(jaxpretrain's '/'-joined variable path, collection first) and a named transform:

    Rule("layer{i}.{j}.conv1.weight", "params/layer{i}_{j}/conv1/kernel", CONV)

Placeholders `{name}` match digits and must appear on both sides, so the same table serves
both directions. Transforms are chosen per rule, never by array rank.

Every array a rule moves is checked first: its dtype must be of the rule's kind (weights are
floats: an I32 tensor where a kernel belongs is refused by key and dtype, not converted into
logits of 1e9) and its rank the one the transform is written for (a conv weight of rank 2 is
refused by key, not transposed into a traceback).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
  """A named array transform and its inverse (the inverse is used by export)."""
  name: str
  forward: Callable[[np.ndarray], np.ndarray]
  inverse: Callable[[np.ndarray], np.ndarray]
  ndim: int | None = None  # the rank it is written for, on both sides; None: any


IDENTITY = Transform("identity", lambda a: a, lambda a: a)
# torch Linear weight [out, in] -> Flax Dense kernel [in, out].
LINEAR = Transform("linear_t", lambda a: a.T, lambda a: a.T, ndim=2)
# torch Conv2d weight [out, in, kh, kw] -> Flax Conv kernel [kh, kw, in, out].
CONV = Transform(
    "conv_oihw_to_hwio",
    lambda a: a.transpose(2, 3, 1, 0),
    lambda a: a.transpose(3, 2, 0, 1),
    ndim=4,
)

# Dtypes of each kind a rule may expect. Every parameter and statistic of the ported models is
# a float; integer buffers (num_batches_tracked, position_ids) are ignored, not converted.
KINDS = {
    "float": frozenset(map(np.dtype, (np.float16, np.float32, np.float64, ml_dtypes.bfloat16))),
}


@dataclasses.dataclass(frozen=True)
class Rule:
  source: str  # e.g. "encoder.layer.{i}.attention.self.query.weight"
  target: str  # e.g. "params/encoder/layer_{i}/attention/query/kernel"
  transform: Transform = IDENTITY
  kind: str = "float"  # a key of KINDS: the dtypes the array may have

  def __post_init__(self):
    if set(_fields(self.source)) != set(_fields(self.target)):
      raise ValueError(f"rule placeholders differ: '{self.source}' vs '{self.target}'")
    if self.kind not in KINDS:
      raise ValueError(f"rule kind '{self.kind}' unknown; known: {sorted(KINDS)}")

  def check(self, key: str, array: np.ndarray) -> None:
    """Raises PortError naming `key` unless `array` has this rule's dtype kind and rank."""
    ndim = self.transform.ndim
    if array.dtype not in KINDS[self.kind] or (ndim is not None and array.ndim != ndim):
      rank = f"{ndim}-d " if ndim is not None else ""
      raise PortError(
          f"'{_key(key)}' has shape {tuple(array.shape)} and dtype {array.dtype}, but "
          f"{self.transform.name} takes a {rank}{self.kind} tensor "
          f"({', '.join(sorted(str(d) for d in KINDS[self.kind]))})")


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
          raise PortError(f"keys '{_key(claimed[dst])}' and '{_key(key)}' both map to '{dst}'")
        fn = rule.transform.inverse if reverse else rule.transform.forward
        array = np.asarray(value)
        rule.check(key, array)
        # A view where the transform is a transpose (of a memory-mapped tensor, when reading
        # safetensors): no second copy of the checkpoint in memory; writers copy as they go.
        out[dst] = np.asarray(fn(array))  # keeps 0-d arrays 0-d
        claimed[dst] = key
        break
    else:
      if not any(p.fullmatch(key) for p in ignore):
        unexpected.append(f"+ {_key(key)} {tuple(np.shape(value))}")
  if unexpected:
    raise PortError("keys no rule converts (+):\n  " + "\n  ".join(listing(sorted(unexpected))))
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
        + "\n  ".join(listing(sorted(missing)) + listing(sorted(extra)) + listing(sorted(wrong))))


# Lines of one kind an error lists before it says how many more there are: every key of a
# wrong --arch (resnet34's 80 extra tensors against resnet18), but a checkpoint of a million
# stray keys gives a message of 100 lines, not of megabytes.
MAX_LISTED = 100
# Characters of a key name shown in a message.
MAX_KEY_CHARS = 200


def listing(lines: list[str], n: int = MAX_LISTED) -> list[str]:
  """At most n lines, then how many were left out."""
  return lines if len(lines) <= n else [*lines[:n], f"... and {len(lines) - n} more"]


def _key(key) -> str:
  key = str(key)
  return key if len(key) <= MAX_KEY_CHARS else f"{key[:MAX_KEY_CHARS]}... ({len(key)} chars)"
