"""Optimizers and learning-rate schedules, built from optax.

    opt = make_optimizer("adamw", learning_rate=1e-3, weight_decay=0.01, warmup_steps=100,
                         total_steps=1000, freeze=["embeddings/.*"],
                         lr_mults={"encoder/.*": 0.1})
    state = create_train_state(variables, opt.tx, rng)   # opt.lr_fn(step) for logging

Parameters are selected by regexes fullmatched against '/'-joined paths *inside* the params
collection (`layer4_1/conv2/kernel`, `encoder/layer_0/attention/query/bias`), as everywhere in
the project (`jaxpretrain.params`). The transformation is, in order:

  frozen params (`freeze`)  -> updates set to zero, no optimizer state (optax.set_to_zero)
  the others                -> clip by global norm (over trainable grads)
                            -> sgd (torch semantics: L2 decay added to the gradient, then
                               momentum) or adamw (decoupled decay, lr-scaled as torch)
                            -> times the first matching lr multiplier (`lr_mults`)
  everything wrapped in optax.MultiSteps when `accum_steps > 1` (mean over micro-batches).

Weight decay skips `no_decay` paths (biases and norm scales by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpretrain import params as params_lib

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
# Flax names biases "bias" and LayerNorm/BatchNorm gains "scale"; neither is decayed (BERT,
# ViT and timm recipes exclude them).
NO_DECAY = (r"(.*/)?bias", r"(.*/)?scale")


class Optimizer(NamedTuple):
  tx: optax.GradientTransformation
  lr_fn: optax.Schedule  # base learning rate at train step `step` (micro-steps counted)


def make_schedule(schedule: str, *, learning_rate: float, warmup_steps: int = 0,
                  total_steps: int | None = None, end_lr_factor: float = 0.0
                  ) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then constant, cosine or linear decay.

  Args:
    schedule: 'constant' | 'cosine' | 'linear'.
    learning_rate: the peak learning rate.
    warmup_steps: steps of linear warmup (lr 0 at step 0).
    total_steps: optimizer steps of the run (warmup included); needed to decay.
    end_lr_factor: the final lr as a fraction of the peak, for cosine and linear.
  Returns:
    step -> float32 learning rate.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule '{schedule}'; known: {list(SCHEDULES)}")
  _check(learning_rate >= 0, "learning_rate", learning_rate, ">= 0")
  _check(isinstance(warmup_steps, int) and warmup_steps >= 0, "warmup_steps", warmup_steps,
         "an int >= 0")
  _check(0.0 <= end_lr_factor <= 1.0, "end_lr_factor", end_lr_factor, "in [0, 1]")
  if schedule != "constant":
    _check(isinstance(total_steps, int) and total_steps > warmup_steps, "total_steps",
           total_steps, f"an int > warmup_steps={warmup_steps} for schedule '{schedule}'")
  peak, end = learning_rate, learning_rate * end_lr_factor

  def lr_fn(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup_steps, 1)
    if schedule == "constant":
      after = jnp.full_like(step, peak)
    else:
      t = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
      shape = 0.5 * (1.0 + jnp.cos(jnp.pi * t)) if schedule == "cosine" else 1.0 - t
      after = end + (peak - end) * shape
    return jnp.where(step < warmup_steps, warm, after)

  return lr_fn


def make_optimizer(name: str = "adamw", *, learning_rate: float, schedule: str = "constant",
                   warmup_steps: int = 0, total_steps: int | None = None,
                   end_lr_factor: float = 0.0, momentum: float = 0.9, nesterov: bool = False,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0, no_decay: Sequence[str] = NO_DECAY,
                   clip_norm: float | None = None, accum_steps: int = 1,
                   freeze: Sequence[str] = (),
                   lr_mults: Mapping[str, float] | Sequence[tuple[str, float]] = ()
                   ) -> Optimizer:
  """The optimizer and its learning-rate function.

  Args:
    name: 'sgd' (torch.optim.SGD semantics, dampening 0) | 'adamw' (torch.optim.AdamW).
    learning_rate: peak learning rate.
    schedule, warmup_steps, total_steps, end_lr_factor: see `make_schedule`; steps count
      optimizer updates (one per `accum_steps` train steps).
    momentum, nesterov: for sgd (momentum 0 = plain SGD).
    b1, b2, eps: for adamw.
    weight_decay: sgd: L2 added to the gradient; adamw: decoupled, times the lr.
    no_decay: regexes of parameters without weight decay.
    clip_norm: clip the gradient to this global norm (None = no clipping).
    accum_steps: micro-batches per update (optax.MultiSteps, mean of their gradients).
    freeze: regexes of parameters that never change (bit-identical).
    lr_mults: {regex: multiplier} (or pairs, first match wins), e.g. {"backbone/.*": 0.1}.
  Returns:
    Optimizer(tx, lr_fn); `lr_fn(train_step)` is the base lr applied at that step.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer '{name}'; known: {list(OPTIMIZERS)}")
  _check(learning_rate > 0, "learning_rate", learning_rate, "> 0")
  _check(weight_decay >= 0, "weight_decay", weight_decay, ">= 0")
  _check(clip_norm is None or clip_norm > 0, "clip_norm", clip_norm, "None or > 0")
  _check(isinstance(accum_steps, int) and accum_steps >= 1, "accum_steps", accum_steps,
         "an int >= 1")
  schedule_fn = make_schedule(schedule, learning_rate=learning_rate,
                              warmup_steps=warmup_steps, total_steps=total_steps,
                              end_lr_factor=end_lr_factor)
  decay_mask = _decay_mask(no_decay)
  if name == "sgd":
    _check(0 <= momentum < 1, "momentum", momentum, "in [0, 1)")
    _check(not nesterov or momentum > 0, "nesterov", nesterov, "False when momentum is 0")
    base = optax.chain(
        optax.add_decayed_weights(weight_decay, decay_mask) if weight_decay else
        optax.identity(),
        optax.sgd(schedule_fn, momentum=momentum or None, nesterov=nesterov))
  else:
    for key, value in (("b1", b1), ("b2", b2)):
      _check(0 <= value < 1, key, value, "in [0, 1)")
    _check(eps > 0, "eps", eps, "> 0")
    base = optax.adamw(schedule_fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=decay_mask)
  trainable = optax.chain(
      optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity(),
      base,
      scale_by_regex(lr_mults))
  tx = optax.partition({"train": trainable, "frozen": optax.set_to_zero()},
                       _freeze_labels(freeze))
  if accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum_steps).gradient_transformation()
  return Optimizer(tx=tx, lr_fn=lambda step: schedule_fn(jnp.asarray(step) // accum_steps))


def scale_by_regex(mults: Mapping[str, float] | Sequence[tuple[str, float]]
                   ) -> optax.GradientTransformation:
  """Multiplies each update by the multiplier of the first regex matching its path (else 1).

  Fails at `init` when a regex matches no parameter (a typo would silently do nothing).
  """
  rules = list(mults.items()) if isinstance(mults, Mapping) else list(mults)
  for regex, mult in rules:
    _check(mult >= 0, f"lr multiplier for '{regex}'", mult, ">= 0")
  compiled = [(params_lib.compile_patterns(regex)[0], float(mult)) for regex, mult in rules]

  def factors(tree) -> list[float]:
    out = []
    for path in params_lib.tree_paths(tree):
      out.append(next((m for p, m in compiled if p.fullmatch(path)), 1.0))
    return out

  def init_fn(params):
    paths = params_lib.tree_paths(params)
    _require_matches([r for r, _ in rules], paths, "lr_mults")
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    scaled = [u if m == 1.0 else u * jnp.asarray(m, u.dtype)
              for u, m in zip(leaves, factors(updates), strict=True)]
    return jax.tree.unflatten(treedef, scaled), state

  return optax.GradientTransformation(init_fn, update_fn)


def _freeze_labels(freeze: Sequence[str]):
  """params -> tree of 'frozen' | 'train' labels; fails when a regex matches nothing."""
  if isinstance(freeze, str):
    freeze = [freeze]
  compiled = params_lib.compile_patterns(freeze)

  def labels(tree):
    paths = params_lib.tree_paths(tree)
    _require_matches(list(freeze), paths, "freeze")
    flags = ["frozen" if any(p.fullmatch(path) for p in compiled) else "train"
             for path in paths]
    return jax.tree.unflatten(jax.tree.structure(tree), flags)

  return labels


def _decay_mask(no_decay: Sequence[str]):
  """params -> tree of bools, True where weight decay applies."""
  if isinstance(no_decay, str):
    no_decay = [no_decay]
  no_decay = list(no_decay)
  params_lib.compile_patterns(no_decay)  # fail early on a bad regex
  return lambda tree: jax.tree.map(lambda skip: not skip,
                                   params_lib.path_mask(tree, no_decay))


def _require_matches(regexes: Sequence[str], paths: Sequence[str], what: str) -> None:
  for regex in regexes:
    if not any(params_lib.matches(path, regex) for path in paths):
      shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
      raise ValueError(f"{what} regex '{regex}' matches no parameter; paths: {shown}")


def _check(ok: Any, name: str, value: Any, allowed: str) -> None:
  if not ok:
    raise ValueError(f"{name}={value!r}; allowed: {allowed}")
