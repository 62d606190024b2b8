"""Model families: one frozen descriptor per family, registered by its own model file.

A family (resnet, bert, vit, ...) is everything the rest of the library needs to know about a
kind of model: its modality, how to build its named variants, which variables a new head
replaces, how a batch becomes its inputs, how features are pooled for `select`, its default
preprocessing and which `ports/` modules read its weights. The job, evaluation, selection and
train-step code ask the family; none of them tests a family's name.

Each family file ends with

    FAMILY = registry.register(registry.Family(name="resnet", modality="image", ...))

and every module of this package is imported on the first lookup, so a new model file is found
without editing any list. Variant names are unique across families: a checkpoint's config.json
names a variant, and `family_of(variant)` finds its family.

Import rule: this module imports nothing from training, data or ports; port modules are named
by strings ("ports.torchvision_resnet") and imported by `ports.convert` / `ports.export`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Batch = Mapping[str, Any]
Kwargs = Mapping[str, Any]

MODALITIES = ("image", "text")
POOLINGS = ("pooled", "mean")  # aux["pooled"] (or ViT's pre_logits) | masked mean of tokens
SOURCE_FORMATS = ("torchvision", "huggingface")  # keys of Family.ports
# torchvision's ImageNet normalization in [0, 1] units (= jaxpretrain.data.IMAGENET_MEAN/STD).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The project's small-image default for models that do not fix their input size.
SMALL_IMAGE_SIZE = 32
_NAME = re.compile(r"[a-z][a-z0-9_]*")


# ------------------------------------------------------------------------------------------
# Standard inputs and pooling, shared by families of a modality.
# ------------------------------------------------------------------------------------------


def image_inputs(batch: Batch) -> tuple[tuple, dict]:
  """`(batch["image"],), {}`: images [b, h, w, c] as the model's only positional input."""
  return (batch["image"],), {}


def text_inputs(batch: Batch) -> tuple[tuple, dict]:
  """`(batch["input_ids"],)` plus `attention_mask` and `token_type_ids` when present."""
  kw = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
  return (batch["input_ids"],), kw


def batch_inputs(batch: Batch) -> tuple[tuple, dict]:
  """Inputs of a batch of either modality, told apart by its keys (no family known)."""
  if "image" in batch:
    return image_inputs(batch)
  if "input_ids" in batch:
    return text_inputs(batch)
  raise ValueError(f"batch has neither 'image' nor 'input_ids'; keys: {sorted(batch)}")


_STANDARD_INPUTS = {"image": image_inputs, "text": text_inputs}


def pool_features(aux: Mapping[str, jax.Array], attention_mask: jax.Array | None,
                  pooling: str) -> jax.Array:
  """The feature vector [batch, d] of a model's aux dict.

  Args:
    aux: the model's named intermediates.
    attention_mask: [batch, seq] (text), 1 for tokens; needed by "mean" on token outputs.
    pooling: "pooled" (aux["pooled"], else ViT's aux["pre_logits"]) or "mean" (masked mean
      of aux["last_hidden_state"] over tokens; for a CNN, "pooled" already is a mean).
  Returns:
    float32 [batch, d].
  """
  if pooling not in POOLINGS:
    raise ValueError(f"unknown pooling '{pooling}'; known: {list(POOLINGS)}")
  if pooling == "pooled" or "last_hidden_state" not in aux:
    for key in ("pooled", "pre_logits"):
      if key in aux:
        return aux[key].astype(jnp.float32)
    raise ValueError(f"pooling 'pooled': the model gives no 'pooled' output (aux keys "
                     f"{sorted(aux)}); use pooling 'mean' or a model with a pooler")
  h = aux["last_hidden_state"].astype(jnp.float32)  # [b, s, d]
  if attention_mask is None:
    return h.mean(1)
  m = attention_mask.astype(jnp.float32)[:, :, None]  # [b, s, 1]
  return (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def standard_pool(aux: Mapping[str, jax.Array], batch: Batch, pooling: str) -> jax.Array:
  """`pool_features` with the batch's attention mask (None for images)."""
  return pool_features(aux, batch.get("attention_mask"), pooling)


# ------------------------------------------------------------------------------------------
# The descriptor.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Head:
  """One task head of a family, as constructor kwargs and variable paths.

  patterns: regexes over '/'-joined variable paths ("params/fc/.*") of this head's variables.
  set: `(kwargs, n) -> kwargs` with this head of `n` outputs (n None: no head at all, for
    "classification"; heads whose size the model fixes, like masked-LM, ignore n).
  size: `kwargs -> int | None`, the head's outputs the kwargs describe; None: not this head.
    Read from the kwargs alone (a checkpoint's model_kwargs), not the variant's defaults.
  """
  patterns: tuple[str, ...]
  set: Callable[[Kwargs, int | None], dict[str, Any]]
  size: Callable[[Kwargs], int | None]


_REQUIRED = ("name", "modality", "build", "variants", "dummy_inputs", "heads", "preprocessing",
             "ports")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashable by identity
class Family:
  """What the library knows about one model family (see the module docstring).

  Required:
    name: the family's name ("resnet"), lowercase; stored nowhere, variants are.
    modality: "image" | "text" (what its datasets hold).
    build: `build(variant, **kwargs) -> nn.Module`, the variant's fields overridden by kwargs
      (JSON values accepted: lists for tuples, dtype names).
    variants: the family file's literal VARIANTS table, name -> default constructor kwargs.
    dummy_inputs: `dummy_inputs(model, batch=1) -> {"x": ..., **kw}`, the smallest inputs
      `model.init` accepts (positional input under "x").
    heads: task -> Head; "classification" is required, other tasks ("mlm") are optional and
      their presence is what allows `--task=<task>`. Order matters only for messages.
    preprocessing: a JSON-ready dict, or `model -> dict`, of the preprocessing the model
      implies when no checkpoint says otherwise: image families `image_size`, `mean`, `std`;
      text families `max_len` (and `pad_token_id`).
    ports: source format ("torchvision" | "huggingface") -> port module name
      ("ports.torchvision_resnet"). A torchvision port module defines ARCHS (the variants it
      reads); a Hugging Face port is found through `hf_model_types`.
  Optional:
    inputs: `batch -> (args, kwargs)` for `model.apply`; default: the modality's standard
      (`image_inputs` / `text_inputs`).
    pool: `(aux, batch, pooling) -> float32 [b, d]` features for `select`; default:
      `standard_pool` (aux["pooled"] / ["pre_logits"], or the masked mean of tokens).
    fresh_when_added: constructor field -> variable patterns that must come from the fresh
      init when the run's kwargs turn the field on and the checkpoint's had it off (BERT's
      and ViT's {"pooler": ("params/pooler/.*",)}).
    size_kwarg: the constructor field that fixes the input size (ViT's "image_size"): a
      scratch run's --image_size sets it, and it sets the run's image size otherwise.
    hf_model_types: Hugging Face config.json `model_type`s the "huggingface" port reads.
  """
  name: str = None
  modality: str = None
  build: Callable[..., nn.Module] = None
  variants: Mapping[str, Mapping[str, Any]] = None
  dummy_inputs: Callable[..., dict[str, Any]] = None
  heads: Mapping[str, Head] = None
  preprocessing: Mapping[str, Any] | Callable[[nn.Module], Mapping[str, Any]] = None
  ports: Mapping[str, str] = None
  inputs: Callable[[Batch], tuple[tuple, dict]] | None = None
  pool: Callable[[Mapping[str, jax.Array], Batch, str], jax.Array] | None = None
  fresh_when_added: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  size_kwarg: str | None = None
  hf_model_types: tuple[str, ...] = ()

  def __post_init__(self):
    missing = [f for f in _REQUIRED if getattr(self, f) is None]
    where = f"family {self.name!r}" if isinstance(self.name, str) else "a family"
    if missing:
      raise ValueError(f"{where} is missing required fields {missing}; every Family needs "
                       f"{list(_REQUIRED)} (see jaxpretrain/models/registry.py)")
    if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
      raise ValueError(f"family name {self.name!r}: must match {_NAME.pattern}")
    if self.modality not in MODALITIES:
      raise ValueError(f"{where}: modality {self.modality!r}; allowed: {list(MODALITIES)}")
    for field in ("build", "dummy_inputs"):
      if not callable(getattr(self, field)):
        raise ValueError(f"{where}: {field} must be callable, got {getattr(self, field)!r}")
    if not isinstance(self.variants, Mapping) or not self.variants:
      raise ValueError(f"{where}: variants must be a non-empty table name -> kwargs")
    if not isinstance(self.heads, Mapping) or "classification" not in self.heads:
      raise ValueError(f"{where}: heads must map 'classification' (and optional other tasks) "
                       f"to a Head; got {self.heads!r}")
    for task, head in self.heads.items():
      if not isinstance(head, Head):
        raise ValueError(f"{where}: heads[{task!r}] is not a registry.Head: {head!r}")
      _compile(where, head.patterns)
    for patterns in self.fresh_when_added.values():
      _compile(where, patterns)
    if not (isinstance(self.preprocessing, Mapping) or callable(self.preprocessing)):
      raise ValueError(f"{where}: preprocessing must be a dict or model -> dict")
    if not isinstance(self.ports, Mapping):
      raise ValueError(f"{where}: ports must map a source format to a 'ports.<module>' name")
    for fmt, module in self.ports.items():
      if fmt not in SOURCE_FORMATS or not str(module).startswith("ports."):
        raise ValueError(f"{where}: ports[{fmt!r}] = {module!r}; formats: "
                         f"{list(SOURCE_FORMATS)}, modules 'ports.<name>'")
    if self.hf_model_types and "huggingface" not in self.ports:
      raise ValueError(f"{where}: hf_model_types {self.hf_model_types} without a "
                       "'huggingface' port")
    if self.inputs is None:
      object.__setattr__(self, "inputs", _STANDARD_INPUTS[self.modality])
    if self.pool is None:
      object.__setattr__(self, "pool", standard_pool)
    object.__setattr__(self, "hf_model_types", tuple(self.hf_model_types))

  # --- heads ---------------------------------------------------------------------------

  @property
  def head_patterns(self) -> list[str]:
    """Variable patterns of every head: what a new head leaves to the fresh init."""
    return [p for head in self.heads.values() for p in head.patterns]

  def set_head(self, kwargs: Kwargs, num_classes: int | None) -> dict[str, Any]:
    """kwargs with a classification head of `num_classes` outputs (None: no head)."""
    return self.heads["classification"].set(dict(kwargs), num_classes)

  def head_size(self, kwargs: Kwargs) -> int | None:
    """Outputs of the classification head the kwargs describe (None: no such head)."""
    return self.heads["classification"].size(kwargs)

  # --- models and data -------------------------------------------------------------------

  def default_preprocessing(self, model: nn.Module) -> dict[str, Any]:
    """The preprocessing `model` implies (a JSON-ready copy; see `preprocessing`)."""
    prep = self.preprocessing(model) if callable(self.preprocessing) else self.preprocessing
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(prep).items()}

  def forward(self, model: nn.Module, variables: Mapping[str, Any], batch: Batch, *,
              train: bool = False, **apply_kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """`(output, aux)` of `model` on a batch (`registry.forward` with this family)."""
    return forward(self, model, variables, batch, train=train, **apply_kwargs)


def _compile(where: str, patterns: Any) -> None:
  if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
    raise ValueError(f"{where}: patterns must be a tuple of regex strings, got {patterns!r}")
  for p in patterns:
    try:
      re.compile(p)
    except re.error as e:
      raise ValueError(f"{where}: bad pattern {p!r}: {e}") from None


# ------------------------------------------------------------------------------------------
# The registry.
# ------------------------------------------------------------------------------------------

_FAMILIES: dict[str, Family] = {}
_LOCK = threading.RLock()
_LOADED = False


def register(family: Family) -> Family:
  """Adds `family` (re-registering the same name from the same module replaces it).

  Fails when `family` is not a valid Family, when another module registered its name, or
  when one of its variant names belongs to another family.
  """
  if not isinstance(family, Family):
    raise ValueError(f"register() takes a registry.Family, got {type(family).__name__}")
  family.__post_init__()  # a Family changed with object.__setattr__ is checked again
  with _LOCK:
    old = _FAMILIES.get(family.name)
    if old is not None and _module(old) != _module(family):
      raise ValueError(f"family '{family.name}' is already registered by {_module(old)}; "
                       f"{_module(family)} cannot register it again")
    for other in _FAMILIES.values():
      if other.name == family.name:
        continue
      clash = sorted(set(other.variants) & set(family.variants))
      if clash:
        raise ValueError(f"family '{family.name}': variants {clash} already belong to family "
                         f"'{other.name}'; variant names are unique across families")
    _FAMILIES[family.name] = family
  return family


def _module(family: Family) -> str:
  return getattr(family.build, "__module__", "?")


def _load_all() -> None:
  """Imports every module of this package once, so each family file registers itself."""
  global _LOADED
  if _LOADED:
    return
  with _LOCK:
    if _LOADED:
      return
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
      if not info.name.startswith("_") and info.name != "registry":
        importlib.import_module(f"{__package__}.{info.name}")
    _LOADED = True


def families() -> list[Family]:
  """Every registered family, by name."""
  _load_all()
  return [_FAMILIES[k] for k in sorted(_FAMILIES)]


def get(name: str) -> Family:
  """The family called `name` ("resnet")."""
  _load_all()
  if name not in _FAMILIES:
    raise ValueError(f"unknown model family '{name}'; known: {sorted(_FAMILIES)}")
  return _FAMILIES[name]


def family_of(variant: str) -> Family:
  """The family whose VARIANTS table holds `variant` ("resnet18" -> the resnet Family)."""
  _load_all()
  for family in _FAMILIES.values():
    if variant in family.variants:
      return family
  raise ValueError(f"unknown model '{variant}'; known: {sorted(known_models())}")


def known_models() -> list[str]:
  """Every variant name of every family."""
  return [v for family in families() for v in family.variants]


def forward(family: Family | str | None, model: nn.Module, variables: Mapping[str, Any],
            batch: Batch, *, train: bool = False, **apply_kwargs: Any
            ) -> tuple[Any, dict[str, Any]]:
  """`(output, aux)` of `model` on `batch`: `family.forward`, or by batch keys for None.

  The one forward pass of evaluation, the training loop's predictions and `select`.
  """
  if isinstance(family, str):
    family = get(family)
  args, kwargs = (batch_inputs if family is None else family.inputs)(batch)
  return output_and_aux(model.apply(variables, *args, train=train, **kwargs, **apply_kwargs))


def output_and_aux(out: Any) -> tuple[Any, dict[str, Any]]:
  """A model's return value as `(output, aux)`: our models return that pair; a model
  returning one array has aux {}."""
  return out if isinstance(out, tuple) else (out, {})
