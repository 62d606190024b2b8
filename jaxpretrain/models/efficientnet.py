"""EfficientNet B0-B7 (torchvision) and EfficientNet-Lite0-4 (NHWC).

Mirrors `torchvision.models.efficientnet` (v0.29) so that its state dicts convert by name:

  features_0/conv, features_0/bn      stem: 3x3 conv stride 2, BatchNorm, activation
  features_{s}_{j}                    MBConv j of stage s (1..7), submodules as torchvision's
                                      `block` Sequential: block_{b}/conv + block_{b}/bn
                                      (expand 1x1 if expand_ratio != 1, depthwise k x k,
                                      project 1x1) and block_{b}/fc1, fc2 (squeeze-excitation)
  features_{S+1}/conv, .../bn         head: 1x1 conv to last_channel, BatchNorm, activation
  classifier_1                        Linear after Dropout (torchvision's classifier.1)

B0-B7: SiLU, squeeze-excitation (squeeze to max(1, block input / 4)), torch's symmetric
padding k // 2, BatchNorm eps 1e-5 (B5-B7: eps 1e-3, torch momentum 0.01), stage widths
`_make_divisible(c * width_mult, 8)` and depths `ceil(n * depth_mult)` as torchvision.

Lite0-4 (tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py): no
squeeze-excitation, ReLU6, BatchNorm eps 1e-3 / TF momentum 0.99, stem (32) and head (1280)
not scaled, the first and last stages' depths not scaled, and TF's "same" padding (a
stride-2 conv on an even map pads 0 before and k - 2 after, not (k - 1) / 2 on each side),
since the weights come from TF. `padding="torch" | "same"` is a field of every variant.

Training: each residual branch is dropped per sample with StochasticDepth(p, "row"), p rising
linearly over blocks to `stochastic_depth_prob` (torchvision: p_i = 0.2 * i / blocks); the
classifier's Dropout too. Both draw from the 'dropout' rng collection (`rngs={"dropout": k}`).

    model = build("efficientnet_b0")
    logits, aux = model.apply(variables, x)   # aux: stem, stage1..7, head, pooled, logits
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.models import registry, resnet
from jaxpretrain.models.convnext import stochastic_depth

Dtype = Any

# torchvision _efficientnet_conf("efficientnet_b*"): MBConvConfig(expand_ratio, kernel,
# stride, input_channels, out_channels, num_layers) per stage, before width / depth scaling.
# The Lite builder's blocks_args ('r1_k3_s11_e1_i32_o16', ...) are the same seven stages.
B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
             (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
             (6, 3, 1, 192, 320, 1))

# BatchNorm in Flax terms (momentum = weight of the old running value = 1 - torch momentum).
_TORCH_BN = dict(bn_epsilon=1e-5, bn_momentum=0.9)
_TF_BN = dict(bn_epsilon=1e-3, bn_momentum=0.99)  # torchvision B5-B7 and TF Lite
_LITE = dict(se=False, activation="relu6", padding="same", fixed_stem_head=True,
             last_channel=1280, **_TF_BN)

# torchvision efficientnet_b0..b7: (width_mult, depth_mult, dropout), B5-B7 with
# norm_layer=partial(BatchNorm2d, eps=0.001, momentum=0.01). Lite (efficientnet_lite_builder
# efficientnet_lite_params): (width, depth, resolution, dropout).
VARIANTS: dict[str, dict[str, Any]] = {
    "efficientnet_b0": dict(width_mult=1.0, depth_mult=1.0, dropout=0.2, **_TORCH_BN),
    "efficientnet_b1": dict(width_mult=1.0, depth_mult=1.1, dropout=0.2, **_TORCH_BN),
    "efficientnet_b2": dict(width_mult=1.1, depth_mult=1.2, dropout=0.3, **_TORCH_BN),
    "efficientnet_b3": dict(width_mult=1.2, depth_mult=1.4, dropout=0.3, **_TORCH_BN),
    "efficientnet_b4": dict(width_mult=1.4, depth_mult=1.8, dropout=0.4, **_TORCH_BN),
    "efficientnet_b5": dict(width_mult=1.6, depth_mult=2.2, dropout=0.4, **_TF_BN),
    "efficientnet_b6": dict(width_mult=1.8, depth_mult=2.6, dropout=0.5, **_TF_BN),
    "efficientnet_b7": dict(width_mult=2.0, depth_mult=3.1, dropout=0.5, **_TF_BN),
    "efficientnet_lite0": dict(width_mult=1.0, depth_mult=1.0, dropout=0.2, **_LITE),
    "efficientnet_lite1": dict(width_mult=1.0, depth_mult=1.1, dropout=0.2, **_LITE),
    "efficientnet_lite2": dict(width_mult=1.1, depth_mult=1.2, dropout=0.3, **_LITE),
    "efficientnet_lite3": dict(width_mult=1.2, depth_mult=1.4, dropout=0.3, **_LITE),
    "efficientnet_lite4": dict(width_mult=1.4, depth_mult=1.8, dropout=0.3, **_LITE),
}

ACTIVATIONS = {"silu": nn.silu, "relu6": jax.nn.relu6}
PADDINGS = ("torch", "same")

conv_init = resnet.conv_init  # torchvision: kaiming_normal_(mode="fan_out"), biases 0


def _dense_init(key, shape, dtype=jnp.float32):
  """torchvision: Linear weight ~ U(-r, r), r = 1 / sqrt(out_features); bias 0."""
  r = 1.0 / math.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -r, r)


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision.models._utils._make_divisible (TF's round_filters): nearest multiple of
  `divisor`, at least `divisor`, never more than 10% below v."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


def stage_plan(stages: Sequence[Sequence[int]], width_mult: float, depth_mult: float,
               fixed_stem_head: bool = False) -> list[tuple[int, int, int, int, int, int]]:
  """Scaled stages: (expand_ratio, kernel, stride, in, out, layers) as the network builds them.

  torchvision's MBConvConfig scaling; with fixed_stem_head (Lite) the first stage's input
  stays at its base width and the first and last stages keep their depth.
  """
  plan = []
  for i, (e, k, s, cin, cout, n) in enumerate(stages):
    fixed = fixed_stem_head and i in (0, len(stages) - 1)
    cin = cin if fixed_stem_head and i == 0 else make_divisible(cin * width_mult)
    layers = n if fixed else int(math.ceil(n * depth_mult))
    plan.append((int(e), int(k), int(s), cin, make_divisible(cout * width_mult), layers))
  return plan


class Conv(nn.Module):
  """A k x k convolution, torch's padding (k // 2 each side) or TF's "SAME"; optional bias."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  groups: int = 1
  padding: str = "torch"  # "torch" | "same"
  use_bias: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, h, w, c] -> [batch, ceil(h / stride), ceil(w / stride), features]."""
    k, p = self.kernel_size, self.kernel_size // 2
    kernel = self.param("kernel", conv_init, (k, k, x.shape[-1] // self.groups, self.features),
                        self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    # XLA's "SAME" is TF's: total padding max((ceil(n / s) - 1) * s + k - n, 0), the smaller
    # half before.
    pad = "SAME" if self.padding == "same" else ((p, p), (p, p))
    y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), pad,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=self.groups)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         self.param_dtype).astype(y.dtype)
    return y


class _Parts(nn.Module):
  """Shared fields and constructors of the blocks and the network."""
  activation: str = "silu"  # "silu" (B0-B7) | "relu6" (Lite)
  padding: str = "torch"  # "torch" | "same" (TF)
  bn_epsilon: float = 1e-5
  bn_momentum: float = 0.9  # Flax convention: 1 - torch's momentum
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

  def conv_norm_act(self, x: jax.Array, features: int, kernel: int, stride: int = 1,
                    groups: int = 1, *, act: bool = True, train: bool, name: str) -> jax.Array:
    return ConvNormAct(features=features, kernel=kernel, stride=stride, groups=groups, act=act,
                       activation=self.activation,
                       padding=self.padding, bn_epsilon=self.bn_epsilon,
                       bn_momentum=self.bn_momentum, dtype=self.dtype,
                       param_dtype=self.param_dtype, axis_name=self.axis_name,
                       name=name)(x, train=train)


class ConvNormAct(_Parts):
  """torchvision Conv2dNormActivation: conv without bias (`conv`), BatchNorm (`bn`), activation."""
  features: int = 16
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  act: bool = True  # False: no activation (the project conv)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [batch, h, w, c] -> [batch, ceil(h / stride), ceil(w / stride), features]."""
    if self.kernel == 1 and self.stride == 1 and self.groups == 1:
      conv = resnet.Conv1x1(self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                            name="conv")
    else:
      conv = Conv(self.features, self.kernel, self.stride, self.groups, self.padding,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="conv")
    x = resnet.BatchNorm(self.bn_momentum, self.bn_epsilon, dtype=self.dtype,
                         param_dtype=self.param_dtype, axis_name=self.axis_name,
                         name="bn")(conv(x), train=train)
    return ACTIVATIONS[self.activation](x) if self.act else x


class SqueezeExcitation(nn.Module):
  """torchvision SqueezeExcitation: mean over space, fc1 (1x1 conv), activation, fc2, sigmoid."""
  squeeze: int
  activation: str = "silu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, h, w, c] -> x scaled per channel."""
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = ACTIVATIONS[self.activation](self._fc(self.squeeze, "fc1")(s))
    return x * jax.nn.sigmoid(self._fc(x.shape[-1], "fc2")(s))

  def _fc(self, features: int, name: str) -> nn.Conv:
    return nn.Conv(features, (1, 1), kernel_init=conv_init, dtype=self.dtype,
                   param_dtype=self.param_dtype, name=name)


class MBConv(_Parts):
  """torchvision MBConv: expand 1x1, depthwise k x k, squeeze-excitation, project 1x1."""
  expand_ratio: int = 6
  kernel: int = 3
  stride: int = 1
  out_channels: int = 16
  se: bool = True
  stochastic_depth_prob: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [batch, h, w, in] -> [batch, h / stride, w / stride, out_channels]."""
    cin = x.shape[-1]
    expanded = make_divisible(cin * self.expand_ratio)
    b, y = 0, x  # b: index in torchvision's `block` Sequential
    if expanded != cin:
      y = self.conv_norm_act(y, expanded, 1, train=train, name=f"block_{b}")
      b += 1
    y = self.conv_norm_act(y, expanded, self.kernel, self.stride, groups=expanded, train=train,
                           name=f"block_{b}")
    b += 1
    if self.se:  # torchvision SqueezeExcitation(expanded, max(1, cin // 4), SiLU)
      y = SqueezeExcitation(max(1, cin // 4), self.activation, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=f"block_{b}")(y)
    b += 1  # Lite: the same index, left empty (no squeeze-excitation), as efficientnet_pytorch
    y = self.conv_norm_act(y, self.out_channels, 1, act=False, train=train, name=f"block_{b}")
    if self.stride == 1 and cin == self.out_channels:
      y = stochastic_depth(y, self.stochastic_depth_prob, train, self) + x
    return y


class EfficientNet(_Parts):
  """torchvision EfficientNet (V1) and EfficientNet-Lite on NHWC images."""
  stages: Sequence[Sequence[int]] = B0_STAGES  # (expand, kernel, stride, in, out, layers)
  width_mult: float = 1.0
  depth_mult: float = 1.0
  se: bool = True  # squeeze-excitation in every block (False: Lite)
  fixed_stem_head: bool = False  # Lite: stem, head and the outer stages' depth not scaled
  last_channel: int | None = None  # head width; None: 4x the last stage's (torchvision V1)
  dropout: float = 0.2
  stochastic_depth_prob: float = 0.2
  num_classes: int | None = 1000  # None: no classifier_1; the output is the pooled features

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Runs the network.

    Args:
      x: [batch, height, width, 3] images, normalized as `preprocessing` says.
      train: batch statistics (apply with mutable=["batch_stats"]), stochastic depth and
        dropout (rngs={"dropout": key}).
    Returns:
      (out, aux): out is logits [batch, num_classes], or the pooled features [batch,
      last_channel] when num_classes is None. aux: stem [batch, h/2, w/2, c], stage1..stageS,
      head (after the last 1x1 conv), pooled, logits.
    """
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation '{self.activation}'; known: {sorted(ACTIVATIONS)}")
    if self.padding not in PADDINGS:
      raise ValueError(f"unknown padding '{self.padding}'; known: {list(PADDINGS)}")
    plan = stage_plan(self.stages, self.width_mult, self.depth_mult, self.fixed_stem_head)
    parts = dict(activation=self.activation, padding=self.padding, bn_epsilon=self.bn_epsilon,
                 bn_momentum=self.bn_momentum, dtype=self.dtype, param_dtype=self.param_dtype,
                 axis_name=self.axis_name)
    aux = {}
    x = aux["stem"] = self.conv_norm_act(x, plan[0][3], 3, 2, train=train, name="features_0")
    total, block_id = sum(p[5] for p in plan), 0
    for s, (e, k, stride, _, cout, layers) in enumerate(plan, start=1):
      for j in range(layers):
        p = self.stochastic_depth_prob * block_id / total  # torchvision's sd_prob
        x = MBConv(expand_ratio=e, kernel=k, stride=stride if j == 0 else 1,
                   out_channels=cout, se=self.se, stochastic_depth_prob=p,
                   name=f"features_{s}_{j}", **parts)(x, train=train)
        block_id += 1
      aux[f"stage{s}"] = x
    head = self.last_channel or 4 * plan[-1][4]
    x = aux["head"] = self.conv_norm_act(x, head, 1, train=train,
                                         name=f"features_{len(plan) + 1}")
    x = aux["pooled"] = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1)
    if self.num_classes is None:
      return x, aux
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = aux["logits"] = nn.Dense(self.num_classes, kernel_init=_dense_init, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name="classifier_1")(x)
    return x, aux


def build(name: str, **kwargs: Any) -> EfficientNet:
  """The EfficientNet variant `name` with its defaults overridden by `kwargs`."""
  if name not in VARIANTS:
    raise ValueError(f"unknown EfficientNet variant '{name}'; known: {sorted(VARIANTS)}")
  config = {**VARIANTS[name], **kwargs}
  config["stages"] = tuple(tuple(int(v) for v in s) for s in config.get("stages", B0_STAGES))
  for key in ("dtype", "param_dtype"):
    if isinstance(config.get(key), str):
      config[key] = jnp.dtype(config[key])
  return EfficientNet(**config)


def dummy_inputs(model: EfficientNet, batch: int = 1) -> dict[str, Any]:
  """32x32 images: five stride-2 stages (x32) leave the last map at 1x1."""
  del model
  return {"x": jnp.zeros((batch, 32, 32, 3), jnp.float32)}


# What the family descriptor (models/registry.py) needs, stated here so that registering
# EfficientNet is mechanical.
FAMILY_INFO = {
    "modality": "image",
    "head_patterns": [r"params/classifier_1/.*"],
    "num_classes_kwarg": "num_classes",  # None: no classifier_1, out = pooled
    "select_features": "pooled",
    # torchvision EfficientNet_B0_Weights.IMAGENET1K_V1: ImageClassification(crop_size=224,
    # resize_size=256, interpolation=BICUBIC), ImageNet mean / std. Other B sizes:
    # (crop, resize) b1 (240, 256) b2 (288, 288) b3 (300, 320) b4 (380, 384) b5 (456, 456)
    # b6 (528, 528) b7 (600, 600), all bicubic.
    "preprocessing": {
        "image_size": 224, "resize_size": 256, "interpolation": "bicubic", "layout": "NHWC",
        "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    },
    # EfficientNet-Lite (efficientnet_lite_builder.py MEAN_RGB = [127.0] * 3, STDDEV_RGB =
    # [128.0] * 3: inputs in [-1, 1)); resize 256 + center-crop 224 (TF's crop_padding 32).
    # Resolutions: lite0 224, lite1 240, lite2 260, lite3 280, lite4 300.
    "preprocessing_lite": {
        "image_size": 224, "resize_size": 256, "interpolation": "bilinear", "layout": "NHWC",
        "scale": 1 / 255, "mean": [127 / 255] * 3, "std": [128 / 255] * 3,
    },
    "port": "ports.torchvision_efficientnet",  # and ports.efficientnet_pytorch (Lite files)
}


def _default_preprocessing(model: EfficientNet) -> dict[str, Any]:
  """The project's small size; a Lite model's [-1, 1] inputs (TF's), else ImageNet's."""
  lite = not model.se and model.activation == "relu6"
  stats = FAMILY_INFO["preprocessing_lite"] if lite else FAMILY_INFO["preprocessing"]
  return {"image_size": registry.SMALL_IMAGE_SIZE, "mean": stats["mean"], "std": stats["std"]}


# The family descriptor (jaxpretrain/models/registry.py); FAMILY_INFO above keeps the eval
# transforms the ports record (torchvision's, or EfficientNet-Lite's [-1, 1) inputs).
FAMILY = registry.register(registry.Family(
    name="efficientnet", modality="image", build=build, variants=VARIANTS,
    dummy_inputs=dummy_inputs,
    heads={"classification": registry.Head(
        patterns=(r"params/classifier_1/.*",),
        set=lambda kw, n: {**kw, "num_classes": n},
        size=lambda kw: kw.get("num_classes", 1000))},
    preprocessing=_default_preprocessing,
    ports={"torchvision": "ports.torchvision_efficientnet"}))
