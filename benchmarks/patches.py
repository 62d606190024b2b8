"""Candidate model changes for `benchmarks.ab` and `benchmarks.profile`, applied by name.

A patch is a context manager that changes jaxpretrain while a variant is built and traced,
so a candidate can be measured against the library as it is, in the same process, before it
is written into the library (and, once it is, the old behaviour can stay here as a patch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


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


@contextlib.contextmanager
def _legacy_conv1x1() -> Iterator[None]:
  """ResNet 1x1 convolutions as nn.Conv, as before models.resnet.Conv1x1 (a dot)."""
  import flax.linen as nn  # noqa: PLC0415

  from jaxpretrain.models import resnet  # noqa: PLC0415

  def conv(self, features, kernel, stride=1, groups=1, *, name):
    p = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                   feature_group_count=groups, use_bias=False, kernel_init=resnet.conv_init,
                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  with _replaced(resnet._Parts, "conv", conv):
    yield


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


@contextlib.contextmanager
def _legacy_dense_nd() -> Iterator[None]:
  """Transformer Dense layers and ResNet 1x1 dots as N-D contractions (before `dot_2d`)."""
  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415

  from jaxpretrain.models import bert, resnet, transformer  # noqa: PLC0415

  class Conv1x1ND(resnet.Conv1x1):
    @nn.compact
    def __call__(self, x):
      kernel = self.param("kernel", resnet.conv_init, (1, 1, x.shape[-1], self.features),
                          self.param_dtype)
      if self.stride > 1:
        x = x[:, ::self.stride, ::self.stride, :]
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      return jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))

  with contextlib.ExitStack() as stack:
    stack.enter_context(_replaced(transformer, "dot_2d", jax.lax.dot_general))
    stack.enter_context(_replaced(bert, "dot_2d", jax.lax.dot_general))
    stack.enter_context(_replaced(resnet, "Conv1x1", Conv1x1ND))
    yield


@contextlib.contextmanager
def _legacy_conv_kxk() -> Iterator[None]:
  """ResNet k x k convolutions as nn.Conv whatever the map size (before resnet.Conv)."""
  import flax.linen as nn  # noqa: PLC0415

  from jaxpretrain.models import resnet  # noqa: PLC0415

  old = resnet._Parts.conv

  def conv(self, features, kernel, stride=1, groups=1, *, name):
    if kernel == 1 and groups == 1:
      return old(self, features, kernel, stride, groups, name=name)
    p = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                   feature_group_count=groups, use_bias=False, kernel_init=resnet.conv_init,
                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  with _replaced(resnet._Parts, "conv", conv):
    yield


def _conv_variant(body: Callable) -> type:
  """A resnet.Conv whose convolution is `body(x, kernel, stride, pad, groups)`.

  Same parameter as resnet.Conv; unlike it, no per-platform choice (these are CPU candidates).
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

  return Variant


@contextlib.contextmanager
def _conv_dw_matmul() -> Iterator[None]:
  """Candidate: k x k convolutions whose weight gradient is an im2col matmul (custom VJP).

  XLA's CPU weight-gradient convolutions (a "convolution" with the feature map as window and
  a 3x3 output) run at ~30% of the matmul peak; [k*k*c, n*h*w] @ [n*h*w, f] runs near it.
  """
  import functools  # noqa: PLC0415

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

  with _replaced(resnet, "Conv", _conv_variant(body)):
    yield


@contextlib.contextmanager
def _conv_matmul_input_only() -> Iterator[None]:
  """resnet.Conv's matmul path only for inputs smaller than the kernel (its first version)."""
  from jaxpretrain.models import resnet  # noqa: PLC0415

  def body(x, kernel, s, p, groups):
    if groups == 1 and min(x.shape[1], x.shape[2]) < kernel.shape[0]:
      return resnet._conv_as_matmul(x, kernel, s, p)
    return resnet._conv(x, kernel, s, p, groups)

  with _replaced(resnet, "Conv", _conv_variant(body)):
    yield


@contextlib.contextmanager
def _autodiff_bn() -> Iterator[None]:
  """Train-mode BatchNorm differentiated by autodiff, as before its hand-written backward."""
  from jaxpretrain.models import resnet  # noqa: PLC0415

  with _replaced(resnet, "BN_CUSTOM_VJP", False):
    yield


# name -> a context manager factory that changes the model while a variant is built.
PATCHES: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "legacy_embeddings": _legacy_embeddings,
    "legacy_conv1x1": _legacy_conv1x1,
    "maxpool_slices": _maxpool_slices,
    "legacy_dense_nd": _legacy_dense_nd,
    "legacy_conv_kxk": _legacy_conv_kxk,
    "conv_dw_matmul": _conv_dw_matmul,
    "conv_matmul_input_only": _conv_matmul_input_only,
    "autodiff_bn": _autodiff_bn,
}


@contextlib.contextmanager
def applied(patches: list[str]) -> Iterator[None]:
  with contextlib.ExitStack() as stack:
    for name in patches:
      stack.enter_context(PATCHES[name]())
    yield


