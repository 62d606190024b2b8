"""The Transformer encoder shared by BERT and DistilBERT (post-LN), ViT, DINOv2 and CLIP (pre-LN).

One block serves both families; `pre_norm` picks the LayerNorm placement:

  post-LN (BERT, Devlin et al. 2019):  x = LN(x + Drop(Attn(x)));  x = LN(x + Drop(MLP(x)))
  pre-LN  (ViT, Dosovitskiy et al. 2021): x = x + Drop(Attn(LN(x)));  x = x + Drop(MLP(LN(x)))

Parameter names are the same in both orders, so one port rule set covers the block:
`attention/{query,key,value,out}`, `attention_norm` (the LayerNorm of the attention
sub-layer: after it in BERT, before it in ViT), `mlp/fc1`, `mlp/fc2`, `mlp_norm`.
Projections are plain [in, out] Dense kernels, so a torch Linear weight needs only a transpose.
Options, each off by default: `layer_scale` (DINOv2's LayerScale, Touvron et al. 2021: each
pre-LN branch times a learned per-channel `layer_scale1` / `layer_scale2`), `causal` (CLIP's
text tower), and the "quick_gelu" activation (CLIP).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.models import ops

Dtype = Any

# Hugging Face `hidden_act` names -> functions. "gelu" is the exact erf form (torch's
# default); "gelu_new" and "gelu_pytorch_tanh" are the tanh approximation.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "tanh": jnp.tanh,
    # CLIP's QuickGELUActivation: x * sigmoid(1.702 x) (Radford et al. 2021, OpenAI's code).
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function Hugging Face calls `name`."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation '{name}'; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def dot_2d(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
           preferred_element_type=None) -> jax.Array:
  """`lax.dot_general` for `nn.Dense(dot_general=dot_2d)`: [..., in] @ [in, out] as a 2-D matmul.

  On a CPU the leading dimensions are flattened first. Differentiating the N-D contraction,
  XLA's CPU backend copies the activation gradients into transposed layouts for the weight
  gradients; the 2-D form needs no copy (CPU time of a BERT-base MLP's gradient: 1.57x as much
  in 3-D; benchmarks/NOTES.md). Other platforms get the plain contraction (`ops`). Same
  parameters, same values.
  """
  (lc, rc), (lb, rb) = dimension_numbers
  kw = dict(precision=precision, preferred_element_type=preferred_element_type)

  def plain(lhs, rhs):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, **kw)

  if lhs.ndim > 2 and rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) \
      and not lb and not rb:
    def flat(lhs, rhs):
      out = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())),
                                **kw)
      return out.reshape(*lhs.shape[:-1], rhs.shape[-1])
    return ops.cpu_or_default(flat, plain, lhs, rhs)
  return plain(lhs, rhs)


def dense_dot(cpu_forms: bool = True) -> Callable:
  """`nn.Dense`'s `dot_general`: `dot_2d` with the CPU forms, the plain contraction without."""
  return dot_2d if cpu_forms else jax.lax.dot_general


def additive_mask(mask: jax.Array | None) -> jax.Array | None:
  """A padding mask [batch, seq] (1 = token, 0 = padding) -> additive [batch, 1, 1, seq].

  Padded keys get the most negative float32, as Hugging Face's eager attention does, so
  their softmax weight is exactly zero and no row is ever NaN (even an all-padding one).
  """
  if mask is None:
    return None
  neg = jnp.finfo(jnp.float32).min
  return jnp.where(mask[:, None, None, :].astype(bool), 0.0, neg).astype(jnp.float32)


def attention_bias(mask: jax.Array | None, seq: int, causal: bool = False) -> jax.Array | None:
  """A padding mask [batch, seq] or None, optionally causal -> additive [batch|1, 1, seq, seq].

  A key is hidden (most negative float32, once, however many reasons) when it is padding or,
  with `causal`, after the query: transformers' create_causal_mask with a padding mask.
  """
  if not causal:
    return additive_mask(mask)
  allowed = jnp.tril(jnp.ones((seq, seq), bool))[None, None]  # [1, 1, q, k]
  if mask is not None:
    allowed = allowed & mask[:, None, None, :].astype(bool)
  return jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str | None = None
               ) -> nn.LayerNorm:
  """A LayerNorm computed as torch computes it (`name` None inside `setup`)."""
  # Two-pass variance (E[(x - mean)^2]) as torch computes it; Flax's fast E[x^2] - mean^2
  # loses digits when the mean is large relative to the spread.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, name=name)


class SelfAttention(nn.Module):
  """Multi-head self-attention with separate query/key/value/out projections."""
  num_heads: int
  dropout_rate: float = 0.0  # on the attention probabilities
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02  # normal(0, initializer_range), as BERT and ViT initialize
  cpu_forms: bool = True  # Dense layers as 2-D matmuls on a CPU (`dot_2d`); False: plain

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """[batch, seq, dim], additive mask [batch, 1, 1, seq] -> [batch, seq, dim]."""
    b, s, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"hidden size {d} is not a multiple of num_heads {self.num_heads}")
    hd = d // self.num_heads
    dense = functools.partial(
        nn.Dense, d, dtype=self.dtype, param_dtype=self.param_dtype,
        dot_general=dense_dot(self.cpu_forms), kernel_init=nn.initializers.normal(self.init_std))
    split = lambda t: t.reshape(b, s, self.num_heads, hd)
    q = split(dense(use_bias=self.qkv_bias, name="query")(x))  # [b, s, h, hd]
    k = split(dense(use_bias=self.qkv_bias, name="key")(x))
    v = split(dense(use_bias=self.qkv_bias, name="value")(x))
    # Scaling q (b*s*d multiplies) equals scaling the logits (b*h*s*s) up to rounding.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(hd**-0.5, q.dtype), k)
    # Softmax in float32 whatever the compute dtype (bf16 logits lose the small weights).
    logits = logits.astype(jnp.float32)
    if mask is not None:
      logits = logits + mask
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=not train)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v).reshape(b, s, d)
    return dense(name="out")(y)


class Mlp(nn.Module):
  """fc1 -> activation -> fc2."""
  mlp_dim: int
  act: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02
  cpu_forms: bool = True  # Dense layers as 2-D matmuls on a CPU (`dot_2d`); False: plain

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[..., dim] -> [..., dim]."""
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              dot_general=dense_dot(self.cpu_forms),
                              kernel_init=nn.initializers.normal(self.init_std))
    h = activation(self.act)(dense(self.mlp_dim, name="fc1")(x))
    return dense(x.shape[-1], name="fc2")(h)


class EncoderBlock(nn.Module):
  """One Transformer encoder layer, post-LN (BERT) or pre-LN (ViT)."""
  num_heads: int
  mlp_dim: int
  pre_norm: bool = False  # False: BERT post-LN; True: ViT pre-LN
  act: str = "gelu"  # Hugging Face hidden_act: "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu"
  dropout_rate: float = 0.0  # hidden_dropout_prob
  attention_dropout_rate: float = 0.0  # attention_probs_dropout_prob
  layer_norm_eps: float = 1e-12
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02
  layer_scale: float | None = None  # DINOv2's LayerScale init value; None: no layer scale
  cpu_forms: bool = True  # Dense layers as 2-D matmuls on a CPU (`dot_2d`); False: plain

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    """[batch, seq, dim], additive mask [batch|1, 1, 1|seq, seq] or None -> [batch, seq, dim]."""
    norm = functools.partial(layer_norm, self.layer_norm_eps, self.dtype, self.param_dtype)
    drop = lambda t: nn.Dropout(self.dropout_rate)(t, deterministic=not train)
    attn = SelfAttention(
        self.num_heads, self.attention_dropout_rate, self.qkv_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, init_std=self.init_std, cpu_forms=self.cpu_forms,
        name="attention")
    mlp = Mlp(self.mlp_dim, self.act, dtype=self.dtype, param_dtype=self.param_dtype,
              init_std=self.init_std, cpu_forms=self.cpu_forms, name="mlp")
    attn_norm, mlp_norm = norm(name="attention_norm"), norm(name="mlp_norm")
    if self.pre_norm:
      scale1, scale2 = self._layer_scales(x.shape[-1])
      x = x + drop(scale1(attn(attn_norm(x), mask, train=train)))
      return x + drop(scale2(mlp(mlp_norm(x))))
    if self.layer_scale is not None:
      raise ValueError("layer_scale needs pre_norm=True (DINOv2's block)")
    x = attn_norm(x + drop(attn(x, mask, train=train)))
    return mlp_norm(x + drop(mlp(x)))

  def _layer_scales(self, dim: int):
    """(attention, MLP) output scalings: DINOv2's LayerScale `x * lambda1`, or identities."""
    if self.layer_scale is None:
      return (lambda t: t), (lambda t: t)
    init = nn.initializers.constant(self.layer_scale)
    scales = [self.param(n, init, (dim,), self.param_dtype) for n in ("layer_scale1",
                                                                       "layer_scale2")]
    return tuple((lambda t, g=g: t * g.astype(t.dtype)) for g in scales)


class Encoder(nn.Module):
  """A stack of `num_layers` EncoderBlocks named `layer_{i}`."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  pre_norm: bool = False
  act: str = "gelu"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-12
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02
  layer_scale: float | None = None  # DINOv2's LayerScale init value; None: no layer scale
  causal: bool = False  # True: a query sees only keys at or before it (CLIP's text tower)
  cpu_forms: bool = True  # Dense layers as 2-D matmuls on a CPU (`dot_2d`); False: plain

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs every layer.

    Args:
      x: [batch, seq, dim] embeddings.
      mask: [batch, seq] padding mask (1 = token, 0 = padding), or None for no padding.
      train: enables dropout (needs a 'dropout' rng).
    Returns:
      (the last layer's output [batch, seq, dim], {"layer_{i}": each layer's output}).
    """
    bias = attention_bias(mask, x.shape[1], self.causal)
    hidden = {}
    for i in range(self.num_layers):
      x = EncoderBlock(
          self.num_heads, self.mlp_dim, self.pre_norm, self.act, self.dropout_rate,
          self.attention_dropout_rate, self.layer_norm_eps, self.qkv_bias, dtype=self.dtype,
          param_dtype=self.param_dtype, init_std=self.init_std, layer_scale=self.layer_scale,
          cpu_forms=self.cpu_forms,
          name=f"layer_{i}",
      )(x, bias, train=train)
      hidden[f"layer_{i}"] = x
    return x, hidden
