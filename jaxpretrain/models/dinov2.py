"""DINOv2 (Oquab et al. 2023), with or without registers (Darcet et al. 2024), as Hugging Face's
Dinov2Model and Dinov2WithRegistersModel compute it.

Fields carry the names of Hugging Face's Dinov2Config. Images are NHWC. The network is a pre-LN
ViT whose two branches are each scaled by a learned per-channel LayerScale (`layer_scale1/2`):
patch embedding (conv, kernel = stride = patch_size), a [CLS] token, learned position
embeddings resized bicubically to the image's patch grid (as transformers'
`interpolate_pos_encoding`: plain bicubic for Dinov2Model, antialiased for the with-registers
model), then `num_register_tokens` register tokens after [CLS] (no position embedding), the
encoder and a final LayerNorm. `bool_masked_pos` replaces masked patches by `mask_token`.
Optional head "classification" (Dinov2ForImageClassification): a dense layer on
[final-LN CLS, mean of final-LN patch tokens].

    model = dinov2.build("dinov2_small")
    out, aux = model.apply(variables, images)  # images [b, 224, 224, 3]; out [b, 1 + 256, 384]

Not implemented: SwiGLU MLPs (use_swiglu_ffn, the giant model) and stochastic depth
(drop_path_rate; inference is unaffected).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain.models import registry, vit
from jaxpretrain.models.transformer import Dtype, Encoder, layer_norm

HEADS = (None, "classification")

# Literal variant table citing the facebook/* config.json files; other fields keep the defaults
# of Hugging Face's Dinov2Config (mlp_ratio 4, layer_norm_eps 1e-6, layerscale_value 1.0).
VARIANTS: dict[str, dict[str, Any]] = {
    # Generic entry the Hugging Face port writes with every field from config.json.
    "dinov2": {},
    # facebook/dinov2-small: ViT-S/14, 384 wide, 6 heads, trained at 518 px (37 x 37 patches).
    "dinov2_small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                         image_size=518, patch_size=14),
    # facebook/dinov2-base: ViT-B/14.
    "dinov2_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        image_size=518, patch_size=14),
    # facebook/dinov2-with-registers-small: ViT-S/14 with 4 registers; antialiased resizing.
    "dinov2_with_registers_small": dict(hidden_size=384, num_hidden_layers=12,
                                        num_attention_heads=6, image_size=518, patch_size=14,
                                        num_register_tokens=4, interpolate_antialias=True),
}

_TORCH_AA_BICUBIC_A = -0.5  # torch's antialiased bicubic uses PIL's a = -0.5 (plain: -0.75)


def bicubic_matrix_aa(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch's 1-D antialiased bicubic resize (align_corners=False).

  As aten's `_compute_weights_aa` (UpSampleKernel.cpp): scale = n_in / n_out; output o is
  centred at c = scale * (o + 0.5); when shrinking, the cubic kernel (a = -0.5) is stretched by
  `scale` (support 2 * scale); taps outside the input are dropped and the rest renormalized.
  """
  scale = n_in / n_out
  support = 2.0 * scale if scale >= 1.0 else 2.0
  inv = 1.0 / scale if scale >= 1.0 else 1.0
  a = _TORCH_AA_BICUBIC_A

  def cubic(x):
    x = abs(x)
    if x < 1.0:
      return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2.0:
      return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0

  m = np.zeros((n_out, n_in))
  for o in range(n_out):
    center = scale * (o + 0.5)
    lo = max(int(center - support + 0.5), 0)  # C++ casts truncate toward zero
    hi = min(int(center + support + 0.5), n_in)
    w = np.array([cubic((j - center + 0.5) * inv) for j in range(lo, hi)])
    if w.sum() != 0.0:
      w = w / w.sum()
    m[o, lo:hi] = w
  return m


def resize_pos_embed(pos: jax.Array, grid_in: tuple[int, int], grid_out: tuple[int, int],
                     antialias: bool) -> jax.Array:
  """[1, 1 + gh*gw, d] position embeddings ([CLS] first) resized to another patch grid.

  Plain bicubic is ViT's (`vit.resize_pos_embed`); antialiased bicubic is
  Dinov2WithRegisters'. `pos` itself when the grids agree.
  """
  if not antialias or tuple(grid_in) == tuple(grid_out):
    return vit.resize_pos_embed(pos, grid_in, grid_out)
  cls, grid = pos[:, :1], pos[0, 1:].reshape(*grid_in, -1)
  rows = jnp.asarray(bicubic_matrix_aa(grid_in[0], grid_out[0]), jnp.float32)
  cols = jnp.asarray(bicubic_matrix_aa(grid_in[1], grid_out[1]), jnp.float32)
  out = jnp.einsum("oh,hwd,pw->opd", rows, grid.astype(jnp.float32), cols)
  return jnp.concatenate([cls, out.reshape(1, -1, pos.shape[-1]).astype(pos.dtype)], axis=1)


class Embeddings(nn.Module):
  """Patch embedding, mask token, [CLS], resized position embeddings, registers, dropout."""
  hidden_size: int
  image_size: int | tuple[int, int]
  patch_size: int
  num_register_tokens: int = 0
  use_mask_token: bool = True
  interpolate_antialias: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, images: jax.Array, bool_masked_pos: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """[batch, height, width, channels] -> [batch, 1 + registers + patches, hidden_size]."""
    p, d = self.patch_size, self.hidden_size
    init = nn.initializers.truncated_normal(self.init_std)
    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, kernel_init=init,
                name="patch_embeddings")(images)
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, d)  # row-major patches, as torch's flatten(2).transpose(1, 2)
    if self.use_mask_token:
      mask_token = self.param("mask_token", nn.initializers.zeros, (1, d), self.param_dtype)
      if bool_masked_pos is not None:
        x = jnp.where(bool_masked_pos[..., None].astype(bool), mask_token.astype(x.dtype), x)
    elif bool_masked_pos is not None:
      raise ValueError("bool_masked_pos needs use_mask_token=True")
    grid = tuple(s // p for s in vit._pair(self.image_size))
    cls = self.param("cls_token", init, (1, 1, d), self.param_dtype)
    pos = self.param("position_embeddings", init, (1, 1 + grid[0] * grid[1], d),
                     self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    x = x + resize_pos_embed(pos, grid, (gh, gw), self.interpolate_antialias).astype(x.dtype)
    if self.num_register_tokens:
      reg = self.param("register_tokens", nn.initializers.zeros,
                       (1, self.num_register_tokens, d), self.param_dtype)
      reg = jnp.broadcast_to(reg.astype(x.dtype), (b, self.num_register_tokens, d))
      x = jnp.concatenate([x[:, :1], reg, x[:, 1:]], axis=1)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class Dinov2(nn.Module):
  """DINOv2 backbone (optionally with registers) and optional classification head; NHWC in."""
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  mlp_ratio: float = 4  # MLP width = int(hidden_size * mlp_ratio), as Dinov2MLP
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  layer_norm_eps: float = 1e-6
  image_size: int | tuple[int, int] = 224  # the size the position embeddings were learned for
  patch_size: int = 14
  num_channels: int = 3
  qkv_bias: bool = True
  layerscale_value: float = 1.0
  use_mask_token: bool = True
  num_register_tokens: int = 0  # Dinov2WithRegisters: 4
  interpolate_antialias: bool = False  # Dinov2WithRegisters resizes with antialias=True
  head: str | None = None  # None | "classification"
  num_labels: int = 1000
  initializer_range: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, bool_masked_pos: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes images.

    Args:
      images: [batch, height, width, num_channels]; another size than `image_size` resizes
        the position embeddings (plain or antialiased bicubic, as the source model).
      bool_masked_pos: optional [batch, patches] bools; masked patches become `mask_token`.
      train: enables dropout (needs a 'dropout' rng).
    Returns:
      (out, aux): out is the final-LN hidden state [batch, 1 + registers + patches,
      hidden_size] (head None) or the logits [batch, num_labels]. aux holds "embeddings",
      "layer_{i}" (each layer's output, before the final LayerNorm), "last_hidden_state",
      "pooled" (the final-LN [CLS] token, Hugging Face's pooler_output), "pre_logits"
      ([CLS, mean of patch tokens], [batch, 2 * hidden_size]) and "logits" (with a head).
    """
    if self.head not in HEADS:
      raise ValueError(f"unknown head {self.head!r}; known: {HEADS}")
    if images.shape[-1] != self.num_channels:
      raise ValueError(f"images have {images.shape[-1]} channels (NHWC expected); the model "
                       f"takes num_channels={self.num_channels}")
    x = Embeddings(
        self.hidden_size, self.image_size, self.patch_size, self.num_register_tokens,
        self.use_mask_token, self.interpolate_antialias, self.hidden_dropout_prob,
        dtype=self.dtype, param_dtype=self.param_dtype, init_std=self.initializer_range,
        name="embeddings")(images, bool_masked_pos, train=train)
    aux = {"embeddings": x}
    x, layers = Encoder(
        self.num_hidden_layers, self.num_attention_heads,
        int(self.hidden_size * self.mlp_ratio), pre_norm=True, act=self.hidden_act,
        dropout_rate=self.hidden_dropout_prob,
        attention_dropout_rate=self.attention_probs_dropout_prob,
        layer_norm_eps=self.layer_norm_eps, qkv_bias=self.qkv_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, init_std=self.initializer_range,
        layer_scale=self.layerscale_value, name="encoder",
    )(x, None, train=train)
    aux.update(layers)
    x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="layernorm")(x)
    aux["last_hidden_state"] = x
    aux["pooled"] = x[:, 0]
    patches = x[:, 1 + self.num_register_tokens:]
    aux["pre_logits"] = jnp.concatenate([x[:, 0], patches.mean(axis=1)], axis=-1)
    if self.head is None:
      return x, aux
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.truncated_normal(
                                  self.initializer_range))
    logits = dense(self.num_labels, name="classifier")(aux["pre_logits"])
    aux["logits"] = logits
    return logits, aux


def build(name: str, **kwargs: Any) -> Dinov2:
  """The variant `name` of VARIANTS with fields overridden by `kwargs`."""
  if name not in VARIANTS:
    raise ValueError(f"unknown DINOv2 variant '{name}'; known: {sorted(VARIANTS)}")
  kw = {**VARIANTS[name], **kwargs}
  if isinstance(kw.get("image_size"), list):  # from JSON; fields stay hashable
    kw["image_size"] = tuple(kw["image_size"])
  return Dinov2(**kw)


def dummy_inputs(model: Dinov2, batch: int = 1) -> dict[str, Any]:
  """{"x": zero images [batch, height, width, channels]} at the model's image_size."""
  h, w = vit._pair(model.image_size)
  return {"x": jnp.zeros((batch, h, w, model.num_channels), jnp.float32)}


# What a family descriptor needs (jaxpretrain/models/registry.py, to come), stated once.
FAMILY_INFO = {
    "modality": "image",
    # Regexes over '/'-joined variable paths of the heads a new task replaces.
    "heads": [r"params/classifier/.*"],
    # A classification run builds head="classification" with num_labels = num_classes.
    "num_classes": {"head": "classification", "field": "num_labels"},
    "pooling": "cls",  # features: aux["pooled"], the final-LN [CLS] token
    # facebook/dinov2-* preprocessor_config.json (BitImageProcessor): resize shortest edge to
    # 256 (bicubic), centre crop 224, rescale 1/255, ImageNet mean/std.
    "preprocessing": {"image_size": [224, 224], "mean": [0.485, 0.456, 0.406],
                      "std": [0.229, 0.224, 0.225], "rescale": 1 / 255, "layout": "NHWC"},
}


# The family descriptor (jaxpretrain/models/registry.py). Position embeddings are interpolated
# to any image size, so no constructor field fixes the input size.
FAMILY = registry.register(registry.Family(
    name="dinov2", modality="image", build=build, variants=VARIANTS, dummy_inputs=dummy_inputs,
    heads={"classification": registry.Head(
        patterns=tuple(FAMILY_INFO["heads"]),
        set=lambda kw, n: ({**kw, "head": None} if n is None else
                           {**kw, "head": "classification", "num_labels": n}),
        size=lambda kw: kw.get("num_labels") if kw.get("head") == "classification" else None)},
    # The project's small size rounded up to whole patches (14-pixel patches: 42, 3 x 3),
    # ImageNet statistics (a folder's preprocessor_config.json overrides them on conversion).
    preprocessing=lambda model: {
        "image_size": -(-registry.SMALL_IMAGE_SIZE // model.patch_size) * model.patch_size,
        "mean": registry.IMAGENET_MEAN, "std": registry.IMAGENET_STD},
    ports={"huggingface": "ports.hf_dinov2"},
    hf_model_types=("dinov2", "dinov2_with_registers")))
