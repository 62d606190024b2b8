"""VGG 11/13/16/19, with and without BatchNorm, with torchvision semantics (NHWC).

Mirrors `torchvision.models.vgg` (v0.29) so that its state dicts convert by name: `features` is
torchvision's `make_layers(cfg, batch_norm)` Sequential, each module keeping its index
(`features_0` is `features.0`, a 3x3 conv with bias, padded 1), then AdaptiveAvgPool2d((7, 7)),
a flatten in torch's (C, H, W) order and the classifier `classifier_0` / `classifier_3` /
`classifier_6` (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear).

A backbone cut (`cut=n`) keeps `features[:n]` only, as torch's `vgg16_bn().features[:39]`
does (the CRAFT text detector's backbone: up to conv5_2's BatchNorm, before its ReLU). Its
output is the global mean of the last map, or logits of a new linear `head` on that mean.

    model = build("vgg16")                         # 1000-class ImageNet classifier
    logits, aux = model.apply(variables, x)        # aux: stage1..5, features, avgpool, pooled,
                                                   #      pre_logits, logits
    backbone = build("vgg16_bn", cut=39, num_classes=None)
    pooled, aux = backbone.apply(variables, x)     # aux["features"]: [b, h/16, w/16, 512]

Dropout in the classifier draws from the 'dropout' rng collection when `train=True`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain.models import registry, resnet

Dtype = Any

# torchvision.models.vgg.cfgs: output channels of each 3x3 conv, "M" a 2x2 max-pool.
CFGS: dict[str, tuple] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
          "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
          512, 512, 512, "M"),
}

# torchvision.models.vgg: vgg11 = _vgg("A", False), vgg11_bn = _vgg("A", True), ... vgg19_bn.
VARIANTS: dict[str, dict[str, Any]] = {
    "vgg11": dict(cfg=CFGS["A"], batch_norm=False),
    "vgg11_bn": dict(cfg=CFGS["A"], batch_norm=True),
    "vgg13": dict(cfg=CFGS["B"], batch_norm=False),
    "vgg13_bn": dict(cfg=CFGS["B"], batch_norm=True),
    "vgg16": dict(cfg=CFGS["D"], batch_norm=False),
    "vgg16_bn": dict(cfg=CFGS["D"], batch_norm=True),
    "vgg19": dict(cfg=CFGS["E"], batch_norm=False),
    "vgg19_bn": dict(cfg=CFGS["E"], batch_norm=True),
}

# torchvision's VGG init: convs kaiming_normal_(fan_out, relu), biases 0; Linear N(0, 0.01).
conv_init = resnet.conv_init
dense_init = nn.initializers.normal(0.01)


def feature_layers(cfg: Sequence, batch_norm: bool) -> list[tuple[str, int, int]]:
  """torchvision's make_layers as data: (kind, index in `features`, channels) per module.

  kind is "conv", "bn", "relu" or "pool"; channels is the conv's (or pool input's) width.
  """
  layers, i, c = [], 0, 3
  for v in cfg:
    if v == "M":
      layers.append(("pool", i, c))
      i += 1
      continue
    c = int(v)
    kinds = ("conv", "bn", "relu") if batch_norm else ("conv", "relu")
    for kind in kinds:
      layers.append((kind, i, c))
      i += 1
  return layers


def layer_name(cfg: Sequence, batch_norm: bool, index: int) -> str:
  """A human name of features[index]: 'conv5_2', "conv5_2's BatchNorm", 'pool4'..."""
  stage, conv = 1, 0
  for kind, i, _ in feature_layers(cfg, batch_norm):
    if kind == "conv":
      conv += 1
    if i == index:
      return {"conv": f"conv{stage}_{conv}", "bn": f"conv{stage}_{conv}'s BatchNorm",
              "relu": f"conv{stage}_{conv}'s ReLU", "pool": f"pool{stage}"}[kind]
    if kind == "pool":
      stage, conv = stage + 1, 0
  raise ValueError(f"features index {index} out of range")


def _adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """torch's AdaptiveAvgPool2d((size, size)) on [b, h, w, c]: bin i spans
  [floor(i * h / size), ceil((i + 1) * h / size)); as two averaging matrices (static)."""
  def matrix(n: int) -> np.ndarray:
    m = np.zeros((size, n), np.float32)
    for i in range(size):
      lo, hi = (i * n) // size, -(-((i + 1) * n) // size)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return m
  h, w = x.shape[1:3]
  if (h, w) == (size, size):
    return x
  mh, mw = (jnp.asarray(matrix(n), x.dtype) for n in (h, w))
  return jnp.einsum("ih,jw,bhwc->bijc", mh, mw, x)


class VGG(nn.Module):
  """torchvision VGG on NHWC images, optionally cut after any module of `features`."""
  cfg: Sequence[Any] = CFGS["D"]  # conv widths and "M" (max-pool), torchvision's cfgs
  batch_norm: bool = False
  num_classes: int | None = 1000  # None: no last Linear (full) / no `head` (cut)
  cut: int | None = None  # keep features[:cut] only (no avgpool, no classifier); None: all
  classifier_width: int = 4096  # torchvision: 4096 (classifier_0 / classifier_3 outputs)
  pool_size: int = 7  # torchvision's AdaptiveAvgPool2d((7, 7))
  dropout: float = 0.5
  bn_epsilon: float = resnet.BN_EPSILON  # torch.nn.BatchNorm2d default
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None
  cpu_forms: bool = True  # resnet.Conv's im2col for maps smaller than 3x3 on a CPU (`ops`)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Runs the network.

    Args:
      x: [batch, height, width, 3] images, normalized as `preprocessing` says.
      train: batch statistics (BN variants, apply with mutable=["batch_stats"]) and dropout
        (rngs={"dropout": key}).
    Returns:
      (out, aux): out is logits [batch, num_classes]; with num_classes None the full network
      gives pre_logits [batch, classifier_width] and a cut one the pooled features. aux:
      stage1.. (after each max-pool), features (the last map), avgpool (full only,
      [batch, 7, 7, c]), pooled (global mean of `features`, [batch, c]), pre_logits, logits.
    """
    layers = feature_layers(self.cfg, self.batch_norm)
    if self.cut is not None and not 1 <= self.cut <= len(layers):
      raise ValueError(f"cut {self.cut} out of range; features has {len(layers)} modules")
    aux, stage = {}, 0
    for kind, i, c in layers[:self.cut]:
      if kind == "conv":
        # nn.Conv's parameters and values; on a CPU, small maps as one matmul (resnet.Conv).
        x = resnet.Conv(c, 3, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                        cpu_forms=self.cpu_forms, name=f"features_{i}")(x)
      elif kind == "bn":
        x = resnet.BatchNorm(epsilon=self.bn_epsilon, dtype=self.dtype,
                             param_dtype=self.param_dtype, axis_name=self.axis_name,
                             name=f"features_{i}")(x, train=train)
      elif kind == "relu":
        x = nn.relu(x)
      else:  # MaxPool2d(2, 2): floor of odd sizes, as torch
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        stage += 1
        aux[f"stage{stage}"] = x
    aux["features"] = x
    pooled = aux["pooled"] = jnp.mean(x, axis=(1, 2))
    if self.cut is not None:
      if self.num_classes is None:
        return pooled, aux
      x = aux["logits"] = self._dense(self.num_classes, "head")(pooled)
      return x, aux
    x = aux["avgpool"] = _adaptive_avg_pool(x, self.pool_size)
    # Flatten in torch's (C, H, W) order, so classifier_0's kernel is torch's weight transposed.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    for i in (0, 3):
      x = nn.relu(self._dense(self.classifier_width, f"classifier_{i}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    aux["pre_logits"] = x
    if self.num_classes is None:
      return x, aux
    x = aux["logits"] = self._dense(self.num_classes, "classifier_6")(x)
    return x, aux

  def _dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=dense_init, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=name)


def build(name: str, **kwargs: Any) -> VGG:
  """The VGG variant `name` with its defaults overridden by `kwargs` (config.json values)."""
  if name not in VARIANTS:
    raise ValueError(f"unknown VGG variant '{name}'; known: {sorted(VARIANTS)}")
  config = {**VARIANTS[name], **kwargs}
  config["cfg"] = tuple(v if v == "M" else int(v) for v in config["cfg"])
  for key in ("dtype", "param_dtype"):
    if isinstance(config.get(key), str):
      config[key] = jnp.dtype(config[key])
  return VGG(**config)


def dummy_inputs(model: VGG, batch: int = 1) -> dict[str, Any]:
  """32x32 images: every max-pool keeps a pixel (5 pools: 1x1), as torchvision's min_size."""
  del model
  return {"x": jnp.zeros((batch, 32, 32, 3), jnp.float32)}


# What the family descriptor (models/registry.py) needs, stated here so that registering VGG
# is mechanical. Head: a new num_classes replaces the last Linear only (classifier_0/3 keep
# their pretrained weights, the usual VGG transfer) or, for a cut backbone, adds `head`.
FAMILY_INFO = {
    "modality": "image",
    "head_patterns": [r"params/classifier_6/.*", r"params/head/.*"],
    "num_classes_kwarg": "num_classes",  # None: no head (pre_logits, or pooled when cut)
    "select_features": "pooled",  # global mean of the last map ("pre_logits": fc7, 4096-d)
    # torchvision VGG16_Weights.IMAGENET1K_V1 (all VGG*_Weights): ImageClassification(
    # crop_size=224) = resize 256 bilinear, center-crop 224, ImageNet mean / std.
    "preprocessing": {
        "image_size": 224, "resize_size": 256, "interpolation": "bilinear", "layout": "NHWC",
        "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    },
    "port": "ports.torchvision_vgg",
}


# The family descriptor (jaxpretrain/models/registry.py); FAMILY_INFO above keeps the
# torchvision eval transforms the port records.
FAMILY = registry.register(registry.Family(
    name="vgg", modality="image", build=build, variants=VARIANTS, dummy_inputs=dummy_inputs,
    # classifier_6 (the full classifier's last layer) or `head` (a new head on a cut backbone).
    heads={"classification": registry.Head(
        patterns=(r"params/classifier_6/.*", r"params/head/.*"),
        set=lambda kw, n: {**kw, "num_classes": n},
        size=lambda kw: kw.get("num_classes", 1000))},
    preprocessing={"image_size": registry.SMALL_IMAGE_SIZE, "mean": registry.IMAGENET_MEAN,
                   "std": registry.IMAGENET_STD},
    ports={"torchvision": "ports.torchvision_vgg"}))
