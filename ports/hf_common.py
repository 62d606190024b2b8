"""Steps every Hugging Face port shares: the base-model prefix, config-vs-weights checks, labels.

A Hugging Face checkpoint stores backbone tensors bare (`embeddings.…`, as BertModel saves
them) or under the base model's prefix (`bert.embeddings.…`, as BertFor… heads save them);
heads (`classifier.…`, `cls.…`) are never prefixed. Ports build their rule table for the
prefix they detect and write the same prefix back on export.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from jaxpretrain import safe_io
from jaxpretrain.safe_io import short
from ports.base import Converted, Exported, expected_shapes
from ports.rules import LINEAR, PortError, Rule, _key, _template_regex, convert, export

# config.json lists at most this many architectures (real ones list one).
MAX_ARCHITECTURES = 16
# Characters of a label name in id2label (real ones are words; ImageNet's longest is ~120).
MAX_LABEL_CHARS = 1024


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
                    f"prefix); first keys: {[_key(k) for k in sorted(weights)[:8]]}")
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
  extra = [f"+ {_key(k)} {s}" for k, s in have.items() if k not in expected]
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


def check_hf_config(config: Any, where: str) -> None:
  """Raises PortError unless a config.json's fields a port reads have their kinds and ranges.

  Sizes (hidden_size, num_hidden_layers, ...) are positive integers below safe_io.FIELDS'
  maxima (a bool is not an integer; a float, string or list is refused, naming the field);
  model_type and hidden_act are strings; architectures a short list of strings; id2label
  an object of integer-named labels. Checked before anything is built from the config.
  """
  if not isinstance(config, dict):
    raise PortError(f"{where}: a JSON {type(config).__name__}, not an object of settings")
  safe_io.check_fields(config, where, PortError)
  archs = config.get("architectures")
  if archs is not None and not (
      isinstance(archs, list) and len(archs) <= MAX_ARCHITECTURES
      and all(isinstance(a, str) and 0 < len(a) <= safe_io.MAX_STR_CHARS for a in archs)):
    raise PortError(f"{where}: architectures={short(archs)}; allowed: a list of at most "
                    f"{MAX_ARCHITECTURES} class names (strings)")
  labels = config.get("id2label")
  if labels is not None and not (
      isinstance(labels, dict) and len(labels) <= safe_io.FIELDS["num_labels"][2]
      and all(k.isdigit() and len(k) <= 8 for k in labels)
      and all(isinstance(v, str) and len(v) <= MAX_LABEL_CHARS for v in labels.values())):
    raise PortError(f"{where}: id2label={short(labels)}; allowed: an object of label index "
                    f"(\"0\", \"1\", ...) -> label name of at most {MAX_LABEL_CHARS} characters")
  label2id = config.get("label2id")
  if label2id is not None and not (
      isinstance(label2id, dict) and len(label2id) <= safe_io.FIELDS["num_labels"][2]
      and all(isinstance(v, int) and not isinstance(v, bool) for v in label2id.values())):
    raise PortError(f"{where}: label2id={short(label2id)}; allowed: an object of label name -> "
                    "index")


def num_labels(hf_config: Mapping[str, Any]) -> int:
  """Hugging Face derives num_labels from id2label; a bare num_labels or 2 otherwise."""
  if hf_config.get("id2label"):
    return len(hf_config["id2label"])
  return int(hf_config.get("num_labels", 2))


def set_num_labels(hf_config: dict[str, Any], n: int,
                   class_names: list[str] | None = None) -> None:
  """id2label/label2id for n labels: `class_names` when given (a checkpoint's own), else the
  config's when they have n entries, else LABEL_i ones (as HF)."""
  if class_names is not None:
    if (not isinstance(class_names, (list, tuple)) or len(class_names) != n
        or not all(isinstance(c, str) for c in class_names)):
      raise PortError(f"class_names must be {n} strings (the head's outputs); got "
                      f"{len(class_names)}: {list(class_names)[:8]}")
    hf_config["id2label"] = {str(i): c for i, c in enumerate(class_names)}
    hf_config["label2id"] = {c: i for i, c in reversed(list(enumerate(class_names)))}
  elif len(hf_config.get("id2label") or {}) != n:
    hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
    hf_config["label2id"] = {f"LABEL_{i}": i for i in range(n)}
  hf_config.pop("num_labels", None)


# Longest class name kept from a config (a label is a word or a phrase, not a document).
MAX_CLASS_NAME_CHARS = 1000


def class_names(hf_config: Mapping[str, Any], n: int) -> list[str] | None:
  """config.json's id2label as n names in id order, checked; None when it has none.

  Keys must be exactly the ids 0..n-1 (as strings or ints), values strings: a malformed
  id2label is an error naming it, never silently renumbered.
  """
  id2label = hf_config.get("id2label")
  if not id2label:
    return None
  if not isinstance(id2label, Mapping):
    raise PortError(f"config.json: id2label is a {type(id2label).__name__}; expected an object "
                    '{"0": "name", ...}')
  names = {}
  for key, value in id2label.items():
    try:
      i = int(key)
    except (TypeError, ValueError):
      raise PortError(f"config.json: id2label key {key!r} is not a class id") from None
    if not isinstance(value, str) or len(value) > MAX_CLASS_NAME_CHARS:
      raise PortError(f"config.json: id2label[{key!r}] is not a string of at most "
                      f"{MAX_CLASS_NAME_CHARS} characters: {str(value)[:80]!r}")
    names[i] = value
  if sorted(names) != list(range(n)):
    raise PortError(f"config.json: id2label has ids {sorted(names)[:10]}; the head has {n} "
                    f"outputs, so it needs exactly the ids 0..{n - 1}")
  return [names[i] for i in range(n)]


def dense(src: str, dst: str) -> list[Rule]:
  """Rules of a torch nn.Linear `src` -> a flax Dense `dst` (kernel transposed, bias)."""
  return [Rule(f"{src}.weight", f"{dst}/kernel", LINEAR), Rule(f"{src}.bias", f"{dst}/bias")]


def norm(src: str, dst: str) -> list[Rule]:
  """Rules of a torch nn.LayerNorm `src` -> a flax LayerNorm `dst` (scale, bias)."""
  return [Rule(f"{src}.weight", f"{dst}/scale"), Rule(f"{src}.bias", f"{dst}/bias")]


def architecture_name(hf_config: Mapping[str, Any], arch: str | None,
                      weights: Mapping[str, Any], known: Mapping[str, str | None]) -> str:
  """`arch`, else config.json's first architecture, else guessed from the head tensors (the
  `known` architecture (name -> head) with a classifier when the weights hold one, else the one
  without a head); a name not in `known` is an error naming the known ones."""
  name = arch or (hf_config.get("architectures") or [None])[0]
  if name is None:
    head = "classification" if "classifier.weight" in weights else None
    return next(n for n, h in known.items() if h == head)
  if name not in known:
    raise PortError(f"config.json: architecture '{short(name)}' is not supported; known: "
                    f"{sorted(known)}")
  return name


def checked_model_type(hf_config: Mapping[str, Any] | None, family: str,
                       model_types: tuple[str, ...], kind: str | None = None) -> str:
  """config.json's model_type; an error unless there is a config.json and its type is one of
  `model_types` (`family` names the port, `kind` what the types are when there are several)."""
  if not hf_config:
    raise PortError(f"a Hugging Face {family} checkpoint needs its config.json")
  model_type = hf_config.get("model_type")
  if model_type in model_types:
    return model_type
  if len(model_types) == 1:
    raise PortError(f"config.json: model_type {model_type!r} is not {model_types[0]!r}")
  raise PortError(f"config.json: model_type {model_type!r} is not {kind or family}; known: "
                  f"{list(model_types)}")


def converted(model: str, kw: dict[str, Any], table: list[Rule], weights: Mapping[str, Any],
              hf_config: Mapping[str, Any], *, name: str, model_type: str, prefixed: bool,
              preprocessing: dict[str, Any], ignored: Iterable[str] = (),
              class_names: list[str] | None = None,
              check: Callable[[str], None] | None = None) -> Converted:
  """The weights through `table`, once they fit the architecture config.json describes.

  Args:
    model, kw: the registry name and constructor arguments config.json gives.
    table, ignored: the family's rule table and the source keys it deliberately drops.
    name, model_type, prefixed: the architecture, model_type and base-prefix layout read,
      recorded as the checkpoint's source so that export writes them back.
    check: the family's own check of the weights (given where they came from), run after the
      shapes are checked and before anything is converted.
  """
  where = describe(weights)
  check_against_config(weights, source_shapes(table, expected_shapes(model, kw)), ignored, where)
  if check is not None:
    check(where)
  return Converted(
      model=model, model_kwargs=kw, flat_variables=convert(table, weights, ignored),
      source={"format": "huggingface", "model_type": model_type,
              "architectures": list(hf_config.get("architectures") or [name]),
              "hf_config": dict(hf_config), "prefixed": prefixed},
      preprocessing=preprocessing, class_names=class_names)


def export_config(model_kwargs: Mapping[str, Any], source: Mapping[str, Any],
                  fields: Iterable[str], *, model_type: str, architecture: str,
                  class_names: list[str] | None) -> dict[str, Any]:
  """config.json on export: the source's, updated with the model's `fields`, model_type,
  architectures and (for a classifier) id2label/label2id."""
  cfg = dict(source.get("hf_config") or {})
  cfg.update({f: model_kwargs[f] for f in fields})
  cfg["model_type"] = model_type
  cfg["architectures"] = [architecture]
  if model_kwargs.get("head") == "classification":
    set_num_labels(cfg, model_kwargs["num_labels"], class_names)
  return cfg


def exported(config: Mapping[str, Any], flat_variables: Mapping[str, np.ndarray], build,
             rules_for: Callable[[dict[str, Any], Mapping[str, Any], bool], list[Rule]],
             config_for) -> Exported:
  """A converted checkpoint (its config.json and variables) -> Hugging Face names and config.

  Args:
    build: the family's `build(name, **kwargs)`; the built module's fields (defaults filled in)
      are what the table and config.json are made from.
    rules_for: (fields, source, prefixed) -> the rule table; `prefixed` when the source had the
      base prefix or the model has a head (transformers then needs it to find the backbone).
    config_for: the family's `hf_config_for(fields, source, class_names)`.
  """
  kw = module_fields(build(config["model"], **config["model_kwargs"]))
  source = config.get("source") or {}
  prefixed = bool(source.get("prefixed")) or kw["head"] is not None
  return Exported(state_dict=export(rules_for(kw, source, prefixed), flat_variables),
                  hf_config=config_for(kw, source, config.get("class_names")))
