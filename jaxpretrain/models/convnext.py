"""ConvNeXt tiny/small/base/large with torchvision semantics (NHWC).

Mirrors `torchvision.models.convnext` (v0.29) so that its state dicts convert by name:

  features_0_0 / features_0_1   stem: 4x4 conv, stride 4, with bias; LayerNorm2d
  features_{s}_{j}              CNBlock j of stage s (s = 1, 3, 5, 7): block_0 depthwise 7x7
                                conv (padded 3, bias), block_2 LayerNorm, block_3 / block_5
                                Linear (4x expansion, exact GELU between), `layer_scale` [dim]
  features_{s}_0 / features_{s}_1   downsample (s = 2, 4, 6): LayerNorm2d, 2x2 conv stride 2
  classifier_0 / classifier_2   LayerNorm2d on the pooled features, Linear

Every LayerNorm normalizes over channels with eps 1e-6 (torchvision's `partial(LayerNorm2d,
eps=1e-6)`), two-pass variance as torch. Each block's residual branch is scaled by
`layer_scale` (init 1e-6) and, in training, dropped per sample with torchvision's
StochasticDepth(p, "row"): p rises linearly over blocks from 0 to `stochastic_depth_prob`;
a kept branch is divided by 1 - p. The masks draw from the 'dropout' rng collection, the one
train steps pass (`rngs={"dropout": key}`).

    model = build("convnext_tiny")
    logits, aux = model.apply(variables, x)   # aux: stem, stage1..4, pooled, pre_logits, logits
    logits, aux = model.apply(variables, x, train=True, rngs={"dropout": key})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.models import registry

Dtype = Any

# torchvision.models.convnext: CNBlockConfig(input_channels, out_channels, num_layers) per
# stage as (dims, depths), and each builder's default stochastic_depth_prob.
VARIANTS: dict[str, dict[str, Any]] = {
    "convnext_tiny": dict(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3),
                          stochastic_depth_prob=0.1),
    "convnext_small": dict(dims=(96, 192, 384, 768), depths=(3, 3, 27, 3),
                           stochastic_depth_prob=0.4),
    "convnext_base": dict(dims=(128, 256, 512, 1024), depths=(3, 3, 27, 3),
                          stochastic_depth_prob=0.5),
    "convnext_large": dict(dims=(192, 384, 768, 1536), depths=(3, 3, 27, 3),
                           stochastic_depth_prob=0.5),
}

LN_EPSILON = 1e-6
# torchvision: trunc_normal_(std=0.02) with torch's default cut at +-2 (absolute, i.e. 100
# standard deviations): a plain normal in practice. Biases zero.
init = nn.initializers.normal(0.02)


def stochastic_depth(x: jax.Array, p: float, train: bool, module: nn.Module) -> jax.Array:
  """torchvision.ops.stochastic_depth(x, p, "row", train): one keep/drop per sample."""
  if not train or p == 0.0:
    return x
  keep = 1.0 - p
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
  return x * mask.astype(x.dtype) / keep if keep > 0 else x * 0


class _Parts(nn.Module):
  """Shared fields and constructors."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def layer_norm(self, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, use_fast_variance=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=name)

  def conv(self, features: int, kernel: int, stride: int, pad: int, groups: int = 1, *,
           name: str) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)),
                   feature_group_count=groups, kernel_init=init, dtype=self.dtype,
                   param_dtype=self.param_dtype, name=name)

  def dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=name)


class CNBlock(_Parts):
  """torchvision CNBlock: dwconv 7x7, LayerNorm, Linear 4x, GELU, Linear, layer scale."""
  layer_scale: float = 1e-6
  stochastic_depth_prob: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [batch, h, w, dim] -> same shape."""
    dim = x.shape[-1]
    y = self.conv(dim, 7, 1, 3, groups=dim, name="block_0")(x)
    y = self.layer_norm("block_2")(y)
    y = self.dense(4 * dim, "block_3")(y)
    y = nn.gelu(y, approximate=False)  # torch.nn.GELU(): exact erf form
    y = self.dense(dim, "block_5")(y)
    scale = self.param("layer_scale", nn.initializers.constant(self.layer_scale), (dim,),
                       self.param_dtype)
    y = y * scale.astype(y.dtype)
    return x + stochastic_depth(y, self.stochastic_depth_prob, train, self)


class ConvNeXt(_Parts):
  """torchvision ConvNeXt on NHWC images."""
  dims: Sequence[int] = (96, 192, 384, 768)  # channels of stages 1..4
  depths: Sequence[int] = (3, 3, 9, 3)  # blocks of stages 1..4
  num_classes: int | None = 1000  # None: no classifier_2; the output is pre_logits
  stochastic_depth_prob: float = 0.0  # of the last block; training only
  layer_scale: float = 1e-6  # initial value of every block's layer_scale

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Runs the network.

    Args:
      x: [batch, height, width, 3] images (height, width multiples of 32 keep every pixel).
      train: stochastic depth on (needs rngs={"dropout": key} when stochastic_depth_prob > 0).
    Returns:
      (out, aux): out is logits [batch, num_classes], or pre_logits [batch, dims[-1]] when
      num_classes is None. aux: stem [batch, h/4, w/4, dims[0]], stage1..stage4 (NHWC),
      pooled (mean over space), pre_logits (pooled after classifier_0's LayerNorm), logits.
    """
    if len(self.dims) != len(self.depths):
      raise ValueError(f"dims {list(self.dims)} and depths {list(self.depths)} differ in length")
    aux = {}
    x = self.conv(self.dims[0], 4, 4, 0, name="features_0_0")(x)
    x = aux["stem"] = self.layer_norm("features_0_1")(x)
    total, block_id = sum(self.depths), 0
    for i, depth in enumerate(self.depths):
      s = 2 * i + 1  # index of the stage in torchvision's `features`
      for j in range(depth):
        # torchvision: sd_prob = stochastic_depth_prob * stage_block_id / (total - 1.0)
        p = self.stochastic_depth_prob * block_id / max(total - 1.0, 1.0)
        x = CNBlock(layer_scale=self.layer_scale, stochastic_depth_prob=p, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f"features_{s}_{j}")(x, train=train)
        block_id += 1
      aux[f"stage{i + 1}"] = x
      if i + 1 < len(self.dims):
        x = self.layer_norm(f"features_{s + 1}_0")(x)
        x = self.conv(self.dims[i + 1], 2, 2, 0, name=f"features_{s + 1}_1")(x)
    x = aux["pooled"] = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1)
    x = aux["pre_logits"] = self.layer_norm("classifier_0")(x)
    if self.num_classes is None:
      return x, aux
    x = aux["logits"] = self.dense(self.num_classes, "classifier_2")(x)
    return x, aux


def build(name: str, **kwargs: Any) -> ConvNeXt:
  """The ConvNeXt variant `name` with its defaults overridden by `kwargs` (config.json values)."""
  if name not in VARIANTS:
    raise ValueError(f"unknown ConvNeXt variant '{name}'; known: {sorted(VARIANTS)}")
  config = {**VARIANTS[name], **kwargs}
  config["dims"] = tuple(int(d) for d in config["dims"])
  config["depths"] = tuple(int(d) for d in config["depths"])
  for key in ("dtype", "param_dtype"):
    if isinstance(config.get(key), str):
      config[key] = jnp.dtype(config[key])
  return ConvNeXt(**config)


def dummy_inputs(model: ConvNeXt, batch: int = 1) -> dict[str, Any]:
  """32x32 images: the stem and three downsamples (x32) leave stage4 at 1x1."""
  del model
  return {"x": jnp.zeros((batch, 32, 32, 3), jnp.float32)}


# What the family descriptor (models/registry.py) needs, stated here so that registering
# ConvNeXt is mechanical. A new num_classes replaces classifier_2 only (classifier_0, the
# LayerNorm of the pooled features, keeps its pretrained values).
FAMILY_INFO = {
    "modality": "image",
    "head_patterns": [r"params/classifier_2/.*"],
    "num_classes_kwarg": "num_classes",  # None: no classifier_2, out = pre_logits
    "select_features": "pre_logits",  # what classifier_2 sees ("pooled": before the LayerNorm)
    # torchvision ConvNeXt_Tiny_Weights.IMAGENET1K_V1: ImageClassification(crop_size=224,
    # resize_size=236), bilinear (small 230, base and large 232), ImageNet mean / std.
    "preprocessing": {
        "image_size": 224, "resize_size": 236, "interpolation": "bilinear", "layout": "NHWC",
        "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    },
    "resize_size_by_variant": {"convnext_tiny": 236, "convnext_small": 230,
                               "convnext_base": 232, "convnext_large": 232},
    "port": "ports.torchvision_convnext",
}


def _pool(aux, batch, pooling):
  """What classifier_2 sees: the LayerNorm-ed global average (aux["pre_logits"])."""
  del batch, pooling  # images: one pooling
  return aux["pre_logits"].astype(jnp.float32)


# The family descriptor (jaxpretrain/models/registry.py); FAMILY_INFO above keeps the
# torchvision eval transforms the port records.
FAMILY = registry.register(registry.Family(
    name="convnext", modality="image", build=build, variants=VARIANTS,
    dummy_inputs=dummy_inputs,
    heads={"classification": registry.Head(
        patterns=(r"params/classifier_2/.*",),
        set=lambda kw, n: {**kw, "num_classes": n},
        size=lambda kw: kw.get("num_classes", 1000))},
    pool=_pool,
    preprocessing={"image_size": registry.SMALL_IMAGE_SIZE, "mean": registry.IMAGENET_MEAN,
                   "std": registry.IMAGENET_STD},
    ports={"torchvision": "ports.torchvision_convnext"}))
