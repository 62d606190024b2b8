"""Vision Transformer (Dosovitskiy et al. 2021) as Hugging Face's ViTModel computes it.

Fields carry the names of Hugging Face's ViTConfig. Images are NHWC. The patch embedding is a
conv with kernel = stride = patch_size and no padding (torch drops a remainder, as VALID does),
a [CLS] token is prepended, learned position embeddings are added (bicubically resized, as
transformers' `interpolate_pos_encoding`, when the image size differs from `image_size`), then
a pre-LN encoder and a final LayerNorm. Optional: the pooler (dense + tanh on [CLS], ViTModel's
add_pooling_layer) and a classification head on the final-LN [CLS] token
(ViTForImageClassification).

    model = vit.build("vit_base_patch16_224")
    logits, aux = model.apply(variables, images)  # images [b, 224, 224, 3]
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain.models import registry
from jaxpretrain.models.transformer import Dtype, Encoder, activation, layer_norm

HEADS = (None, "classification")

# Literal variant table; every other field keeps the ViT default (ViT-B/16 at 224).
VARIANTS: dict[str, dict[str, Any]] = {
    # Generic entry the Hugging Face port writes with every field from config.json.
    "vit": {},
    # google/vit-base-patch16-224: ViT-B/16 (Dosovitskiy et al. 2021, Table 1), ImageNet-1k head.
    "vit_base_patch16_224": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, image_size=224, patch_size=16,
                                 head="classification", num_labels=1000),
    # google/vit-base-patch16-224-in21k: the ImageNet-21k backbone, ViTModel with its pooler.
    "vit_base_patch16_224_in21k": dict(hidden_size=768, num_hidden_layers=12,
                                       num_attention_heads=12, intermediate_size=3072,
                                       image_size=224, patch_size=16, pooler=True),
}

_TORCH_BICUBIC_A = -0.75  # torch's upsample_bicubic2d coefficient (Keys' a; PIL uses -0.5)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch's 1-D bicubic resize (align_corners=False, no antialias).

  torch maps output index o to source x = (o + 0.5) * n_in / n_out - 0.5, takes the four
  neighbours floor(x) - 1 .. floor(x) + 2 clamped to the border, and weighs them with the cubic
  convolution kernel; 2-D bicubic is this applied along each axis.
  """
  a = _TORCH_BICUBIC_A
  near = lambda t: ((a + 2) * t - (a + 3)) * t * t + 1  # |t| <= 1
  far = lambda t: ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # 1 < |t| < 2
  m = np.zeros((n_out, n_in))
  for o in range(n_out):
    x = (o + 0.5) * n_in / n_out - 0.5
    x0 = math.floor(x)
    t = x - x0
    for k, w in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
      m[o, min(max(x0 - 1 + k, 0), n_in - 1)] += w
  return m


def resize_pos_embed(pos: jax.Array, grid_in: tuple[int, int],
                     grid_out: tuple[int, int]) -> jax.Array:
  """Resizes [1, 1 + gh*gw, d] position embeddings (class token first) to a new patch grid.

  Args:
    pos: [1, 1 + grid_in[0] * grid_in[1], dim] embeddings, [CLS] first, then rows of patches.
    grid_in: the (rows, cols) patch grid `pos` was learned for.
    grid_out: the (rows, cols) patch grid of the current image.
  Returns:
    [1, 1 + grid_out[0] * grid_out[1], dim]; `pos` itself when the grids agree.
  """
  if tuple(grid_in) == tuple(grid_out):
    return pos
  cls, grid = pos[:, :1], pos[0, 1:].reshape(*grid_in, -1)  # [gh, gw, d]
  rows = jnp.asarray(bicubic_matrix(grid_in[0], grid_out[0]), jnp.float32)
  cols = jnp.asarray(bicubic_matrix(grid_in[1], grid_out[1]), jnp.float32)
  out = jnp.einsum("oh,hwd,pw->opd", rows, grid.astype(jnp.float32), cols)
  return jnp.concatenate([cls, out.reshape(1, -1, pos.shape[-1]).astype(pos.dtype)], axis=1)


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
  return (x, x) if isinstance(x, int) else tuple(x)


class Embeddings(nn.Module):
  """Patch embedding, [CLS] token and (resized) position embeddings, then dropout."""
  hidden_size: int
  image_size: int | tuple[int, int]
  patch_size: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """[batch, height, width, channels] -> [batch, 1 + patches, hidden_size]."""
    p = self.patch_size
    init = nn.initializers.truncated_normal(self.init_std)
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="patch_embeddings")(images)
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)  # row-major patches, as torch's flatten(2).transpose(1, 2)
    grid = tuple(s // p for s in _pair(self.image_size))
    cls = self.param("cls_token", init, (1, 1, d), self.param_dtype)
    pos = self.param("position_embeddings", init, (1, 1 + grid[0] * grid[1], d),
                     self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    x = x + resize_pos_embed(pos, grid, (gh, gw)).astype(x.dtype)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class ViT(nn.Module):
  """ViT encoder with optional pooler and classification head; NHWC images in."""
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"  # "gelu" (exact) | "gelu_new" | "gelu_pytorch_tanh" | "relu"
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  layer_norm_eps: float = 1e-12
  image_size: int | tuple[int, int] = 224  # the size the position embeddings were learned for
  patch_size: int = 16
  num_channels: int = 3
  qkv_bias: bool = True
  pooler: bool = False  # ViTModel's add_pooling_layer: dense + pooler_act on [CLS]
  pooler_output_size: int | None = None  # None: hidden_size
  pooler_act: str = "tanh"
  head: str | None = None  # None | "classification" (on the final-LN [CLS] token)
  num_labels: int = 1000
  initializer_range: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  cpu_forms: bool = True  # implementation: Dense layers as 2-D matmuls on a CPU (`ops`)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes images.

    Args:
      images: [batch, height, width, num_channels]; a size other than `image_size` resizes
        the position embeddings bicubically.
      train: enables dropout (needs a 'dropout' rng).
    Returns:
      (out, aux): out is the final-LN hidden state [batch, 1 + patches, hidden_size] (head
      None) or the logits [batch, num_labels]. aux holds "embeddings", "layer_{i}" (each
      layer's output, before the final LayerNorm), "last_hidden_state", "pre_logits" (the
      final-LN [CLS] token), "pooled" (with a pooler) and "logits" (with a head).
    """
    if self.head not in HEADS:
      raise ValueError(f"unknown head {self.head!r}; known: {HEADS}")
    if images.shape[-1] != self.num_channels:
      raise ValueError(f"images have {images.shape[-1]} channels (NHWC expected); the model "
                       f"takes num_channels={self.num_channels}")
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.normal(self.initializer_range))
    x = Embeddings(self.hidden_size, self.image_size, self.patch_size, self.hidden_dropout_prob,
                   dtype=self.dtype, param_dtype=self.param_dtype,
                   init_std=self.initializer_range, name="embeddings")(images, train=train)
    aux = {"embeddings": x}
    x, layers = Encoder(
        self.num_hidden_layers, self.num_attention_heads, self.intermediate_size, pre_norm=True,
        act=self.hidden_act, dropout_rate=self.hidden_dropout_prob,
        attention_dropout_rate=self.attention_probs_dropout_prob,
        layer_norm_eps=self.layer_norm_eps, qkv_bias=self.qkv_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, init_std=self.initializer_range,
        cpu_forms=self.cpu_forms, name="encoder",
    )(x, None, train=train)
    aux.update(layers)
    x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="final_norm")(x)
    aux["last_hidden_state"] = x
    aux["pre_logits"] = x[:, 0]
    if self.pooler:
      size = self.pooler_output_size or self.hidden_size
      aux["pooled"] = activation(self.pooler_act)(dense(size, name="pooler")(x[:, 0]))
    if self.head is None:
      return x, aux
    logits = dense(self.num_labels, name="classifier")(x[:, 0])  # [b, num_labels]
    aux["logits"] = logits
    return logits, aux


def build(name: str, **kwargs: Any) -> ViT:
  """The variant `name` of VARIANTS with fields overridden by `kwargs`."""
  if name not in VARIANTS:
    raise ValueError(f"unknown ViT variant '{name}'; known: {sorted(VARIANTS)}")
  kw = {**VARIANTS[name], **kwargs}
  if isinstance(kw.get("image_size"), list):  # from JSON; fields stay hashable
    kw["image_size"] = tuple(kw["image_size"])
  return ViT(**kw)


def dummy_inputs(model: ViT, batch: int = 1) -> dict[str, Any]:
  """{"x": zero images [batch, height, width, channels]} at the model's image_size."""
  h, w = _pair(model.image_size)
  return {"x": jnp.zeros((batch, h, w, model.num_channels), jnp.float32)}


# ------------------------------------------------------------------------------------------
# The family descriptor (jaxpretrain/models/registry.py).
# ------------------------------------------------------------------------------------------

FAMILY = registry.register(registry.Family(
    name="vit", modality="image", build=build, variants=VARIANTS, dummy_inputs=dummy_inputs,
    # ViTForImageClassification: the classifier reads the final-LN [CLS] token.
    heads={"classification": registry.Head(
        patterns=("params/classifier/.*",),
        set=lambda kw, n: ({**kw, "head": None} if n is None else
                           {**kw, "head": "classification", "num_labels": n}),
        size=lambda kw: kw.get("num_labels") if kw.get("head") == "classification" else None)},
    fresh_when_added={"pooler": ("params/pooler/.*",)},
    # The position embeddings fix the input size; random-init models use ImageNet statistics
    # (a Hugging Face folder's preprocessor_config.json overrides them on conversion).
    size_kwarg="image_size",
    preprocessing=lambda model: {"image_size": model.image_size, "mean": registry.IMAGENET_MEAN,
                                 "std": registry.IMAGENET_STD},
    ports={"huggingface": "ports.hf_vit"}, hf_model_types=("vit",)))
