"""Pure train and eval steps, the same function for one device, a mesh (jit) and pmap.

    step = functools.partial(train_step, model=model, tx=opt.tx, loss_fn=loss_fn,
                             lr_fn=opt.lr_fn)
    state, metrics = jax.jit(step)(state, batch)

The loss is a mean over the *global* batch: the loss function gives a weighted sum and a
count, and the gradient is that of `sum / global_count`. Under `pmap` (`axis_name` set) each
device divides its own sum by the count summed over devices and the gradients are summed, so
any split of the batch (and any padding, weight 0) gives the single-device result.

Mixed precision: models take `dtype` (compute, e.g. bfloat16) and `param_dtype` (float32
master weights) fields; the step keeps parameters, gradients and optimizer state in the
parameters' dtype and computes softmax and the loss in float32 (`losses`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpretrain.models import registry
from jaxpretrain.train import kinds, losses
from jaxpretrain.train.state import TrainState

Batch = Mapping[str, Any]
InputsFn = Callable[[Batch], tuple[tuple, dict]]

# Compute dtypes by flag name; parameters stay float32 (see module docstring).
DTYPES = {name: getattr(jnp, name) for name in kinds.DTYPES}


def compute_dtype(name: str) -> jnp.dtype:
  """'float32' | 'bfloat16' -> the dtype to build models with (`dtype=`)."""
  if name not in DTYPES:
    raise ValueError(f"unknown compute dtype '{name}'; known: {sorted(DTYPES)}")
  return DTYPES[name]


def model_inputs(batch: Batch) -> tuple[tuple, dict]:
  """Positional and keyword model inputs of an image or text batch, told apart by its keys.

  The default `inputs_fn` when no family is known; a run passes its family's
  (`registry.Family.inputs`). Images: `(batch["image"],)`. Text: `(batch["input_ids"],)` plus
  `attention_mask` and `token_type_ids` when present.
  """
  return registry.batch_inputs(batch)


def _logits(outputs: Any) -> jax.Array:
  """Our models return (output, aux dict); bare outputs are accepted too."""
  return registry.output_and_aux(outputs)[0]


def _psum(tree: Any, axis_name: str | None) -> Any:
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def step_rng(state: TrainState, axis_name: str | None = None) -> jax.Array:
  """This step's key: fold_in(rng, step), and the device index under pmap."""
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  return rng


def train_step(state: TrainState, batch: Batch, *, model: nn.Module,
               tx: optax.GradientTransformation, loss_fn: losses.LossFn,
               lr_fn: optax.Schedule | None = None, axis_name: str | None = None,
               batch_fn: Callable[[jax.Array, Batch], Batch] | None = None,
               inputs_fn: InputsFn = model_inputs) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step (or one accumulation micro-step with optax.MultiSteps).

  Args:
    state: the current state.
    batch: dict of arrays with leading dim [batch] (per device under pmap); optional "mask"
      [batch] weights examples (0 = padding).
    model: a Flax module whose `__call__(*inputs, train=..., **kw)` returns (logits, aux).
    tx: the optimizer.
    loss_fn: `(logits, batch) -> {name: (sum, count)}` with a "loss" entry (losses.py).
    lr_fn: the learning rate by step, reported as the "lr" metric.
    axis_name: the pmap axis to sum gradients and metrics over; None under jit.
    batch_fn: `(rng, batch) -> batch` run inside the step, e.g. `losses.mask_batch(...)`.
    inputs_fn: `batch -> (args, kwargs)` for the model.
  Returns:
    (new state, metrics): float32 scalars "loss", every other loss_fn entry (e.g.
    "accuracy"), "lr", "grad_norm", "update_norm", "param_norm"; the same on every device.
  """
  rng_batch, rng_dropout = jax.random.split(step_rng(state, axis_name))
  if batch_fn is not None:
    batch = batch_fn(rng_batch, batch)
  args, kwargs = inputs_fn(batch)
  has_bn = bool(jax.tree.leaves(state.batch_stats))

  def objective(params):
    variables = {"params": params}
    if has_bn:
      variables["batch_stats"] = state.batch_stats
      out, updated = model.apply(variables, *args, train=True, rngs={"dropout": rng_dropout},
                                 mutable=["batch_stats"], **kwargs)
    else:
      out, updated = model.apply(variables, *args, train=True, rngs={"dropout": rng_dropout},
                                 **kwargs), {}
    stats = loss_fn(_logits(out), batch)
    total, count = stats["loss"]
    global_count = _psum(count, axis_name)
    return total / jnp.maximum(global_count, 1e-12), (stats, updated)

  grads, (stats, updated) = jax.grad(objective, has_aux=True)(state.params)
  grads, stats = _psum((grads, stats), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(
      params=params, batch_stats=updated.get("batch_stats", state.batch_stats),
      opt_state=opt_state, step=state.step + 1)
  metrics = {k: total / jnp.maximum(count, 1e-12) for k, (total, count) in stats.items()}
  metrics.update(
      lr=jnp.asarray(lr_fn(state.step) if lr_fn is not None else jnp.nan, jnp.float32),
      grad_norm=optax.tree.norm(grads),
      update_norm=optax.tree.norm(updates),
      param_norm=optax.tree.norm(params),
  )
  return new_state, metrics


def eval_step(state: TrainState, batch: Batch, *, model: nn.Module, loss_fn: losses.LossFn,
              axis_name: str | None = None, inputs_fn: InputsFn = model_inputs
              ) -> losses.Stats:
  """Sums and counts of the loss function's entries on one batch (inference mode).

  Add them over batches with `losses.add_stats` and divide once with `losses.finalize`, so a
  padded last batch (mask 0) counts each real example exactly once.

  Returns:
    {name: (sum, count)} float32 scalars, summed over devices under pmap.
  """
  args, kwargs = inputs_fn(batch)
  out = model.apply(state.variables, *args, train=False, **kwargs)
  return _psum(loss_fn(_logits(out), batch), axis_name)


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
  """Raises FloatingPointError when the (host) loss is NaN or infinite."""
  loss = float(np.asarray(metrics["loss"]))
  if not math.isfinite(loss):
    raise FloatingPointError(
        f"non-finite loss {loss} at step {step}; metrics: "
        f"{ {k: float(np.asarray(v)) for k, v in metrics.items()} }")
