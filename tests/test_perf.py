"""perf.compiler_options: what applies where, the user's XLA_FLAGS win, results unchanged."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import perf

YNN = "xla_cpu_experimental_ynn_fusion_type"
# Another kernel library sums the same products in another order (float32, "highest").
KERNEL_ORDER_RTOL = KERNEL_ORDER_ATOL = 1e-5


def test_unknown_kind_names_the_value():
  known = "\\['inference', 'train', 'init'\\]"
  with pytest.raises(ValueError, match=f"unknown kind 'eval'; known: {known}"):
    perf.compiler_options("eval")


@pytest.mark.parametrize("kind", perf.KINDS)
def test_other_backends_get_nothing(kind):
  assert perf.compiler_options(kind, backend="gpu") == {}
  assert perf.compiler_options(kind, backend="tpu") == {}


@pytest.mark.parametrize("kind", perf.KINDS)
def test_cpu_gets_its_options_where_this_jaxlib_accepts_them(kind):
  options = perf.compiler_options(kind, backend="cpu")
  accepted = perf._accepted(tuple(sorted(perf.CPU_OPTIONS[kind].items())))
  assert options == (perf.CPU_OPTIONS[kind] if accepted else {})
  options["mutated"] = 1  # a fresh dict each time
  assert "mutated" not in perf.compiler_options(kind, backend="cpu")


def test_xla_flags_setting_the_option_win(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 --{YNN}=")
  assert perf.compiler_options("train", backend="cpu") == {}


@pytest.mark.parametrize("kind", perf.KINDS)
def test_options_do_not_change_results(kind):
  """They choose kernels, not math: a conv + reduction gives the same values."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))

  def f(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jax.nn.relu(y), axis=(1, 2)) @ jnp.ones((5, 3))

  with jax.default_matmul_precision("highest"):
    plain = jax.jit(f)(x, w)
    tuned = jax.jit(f, compiler_options=perf.compiler_options(kind))(x, w)
  np.testing.assert_allclose(tuned, plain, rtol=KERNEL_ORDER_RTOL, atol=KERNEL_ORDER_ATOL)


@pytest.mark.parametrize("name", ["resnet_tiny", "bert"])
def test_init_options_give_bit_identical_variables(name):
  """The "init" options change how hard LLVM optimizes, not one bit of the initialization."""
  from jaxpretrain import models  # noqa: PLC0415

  kwargs = {"num_hidden_layers": 1} if name == "bert" else {}
  model = models.build_model(name, **kwargs)
  init = functools.partial(models.init_variables, name, model)
  plain = jax.jit(init)(jax.random.key(7))
  fast = jax.jit(init, compiler_options=perf.compiler_options("init"))(jax.random.key(7))
  jax.tree.map(np.testing.assert_array_equal, fast, plain)
