"""Candidate model changes for `benchmarks.ab` and `benchmarks.profile`, applied by name.

A patch is a variant of the library's models, so a candidate can be measured against the
library as it is, in the same process, before it is written into the library (and, once it is,
the old behaviour can stay here as a patch). Where the model has a field for the choice
(`cpu_forms`, `bn_custom_vjp`, ResNet's `conv_factory`), a patch is constructor kwargs that the
case's model is built with: nothing in jaxpretrain changes, and jit's cache sees the variant.
Only code the library has no field for (BERT's old embeddings, flax's max-pool) is still
replaced while the variant is built and traced.

    with patches.applied(["autodiff_bn"], case) as case:
      run, info = jax_cases.train(case)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Patch:
  """Model kwargs by family ("*": any family) and/or a context replacing library code."""
  kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  context: Callable[[], contextlib.AbstractContextManager] | None = None

  def kwargs_for(self, family: str) -> dict[str, Any]:
    return {**self.kwargs.get("*", {}), **self.kwargs.get(family, {})}


@contextlib.contextmanager
def _legacy_embeddings() -> Iterator[None]:
  """BERT embeddings as before the scatter-free lookups (Flax nn.Embed for all three tables)."""
  import jax.numpy as jnp  # noqa: PLC0415

  from jaxpretrain.models import bert  # noqa: PLC0415

  def call(self, input_ids, token_type_ids=None, *, train=False):
    pos = bert.position_ids(input_ids, self.position_style, self.pad_token_id)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
    x = x + self.position_embeddings(pos)
    return self.dropout(self.norm(x), deterministic=not train)

  with _replaced(bert.Embeddings, "__call__", call):
    yield


@contextlib.contextmanager
def _replaced(obj: Any, attr: str, value: Any) -> Iterator[None]:
  old = getattr(obj, attr)
  setattr(obj, attr, value)
  try:
    yield
  finally:
    setattr(obj, attr, old)


def _nn_conv(parts, features, kernel, stride=1, groups=1, *, name):
  """flax nn.Conv with torch's padding and resnet.Conv's parameter (before resnet.Conv)."""
  import flax.linen as nn  # noqa: PLC0415

  from jaxpretrain.models import resnet  # noqa: PLC0415

  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                 feature_group_count=groups, use_bias=False, kernel_init=resnet.conv_init,
                 dtype=parts.dtype, param_dtype=parts.param_dtype, name=name)


def _library_conv(parts, features, kernel, stride=1, groups=1, *, name):
  """What resnet._Parts.conv builds without a factory."""
  return parts.default_conv(features, kernel, stride, groups, name=name)


def _legacy_conv1x1(parts, features, kernel, stride=1, groups=1, *, name):
  """ResNet 1x1 convolutions as nn.Conv, as before models.resnet.Conv1x1 (a dot)."""
  if kernel == 1 and groups == 1:
    return _nn_conv(parts, features, kernel, stride, groups, name=name)
  return _library_conv(parts, features, kernel, stride, groups, name=name)


@contextlib.contextmanager
def _maxpool_slices() -> Iterator[None]:
  """Candidate: the ResNet stem's 3x3/2 max-pool as a maximum of 9 strided slices.

  Its gradient is elementwise selects and pads, instead of reduce-window's variadic argmax
  (four s32 iotas) and select-and-scatter. Ties split the gradient (torch: first wins); after
  the ReLU the only ties are zeros, whose gradient the ReLU drops anyway.
  """
  import flax.linen as nn  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  old = nn.max_pool

  def max_pool(x, window_shape, strides=None, padding="VALID"):
    if tuple(window_shape) != (3, 3) or tuple(strides) != (2, 2) or padding != ((1, 1), (1, 1)):
      return old(x, window_shape, strides, padding)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
    out = None
    for i in range(3):
      for j in range(3):
        s = xp[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2, :]
        out = s if out is None else jnp.maximum(out, s)
    return out

  with _replaced(nn, "max_pool", max_pool):
    yield


def _conv1x1_nd(parts, features, kernel, stride=1, groups=1, *, name):
  """ResNet 1x1 dots as N-D contractions (before `dot_2d`); other convs as the library's."""
  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415

  from jaxpretrain.models import resnet  # noqa: PLC0415

  if kernel != 1 or groups != 1:
    return _library_conv(parts, features, kernel, stride, groups, name=name)

  class Conv1x1ND(resnet.Conv1x1):
    @nn.compact
    def __call__(self, x):
      kernel = self.param("kernel", resnet.conv_init, (1, 1, x.shape[-1], self.features),
                          self.param_dtype)
      if self.stride > 1:
        x = x[:, ::self.stride, ::self.stride, :]
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      return jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))

  return Conv1x1ND(features, stride, dtype=parts.dtype, param_dtype=parts.param_dtype,
                   name=name)


def _legacy_conv_kxk(parts, features, kernel, stride=1, groups=1, *, name):
  """ResNet k x k convolutions as nn.Conv whatever the map size (before resnet.Conv)."""
  if kernel == 1 and groups == 1:
    return _library_conv(parts, features, kernel, stride, groups, name=name)
  return _nn_conv(parts, features, kernel, stride, groups, name=name)


def _conv_variant(body: Callable) -> Callable:
  """A conv factory: k x k convolutions computing `body(x, kernel, stride, pad, groups)`.

  Same parameter as resnet.Conv; unlike it, no per-platform choice (these are CPU
  candidates). 1x1 convolutions stay the library's.
  """
  import flax.linen as nn  # noqa: PLC0415

  from jaxpretrain.models import resnet  # noqa: PLC0415

  class Variant(resnet.Conv):
    @nn.compact
    def __call__(self, x):
      k, s, p = self.kernel_size, self.stride, self.kernel_size // 2
      kernel = self.param("kernel", resnet.conv_init,
                          (k, k, x.shape[-1] // self.groups, self.features), self.param_dtype)
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      return body(x, kernel, s, p, self.groups)

  def make(parts, features, kernel, stride=1, groups=1, *, name):
    if kernel == 1 and groups == 1:
      return _library_conv(parts, features, kernel, stride, groups, name=name)
    return Variant(features, kernel, stride, groups, dtype=parts.dtype,
                   param_dtype=parts.param_dtype, name=name)

  return make


def _conv_dw_matmul(parts, features, kernel, stride=1, groups=1, *, name):
  """Candidate: k x k convolutions whose weight gradient is an im2col matmul (custom VJP)."""
  return _conv_dw_matmul_factory()(parts, features, kernel, stride, groups, name=name)


@functools.cache
def _conv_dw_matmul_factory() -> Callable:
  """Candidate: k x k convolutions whose weight gradient is an im2col matmul (custom VJP).

  XLA's CPU weight-gradient convolutions (a "convolution" with the feature map as window and
  a 3x3 output) run at ~30% of the matmul peak; [k*k*c, n*h*w] @ [n*h*w, f] runs near it.
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from jaxpretrain.models import resnet  # noqa: PLC0415

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
  def conv_dw(x, kernel, stride, pad):
    return resnet._conv(x, kernel, stride, pad)

  def fwd(x, kernel, stride, pad):
    return resnet._conv(x, kernel, stride, pad), (x, kernel)

  def bwd(stride, pad, res, dy):
    x, kernel = res
    _, vjp_x = jax.vjp(lambda x: resnet._conv(x, kernel, stride, pad), x)
    (dx,) = vjp_x(dy)
    cols = resnet._im2col(x, kernel.shape[0], stride, pad)
    dw = jnp.dot(cols.reshape(-1, cols.shape[-1]).T, dy.reshape(-1, dy.shape[-1]))
    return dx, dw.reshape(kernel.shape)

  conv_dw.defvjp(fwd, bwd)

  def body(x, kernel, s, p, groups):
    if groups == 1 and min(x.shape[1], x.shape[2]) < kernel.shape[0]:
      return resnet._conv_as_matmul(x, kernel, s, p)
    if groups != 1:
      return resnet._conv(x, kernel, s, p, groups)
    return conv_dw(x, kernel, s, p)

  return _conv_variant(body)


def _conv_matmul_input_only(parts, features, kernel, stride=1, groups=1, *, name):
  """resnet.Conv's matmul path only for inputs smaller than the kernel (its first version)."""
  return _conv_matmul_input_only_factory()(parts, features, kernel, stride, groups, name=name)


@functools.cache
def _conv_matmul_input_only_factory() -> Callable:
  """resnet.Conv's matmul path only for inputs smaller than the kernel (its first version)."""
  from jaxpretrain.models import resnet  # noqa: PLC0415

  def body(x, kernel, s, p, groups):
    if groups == 1 and min(x.shape[1], x.shape[2]) < kernel.shape[0]:
      return resnet._conv_as_matmul(x, kernel, s, p)
    return resnet._conv(x, kernel, s, p, groups)

  return _conv_variant(body)


# name -> the patch. Conv factories are module-level functions: equal variants hash alike.
PATCHES: dict[str, Patch] = {
    "legacy_embeddings": Patch(context=_legacy_embeddings),
    "legacy_conv1x1": Patch(kwargs={"resnet": {"conv_factory": _legacy_conv1x1}}),
    "maxpool_slices": Patch(context=_maxpool_slices),
    # Transformer Dense layers as N-D contractions (`cpu_forms=False` gives the plain
    # dot_general) and ResNet 1x1 dots as N-D contractions, as before `dot_2d`.
    "legacy_dense_nd": Patch(kwargs={"bert": {"cpu_forms": False}, "vit": {"cpu_forms": False},
                                     "resnet": {"conv_factory": _conv1x1_nd}}),
    "legacy_conv_kxk": Patch(kwargs={"resnet": {"conv_factory": _legacy_conv_kxk}}),
    "conv_dw_matmul": Patch(kwargs={"resnet": {"conv_factory": _conv_dw_matmul}}),
    "conv_matmul_input_only": Patch(
        kwargs={"resnet": {"conv_factory": _conv_matmul_input_only}}),
    # Train-mode BatchNorm differentiated by autodiff, as before its hand-written backward.
    "autodiff_bn": Patch(kwargs={"resnet": {"bn_custom_vjp": False}}),
}


@contextlib.contextmanager
def applied(patches: list[str], case: Any) -> Iterator[Any]:
  """Yields `case` (a jax_cases.Case) built with the patches' model kwargs, inside their
  contexts. Two patches setting the same kwarg fail (they would silently override)."""
  family = case.family
  extra: dict[str, Any] = {}
  for name in patches:
    for key, value in PATCHES[name].kwargs_for(family).items():
      if key in extra:
        raise ValueError(f"patches {patches}: two set {key!r}; apply one at a time")
      extra[key] = value
  case = dataclasses.replace(case, model_kwargs=tuple(case.model_kwargs) + tuple(extra.items()))
  with contextlib.ExitStack() as stack:
    for name in patches:
      if PATCHES[name].context is not None:
        stack.enter_context(PATCHES[name].context())
    yield case
