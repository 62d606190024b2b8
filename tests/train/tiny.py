"""Tiny models and batches for the training tests (fast to compile on a couple of CPU cores).

Both models follow the project's model contract: `__call__(x, *, train=False) -> (logits,
aux)`, an `axis_name` field for BatchNorm sync under pmap, and `dtype` / `param_dtype`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class TinyCNN(nn.Module):
  """conv3x3 -> BatchNorm -> relu -> mean pool -> dense."""
  num_classes: int = 3
  features: int = 8  # divisible by 8 devices, so fsdp shards conv, bn and head
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: [batch, h, w, c] -> ([batch, num_classes], aux)."""
    x = nn.Conv(self.features, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     axis_name=self.axis_name, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="bn")(x)
    x = nn.relu(x).mean(axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="head")(x)
    return logits, {"pooled": x, "logits": logits}


class TinyMLP(nn.Module):
  """dense(hidden) -> relu -> dropout -> dense; `backbone/` and `head/` for regex tests."""
  num_classes: int = 10
  hidden: int = 32
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """x: [batch, features] (or images, flattened) -> ([batch, num_classes], aux)."""
    x = x.reshape(x.shape[0], -1)
    h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="backbone")(x))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="head")(h)
    return logits, {"pooled": h, "logits": logits}


def image_batch(seed: int, batch: int = 8, size: int = 6, channels: int = 2,
                num_classes: int = 3) -> dict[str, np.ndarray]:
  """A random image batch {"image" f32[b,h,w,c], "label" i32[b], "mask" f32[b] (ones)}."""
  rs = np.random.RandomState(seed)
  return {
      "image": rs.randn(batch, size, size, channels).astype(np.float32),
      "label": rs.randint(0, num_classes, batch).astype(np.int32),
      "mask": np.ones(batch, np.float32),
  }


def init(model: nn.Module, batch: dict[str, np.ndarray], seed: int = 0):
  """The model's variables for inputs shaped like `batch["image"]`."""
  return model.init(jax.random.key(seed), jnp.asarray(batch["image"][:1]), train=False)
