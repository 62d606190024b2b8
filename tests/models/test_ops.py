"""Backend-specific forms (models.ops): the CPU forms equal the plain ones, GPUs get the plain."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import models

# Same products summed in another order (im2col / 2-D matmul vs convolution), float32 at
# "highest": rounding only.
FORMS_RTOL, FORMS_ATOL = 1e-5, 1e-5


@functools.cache
def _init(model, x_shape, x_dtype):  # the inputs' shape only: init's values do not use x
  """`model`'s initial variables, once per model. Both forms get the same variables (the forms
  change the forward pass, not the initializers). The key is XLA's RngBitGenerator ("rbg"):
  the same initializers on other random bits. A threefry key's init compiles a loop per
  random tensor on the CPU: 20 s for resnet_tiny on two shared cores, 5 s with "rbg"."""
  return jax.jit(model.init)(jax.random.key(1, impl="rbg"), jnp.zeros(x_shape, x_dtype))


def _resnet_loss(cpu_forms=True):
  model = models.build_model("resnet_tiny", num_classes=5, cpu_forms=cpu_forms)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))  # layer3/4 maps smaller than 3x3
  variables = _init(model.clone(cpu_forms=True), x.shape, x.dtype)

  def loss(params):  # eval mode: batch statistics of 2 values per channel in layer4 would
    out, _ = model.apply({**variables, "params": params}, x)  # amplify rounding 100-fold
    return jnp.sum(out * jnp.arange(5.0))
  return loss, variables["params"]


def _bert_loss(cpu_forms=True):
  model = models.build_model("bert", vocab_size=50, hidden_size=16, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=32,
                             max_position_embeddings=16, head="classification", num_labels=3,
                             cpu_forms=cpu_forms)
  ids = jax.random.randint(jax.random.key(0), (2, 8), 0, 50)
  variables = _init(model.clone(cpu_forms=True), ids.shape, ids.dtype)

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, ids)
    return jnp.sum(out * jnp.arange(3.0))
  return loss, variables["params"]


@pytest.mark.parametrize("make", [_resnet_loss, _bert_loss], ids=["resnet", "bert"])
def test_cpu_forms_equal_plain_forms(make, highest_precision):
  results = {}
  for flag in (True, False):
    loss, params = make(cpu_forms=flag)  # the same parameters: same seeds, same shapes
    results[flag] = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(results[True][0], results[False][0], FORMS_RTOL, FORMS_ATOL)
  for a, b in zip(jax.tree.leaves(results[True][1]), jax.tree.leaves(results[False][1]),
                  strict=True):
    np.testing.assert_allclose(a, b, FORMS_RTOL, FORMS_ATOL)


def _op_counts(fn, args, platform):
  traced = jax.jit(lambda *a: fn(*a)).trace(*args)  # a new function: no cached trace
  text = traced.lower(lowering_platforms=(platform,)).as_text()
  return text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")


def test_other_platforms_lower_the_plain_forms():
  """What a GPU compiles is the plain convolutions (XLA's GPU compiler aborts on the dots)."""
  loss, params = _resnet_loss()
  grad = jax.grad(loss)
  cuda = _op_counts(grad, (params,), "cuda")
  cpu = _op_counts(grad, (params,), "cpu")
  plain_loss, _ = _resnet_loss(cpu_forms=False)
  plain = _op_counts(jax.grad(plain_loss), (params,), "cpu")
  assert cuda == plain
  assert cpu[0] < plain[0] and cpu[1] > plain[1]  # the CPU gets matmuls in their place


def test_forms_are_a_model_field_seen_by_jit():
  """One jitted function, two models differing only in `cpu_forms`: two different programs."""
  fwd = jax.jit(lambda model, variables, x: model.apply(variables, x)[0], static_argnums=0)
  x = jnp.zeros((1, 32, 32, 3))
  counts = []
  for flag in (True, False):
    model = models.build_model("resnet_tiny", num_classes=5, cpu_forms=flag)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    text = fwd.trace(model, variables, x).lower(lowering_platforms=("cpu",)).as_text()
    counts.append(text.count("stablehlo.convolution"))
  assert counts[0] < counts[1]
