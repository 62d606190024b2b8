"""ResNet, Wide ResNet and ResNeXt with torchvision semantics (NHWC).

Mirrors `torchvision.models.resnet` (v0.29) so that its state dicts convert by name:
ResNet v1.5 (the stride of a bottleneck sits on its 3x3 conv), torch-style explicit padding,
a max-pool that pads with -inf, and BatchNorm with torch's momentum, epsilon and unbiased
running variance. Submodule names follow torchvision's hierarchy: `conv1`, `bn1`,
`layer1_0/conv1`, `layer1_0/downsample_conv`, `layer1_0/downsample_bn`, `fc`.

    model = build("resnet50")                      # 1000-class ImageNet head
    variables = model.init(rng, jnp.zeros([1, 224, 224, 3]))
    logits, aux = model.apply(variables, x)        # aux: stem, layer1..layer4, pooled, logits
    (logits, aux), upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.models import ops, registry

Dtype = Any

# Variants from torchvision.models.resnet (resnet18 ... resnext101_64x4d), as constructor
# kwargs: torchvision's `_resnet(block, layers, ...)` with `groups` / `width_per_group`.
VARIANTS: dict[str, dict[str, Any]] = {
    "resnet18": dict(block="basic", stage_sizes=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", stage_sizes=(3, 4, 6, 3)),
    "resnet50": dict(block="bottleneck", stage_sizes=(3, 4, 6, 3)),
    "resnet101": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3)),
    "resnet152": dict(block="bottleneck", stage_sizes=(3, 8, 36, 3)),
    "resnext50_32x4d": dict(block="bottleneck", stage_sizes=(3, 4, 6, 3), groups=32,
                            width_per_group=4),
    "resnext101_32x8d": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3), groups=32,
                             width_per_group=8),
    "resnext101_64x4d": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3), groups=64,
                             width_per_group=4),
    "wide_resnet50_2": dict(block="bottleneck", stage_sizes=(3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": dict(block="bottleneck", stage_sizes=(3, 4, 23, 3), width_per_group=128),
    # Not a torchvision model: one basic block per stage, 8 stem channels (143,312 parameters,
    # 65,000 of them the 1000-class head). For fast tests of code that needs some ResNet.
    "resnet_tiny": dict(block="basic", stage_sizes=(1, 1, 1, 1), width=8),
}

# torch.nn.BatchNorm2d defaults: running = 0.9 * running + 0.1 * batch, eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision initializes convs with kaiming_normal_(mode="fan_out", nonlinearity="relu"): an
# untruncated normal of variance 2 / fan_out.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_linear_bias_init(fan_in: int) -> Callable:
  def init(key, shape, dtype=jnp.float32):
    bound = 1 / fan_in**0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class BatchNorm(nn.Module):
  """BatchNorm over the last axis with torch's semantics (unbiased running variance).

  Training normalizes with the biased batch variance and updates
  `var <- momentum * var + (1 - momentum) * unbiased_batch_var`, as torch.nn.BatchNorm2d
  does (Flax's nn.BatchNorm uses the biased one). With `axis_name`, batch statistics are
  averaged over that mapped axis (pmap), like torch.nn.SyncBatchNorm.
  """
  momentum: float = BN_MOMENTUM  # Flax convention: weight of the old running value
  epsilon: float = BN_EPSILON
  dtype: Dtype | None = None  # output dtype; statistics are float32 (float64 for float64)
  param_dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones
  axis_name: str | None = None
  custom_vjp: bool = True  # train mode: the hand-written backward below; False: autodiff

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [..., features] -> same shape."""
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
    stats_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stats_dtype)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), stats_dtype)
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # bf16 -> f32; f64 stays
    if train:
      mean, var = jax.lax.stop_gradient(self._batch_stats(xf))  # for the running statistics
      if not self.is_initializing():
        n = x.size // features
        if self.axis_name is not None:
          n *= jax.lax.psum(1, self.axis_name)
        unbiased = var * (n / jnp.maximum(n - 1, 1))  # torch: Bessel-corrected
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * unbiased
      if self.custom_vjp:
        return _normalize_with_batch_stats(x, scale, bias, self.epsilon, self.axis_name,
                                           jnp.dtype(self.dtype or x.dtype))
      mean, var = self._batch_stats(xf)  # autodiff through the statistics
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (xf - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale.astype(xf.dtype))
    y = y + bias.astype(xf.dtype)
    return y.astype(self.dtype or x.dtype)

  def _batch_stats(self, xf: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over all axes but the last, two-pass for accuracy."""
    return _stats(xf, self.axis_name)


def _stats(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
  """Mean and biased variance over all axes but the last, two-pass, synced over axis_name."""
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.square(x - mean).mean(axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _normalize_with_batch_stats(x, scale, bias, epsilon, axis_name, out_dtype):
  """(x - mean) / sqrt(var + eps) * scale + bias with the batch's statistics (train mode).

  Computed in float32 at least (float64 stays); the result is cast to out_dtype. Only x, in
  its own dtype, and two vectors are kept for the backward pass.
  """
  return _normalize_fwd(x, scale, bias, epsilon, axis_name, out_dtype)[0]


def _normalize_fwd(x, scale, bias, epsilon, axis_name, out_dtype):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, var = _stats(xf, axis_name)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (xf - mean) * (rstd * scale.astype(xf.dtype)) + bias.astype(xf.dtype)
  return y.astype(out_dtype), (x, mean, rstd, scale, bias)


def _normalize_bwd(epsilon, axis_name, out_dtype, residuals, dy):
  """The textbook BatchNorm gradient: two reductions and one pass for dx.

  With x_hat = (x - mean) * rstd over N values per channel (all devices on axis_name):
  dx = scale * rstd * (dy - mean(dy) - x_hat * mean(dy * x_hat)); dscale and dbias are this
  device's sums (the train step averages parameter gradients over devices). Autodiff of the
  two-pass forward reaches the same values through more passes over the activations.
  """
  del epsilon, out_dtype
  x, mean, rstd, scale, bias = residuals
  xf = x.astype(mean.dtype)
  dy = dy.astype(mean.dtype)
  axes = tuple(range(x.ndim - 1))
  x_hat = (xf - mean) * rstd
  dbias = dy.sum(axes)
  dscale = (dy * x_hat).sum(axes)
  n = x.size // x.shape[-1]
  mean_dy, mean_dy_xhat = dbias / n, dscale / n
  if axis_name is not None:
    mean_dy = jax.lax.pmean(mean_dy, axis_name)
    mean_dy_xhat = jax.lax.pmean(mean_dy_xhat, axis_name)
  dx = (scale.astype(xf.dtype) * rstd) * (dy - mean_dy - x_hat * mean_dy_xhat)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_normalize_with_batch_stats.defvjp(_normalize_fwd, _normalize_bwd)


class Conv1x1(nn.Module):
  """A 1x1 convolution without bias as a dot over channels; kernel [1, 1, in, out] as nn.Conv.

  Same parameter (name, shape, initializer) and values as `nn.Conv(features, (1, 1), stride)`.
  On a CPU it is a matmul, so that its weight gradient is one too: XLA's CPU convolutions
  compute it through transposed copies of the activations, which cost 30% of a ResNet-50
  train step (benchmarks/NOTES.md). Other platforms run the convolution (`ops`).
  """
  features: int
  stride: int = 1
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  cpu_forms: bool = True  # the matmul on a CPU (`ops`); False: the convolution everywhere

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, h, w, c] -> [batch, ceil(h / stride), ceil(w / stride), features]."""
    kernel = self.param("kernel", conv_init, (1, 1, x.shape[-1], self.features),
                        self.param_dtype)
    if self.stride > 1:  # a strided 1x1 conv without padding reads every stride-th pixel
      x = x[:, ::self.stride, ::self.stride, :]
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    # On a CPU as a 2-D matmul [n*h*w, c] @ [c, features]: the N-D contraction's gradient
    # costs transposed copies of the output gradient there (NOTES.md, attempt 7). Elsewhere
    # the plain convolution (`ops`: XLA's GPU compiler aborts on the reshaped dot).
    return ops.cpu_or_default(_dot_1x1, _conv, x, kernel, enabled=self.cpu_forms)


class Conv(nn.Module):
  """A k x k convolution without bias, padded k // 2 as torch; kernel [k, k, in/groups, out].

  The parameter (name, shape, initializer) and the results are those of `nn.Conv` with
  torch's padding. When the input or the output map is smaller than the kernel (a 3x3 conv
  on 2x2 or 1x1 maps, or from 4x4 to 2x2: CIFAR-sized images in layer3/layer4) it is, on a
  CPU (`ops`), one matmul over the k*k shifted copies of the input: XLA swaps the operands of such
  convolutions (and of the input gradient of a conv with a small output) into a form its
  CPU backend runs 20-100x slower than the matmul (95% of a ResNet-18 step on 32x32 images;
  benchmarks/NOTES.md).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  groups: int = 1
  use_bias: bool = False  # a `bias` [features] as nn.Conv's (zeros at init): VGG's convs
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  cpu_forms: bool = True  # im2col for small maps on a CPU (`ops`); False: the convolution

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, h, w, c] -> [batch, ceil(h / stride), ceil(w / stride), features]."""
    k, s, p = self.kernel_size, self.stride, self.kernel_size // 2
    kernel = self.param("kernel", conv_init, (k, k, x.shape[-1] // self.groups, self.features),
                        self.param_dtype)
    bias = (self.param("bias", nn.initializers.zeros_init(), (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # A small output counts too: the input gradient of such a conv is a conv on that output.
    out = [(d + 2 * p - k) // s + 1 for d in x.shape[1:3]]
    conv = functools.partial(_conv, stride=s, pad=p, groups=self.groups)
    if self.groups == 1 and min(*x.shape[1:3], *out) < k:
      y = ops.cpu_or_default(functools.partial(_conv_as_matmul, stride=s, pad=p), conv,
                             x, kernel, enabled=self.cpu_forms)
    else:
      y = conv(x, kernel)
    return y if bias is None else y + bias


def _conv(x: jax.Array, kernel: jax.Array, stride: int = 1, pad: int = 0,
          groups: int = 1) -> jax.Array:
  """The plain convolution: x [n, h, w, c], kernel [k, k, c / groups, f], torch's padding."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups)


def _dot_1x1(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [n, h, w, c] times a 1x1 kernel [1, 1, c, f] as one [n*h*w, c] @ [c, f] matmul."""
  y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0])
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


def _im2col(x: jax.Array, k: int, stride: int, pad: int) -> jax.Array:
  """x [n, h, w, c] -> the k x k patches of a torch-padded conv, [n, ho, wo, k*k*c].

  Channels are in (i, j, c) order, as a kernel [k, k, c, f] reshaped to [k*k*c, f].
  """
  h, w = x.shape[1:3]
  ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  cols = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
          for i in range(k) for j in range(k)]
  return jnp.concatenate(cols, axis=-1)


def _conv_as_matmul(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """x [n, h, w, c] conv kernel [k, k, c, f] as [n*ho*wo, k*k*c] @ [k*k*c, f] (im2col)."""
  cols = _im2col(x, kernel.shape[0], stride, pad)
  y = jnp.dot(cols.reshape(-1, cols.shape[-1]), kernel.reshape(cols.shape[-1], -1))
  return y.reshape(*cols.shape[:-1], -1)


class _Parts(nn.Module):
  """Shared fields and constructors of the blocks and the network.

  The last three fields choose implementations, not the function computed: they are fixed
  when the model is built (and so seen by jit's cache); the benchmarks build variants with them.
  """
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None
  cpu_forms: bool = True  # CPU-only conv forms (Conv1x1's matmul, Conv's im2col); False: plain
  bn_custom_vjp: bool = True  # train-mode BatchNorm's hand-written backward; False: autodiff
  # None: Conv1x1 / Conv. Otherwise `make(parts, features, kernel, stride, groups, *, name)`
  # -> a module with resnet.Conv's `kernel` parameter (benchmarks' candidate convolutions).
  conv_factory: Callable[..., nn.Module] | None = None

  def implementation(self) -> dict[str, Any]:
    """The implementation fields, passed on to the blocks."""
    return dict(cpu_forms=self.cpu_forms, bn_custom_vjp=self.bn_custom_vjp,
                conv_factory=self.conv_factory)

  def conv(self, features: int, kernel: int, stride: int = 1, groups: int = 1, *,
           name: str) -> nn.Module:
    if self.conv_factory is not None:
      return self.conv_factory(self, features, kernel, stride, groups, name=name)
    return self.default_conv(features, kernel, stride, groups, name=name)

  def default_conv(self, features: int, kernel: int, stride: int = 1, groups: int = 1, *,
                   name: str) -> nn.Module:
    """The library's convolution module (what `conv` builds without a `conv_factory`)."""
    if kernel == 1 and groups == 1:
      return Conv1x1(features, stride, dtype=self.dtype, param_dtype=self.param_dtype,
                     cpu_forms=self.cpu_forms, name=name)
    # torch pads k//2 on each side (conv1 7x7: 3; 3x3: 1; 1x1: 0), not 'SAME'.
    return Conv(features, kernel, stride, groups, dtype=self.dtype,
                param_dtype=self.param_dtype, cpu_forms=self.cpu_forms, name=name)

  def norm(self, *, name: str, zero: bool = False) -> BatchNorm:
    return BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, axis_name=self.axis_name,
                     scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
                     custom_vjp=self.bn_custom_vjp, name=name)


class BasicBlock(_Parts):
  """torchvision BasicBlock: two 3x3 convs, expansion 1."""
  planes: int = 64
  stride: int = 1
  downsample: bool = False
  groups: int = 1  # unused: torchvision's BasicBlock accepts only groups 1, width 64
  width_per_group: int = 64
  zero_init_residual: bool = False

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [batch, h, w, c] -> [batch, h / stride, w / stride, planes]."""
    y = self.conv(self.planes, 3, self.stride, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, train=train))
    y = self.conv(self.planes, 3, name="conv2")(y)
    y = self.norm(name="bn2", zero=self.zero_init_residual)(y, train=train)
    return nn.relu(y + _shortcut(self, x, self.planes, train))


class Bottleneck(_Parts):
  """torchvision Bottleneck (ResNet v1.5: stride on the 3x3 conv), expansion 4."""
  planes: int = 64
  stride: int = 1
  downsample: bool = False
  groups: int = 1
  width_per_group: int = 64
  zero_init_residual: bool = False

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """x: [batch, h, w, c] -> [batch, h / stride, w / stride, 4 * planes]."""
    width = int(self.planes * (self.width_per_group / 64.0)) * self.groups  # torchvision's
    y = self.conv(width, 1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, train=train))
    y = self.conv(width, 3, self.stride, self.groups, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y, train=train))
    y = self.conv(self.planes * 4, 1, name="conv3")(y)
    y = self.norm(name="bn3", zero=self.zero_init_residual)(y, train=train)
    return nn.relu(y + _shortcut(self, x, self.planes * 4, train))


def _shortcut(block: BasicBlock | Bottleneck, x: jax.Array, features: int,
              train: bool) -> jax.Array:
  """Identity, or torchvision's `downsample`: 1x1 conv (strided) then BatchNorm."""
  if not block.downsample:
    return x
  x = block.conv(features, 1, block.stride, name="downsample_conv")(x)
  return block.norm(name="downsample_bn")(x, train=train)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(_Parts):
  """torchvision ResNet / Wide ResNet / ResNeXt on NHWC images."""
  block: str = "bottleneck"  # "basic" | "bottleneck"
  stage_sizes: Sequence[int] = (3, 4, 6, 3)  # blocks in layer1..layer4
  num_classes: int | None = 1000  # None: no `fc`; the output is the pooled features
  width: int = 64  # stem channels and layer1's planes (torchvision: 64); doubles per stage
  groups: int = 1
  width_per_group: int = 64
  zero_init_residual: bool = False  # zero gamma of each block's last BN (torchvision option)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    """Runs the network.

    Args:
      x: [batch, height, width, 3] images, normalized as `preprocessing` says.
      train: use batch statistics and update `batch_stats` (apply with mutable=["batch_stats"]).
    Returns:
      (out, aux): out is logits [batch, num_classes], or the pooled features [batch, channels]
      when num_classes is None. aux holds the intermediates: stem [batch, h/4, w/4, width]
      (after the max-pool), layer1..layer4 (NHWC), pooled [batch, channels] and logits.
    """
    if self.block not in BLOCKS:
      raise ValueError(f"unknown block '{self.block}'; known: {sorted(BLOCKS)}")
    block_cls = BLOCKS[self.block]
    aux = {}
    x = self.conv(self.width, 7, 2, name="conv1")(x)
    x = nn.relu(self.norm(name="bn1")(x, train=train))
    # torch's MaxPool2d(3, 2, padding=1) pads with -inf; so does reduce_window's init value.
    x = aux["stem"] = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    in_features = self.width
    for i, blocks in enumerate(self.stage_sizes):
      planes = self.width * 2**i
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        downsample = j == 0 and (stride != 1 or in_features != planes * block_cls.expansion)
        x = block_cls(
            planes=planes, stride=stride, downsample=downsample, groups=self.groups,
            width_per_group=self.width_per_group, zero_init_residual=self.zero_init_residual,
            dtype=self.dtype, param_dtype=self.param_dtype, axis_name=self.axis_name,
            **self.implementation(), name=f"layer{i + 1}_{j}")(x, train=train)
        in_features = planes * block_cls.expansion
      aux[f"layer{i + 1}"] = x
    x = aux["pooled"] = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)) + flatten
    if self.num_classes is None:
      return x, aux
    x = aux["logits"] = nn.Dense(
        self.num_classes, kernel_init=dense_init, bias_init=_torch_linear_bias_init(x.shape[-1]),
        dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
    return x, aux


def build(name: str, **kwargs: Any) -> ResNet:
  """The ResNet variant `name` with its defaults overridden by `kwargs`.

  Accepts what config.json holds: lists for `stage_sizes`, dtype names ("bfloat16").
  """
  if name not in VARIANTS:
    raise ValueError(f"unknown ResNet variant '{name}'; known: {sorted(VARIANTS)}")
  config = {**VARIANTS[name], **kwargs}
  config["stage_sizes"] = tuple(config["stage_sizes"])
  for key in ("dtype", "param_dtype"):
    if isinstance(config.get(key), str):
      config[key] = jnp.dtype(config[key])
  return ResNet(**config)


def dummy_inputs(model: ResNet, batch: int = 1) -> dict[str, Any]:
  """Smallest input that keeps every stage non-empty: 32x32 images (layer4 is 1x1)."""
  del model
  return {"x": jnp.zeros((batch, 32, 32, 3), jnp.float32)}


# ------------------------------------------------------------------------------------------
# The family descriptor (jaxpretrain/models/registry.py).
# ------------------------------------------------------------------------------------------

FAMILY = registry.register(registry.Family(
    name="resnet", modality="image", build=build, variants=VARIANTS,
    dummy_inputs=dummy_inputs,
    # `fc` is the classifier; num_classes None builds none (the output is the pooled features).
    heads={"classification": registry.Head(
        patterns=("params/fc/.*",),
        set=lambda kw, n: {**kw, "num_classes": n},
        size=lambda kw: kw.get("num_classes", 1000))},
    # torchvision's ImageNet statistics at the project's small-image size (a torchvision
    # checkpoint records its own 224 with the port's PREPROCESSING).
    preprocessing={"image_size": registry.SMALL_IMAGE_SIZE, "mean": registry.IMAGENET_MEAN,
                   "std": registry.IMAGENET_STD},
    ports={"torchvision": "ports.torchvision_resnet"}))
