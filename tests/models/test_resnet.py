"""ResNet family: parameter counts, names, shapes, BatchNorm semantics, cross-device BN."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import models, params
from jaxpretrain.models import resnet

# Model inits draw from XLA's RngBitGenerator: no test here depends on which random values
# init draws, and a threefry key compiles a CPU loop per parameter shape when first used
# (~15 s for resnet_tiny's on two shared cores).
INIT_KEY = jax.random.key(0, impl="rbg")

# Parameter counts (params collection only; torch buffers excluded) as torchvision's model docs
# list them (`num_params` in each Weights enum). resnet18 by hand, weights + BN (gamma, beta):
#   conv1 3*64*49 = 9,408, bn1 128                                          =      9,536
#   layer1 2 * (2 * 64*64*9 + 2*128)                                        =    147,968
#   layer2 (64*128*9 + 128*128*9 + 512 + 64*128 + 256) + (2*128*128*9 + 512) =    525,568
#   layer3 (128*256*9 + 256*256*9 + 1,024 + 128*256 + 512) + (2*256*256*9 + 1,024)
#                                                                           =  2,099,712
#   layer4 (256*512*9 + 512*512*9 + 2,048 + 256*512 + 1,024) + (2*512*512*9 + 2,048)
#                                                                           =  8,393,728
#   fc 512*1000 + 1000                                                      =    513,000
#                                                                   total     11,689,512
TORCHVISION_PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    # Not torchvision's: 8-channel stem, one basic block per stage; by the same arithmetic.
    "resnet_tiny": 143_312,
}
# Statistics are accumulated in float32 in both paths; the comparison is of equal formulas.
BN_STATS_RTOL = 1e-5
# One device vs two: the same sums, reduced in a different order (float32).
SYNC_RTOL, SYNC_ATOL = 1e-4, 1e-5


def _shapes(name, **kwargs):
  return models.variable_shapes(name, resnet.build(name, **kwargs))


def _count(tree):
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(resnet.VARIANTS))
def test_parameter_count_matches_torchvision(name):
  assert _count(_shapes(name)["params"]) == TORCHVISION_PARAM_COUNTS[name]


def test_every_variant_has_a_count():
  assert set(TORCHVISION_PARAM_COUNTS) == set(resnet.VARIANTS)


def test_batch_stats_of_resnet18():
  # BN channels: bn1 64; layer1 4*64; layer2 4*128 + downsample 128; layer3 5*256;
  # layer4 5*512 = 4,800; a mean and a var each.
  shapes = params.flatten(dict(_shapes("resnet18")["batch_stats"]))
  assert _count(shapes) == 2 * 4_800
  assert all(k.rsplit("/", 1)[1] in ("mean", "var") for k in shapes)


def test_names_mirror_torchvision():
  paths = set(params.flatten(dict(_shapes("resnet50"))))
  for path in ["params/conv1/kernel", "params/bn1/scale", "params/bn1/bias",
               "batch_stats/bn1/mean", "batch_stats/bn1/var",
               "params/layer1_0/conv3/kernel", "params/layer1_0/downsample_conv/kernel",
               "params/layer1_0/downsample_bn/scale", "batch_stats/layer4_2/bn3/var",
               "params/fc/kernel", "params/fc/bias"]:
    assert path in paths, path
  assert "params/layer1_1/downsample_conv/kernel" not in paths
  auto_named = [p for p in paths if re.search(r"(Conv|Dense|BatchNorm)_\d+", p)]
  assert not auto_named


def test_resnet18_has_no_layer1_downsample():
  paths = set(params.flatten(dict(_shapes("resnet18")["params"])))
  assert not any(p.startswith("layer1_0/downsample") for p in paths)
  assert "layer2_0/downsample_conv/kernel" in paths


@pytest.mark.parametrize("name,channels", [("resnet18", [64, 64, 128, 256, 512]),
                                           ("resnet50", [64, 256, 512, 1024, 2048]),
                                           ("resnext50_32x4d", [64, 256, 512, 1024, 2048])])
def test_output_and_intermediate_shapes(name, channels):
  model = resnet.build(name, num_classes=10)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  out, aux = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
  assert out.shape == (2, 10)
  expected = {"stem": (2, 16, 16, channels[0]), "layer1": (2, 16, 16, channels[1]),
              "layer2": (2, 8, 8, channels[2]), "layer3": (2, 4, 4, channels[3]),
              "layer4": (2, 2, 2, channels[4]), "pooled": (2, channels[4]), "logits": (2, 10)}
  assert {k: v.shape for k, v in aux.items()} == expected


def test_features_only_has_no_head():
  model = resnet.build("resnet_tiny", num_classes=None)
  x = jnp.ones((2, 32, 32, 3))
  (out, aux), variables = model.init_with_output(INIT_KEY, x)
  assert "fc" not in variables["params"]
  assert "logits" not in aux
  assert out.shape == (2, 64)
  np.testing.assert_array_equal(out, aux["pooled"])


def test_registry_builds_from_config_json_values():
  model = models.build_model("resnet_tiny", stage_sizes=[1, 1, 1, 1], dtype="bfloat16")
  x = jnp.ones((2, 32, 32, 3))
  (out, _), variables = model.init_with_output(INIT_KEY, x)
  assert out.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))


def test_unknown_variant_lists_known():
  with pytest.raises(ValueError, match=r"unknown ResNet variant 'resnet19'; known: .*resnet18"):
    resnet.build("resnet19")


def test_zero_init_residual_zeroes_last_bn_only():
  variables = models.init_variables(
      "resnet_tiny", resnet.build("resnet_tiny", zero_init_residual=True), INIT_KEY)
  block = variables["params"]["layer2_0"]
  np.testing.assert_array_equal(block["bn2"]["scale"], 0)
  np.testing.assert_array_equal(block["bn1"]["scale"], 1)
  np.testing.assert_array_equal(block["downsample_bn"]["scale"], 1)


def test_train_mode_updates_running_stats_like_torch():
  # torch: running = 0.9 * running + 0.1 * batch stat, the variance unbiased (n - 1).
  x = jax.random.normal(jax.random.key(1), (2, 3, 5, 4)) * 3 + 1
  bn = resnet.BatchNorm()
  variables = bn.init(jax.random.key(0), x)
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  xs = np.asarray(x, np.float64).reshape(-1, 4)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * xs.mean(0), rtol=BN_STATS_RTOL)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * xs.var(0, ddof=1),
                             rtol=BN_STATS_RTOL)
  normalized = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5)  # biased variance, as torch
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 4), normalized, atol=1e-5)


def test_init_leaves_running_stats_alone():
  x = jnp.ones((2, 32, 32, 3))
  model = resnet.build("resnet_tiny")
  variables = model.init(INIT_KEY, x, train=True)
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["mean"], 0)
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], 1)


def test_axis_name_syncs_batch_stats_across_devices():
  # Two devices with half the batch each == one device with all of it (SyncBatchNorm).
  model = resnet.build("resnet_tiny", num_classes=3)
  synced = resnet.build("resnet_tiny", num_classes=3, axis_name="batch")
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(INIT_KEY, x)
  (out, _), upd = model.apply(variables, x, train=True, mutable=["batch_stats"])

  def step(v, x):
    (o, _), u = synced.apply(v, x, train=True, mutable=["batch_stats"])
    return o, u

  replicated = jax.tree.map(lambda a: jnp.stack([a, a]), variables)
  out2, upd2 = jax.pmap(step, axis_name="batch")(replicated, x.reshape(2, 2, 32, 32, 3))
  np.testing.assert_allclose(out2.reshape(4, 3), out, rtol=SYNC_RTOL, atol=SYNC_ATOL)
  for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(upd2), strict=True):
    np.testing.assert_allclose(b[0], a, rtol=SYNC_RTOL, atol=SYNC_ATOL)
    np.testing.assert_array_equal(b[0], b[1])


# The hand-written BatchNorm backward against autodiff of the forward, both in float64: the
# same formula reached through different sums, so only float64 rounding separates them.
BN_VJP_RTOL = 1e-10


@pytest.mark.parametrize("synced", [False, True], ids=["one_device", "pmap"])
def test_batchnorm_backward_equals_autodiff(synced):
  with jax.enable_x64(True):
    bn = resnet.BatchNorm(param_dtype=jnp.float64, axis_name="batch" if synced else None)
    bn_autodiff = bn.clone(custom_vjp=False)
    x = jax.random.normal(jax.random.key(0), (4, 3, 5, 6), jnp.float64) * 3 + 1
    variables = bn.init(jax.random.key(2), x)
    variables = {**variables, "params": {
        "scale": jax.random.uniform(jax.random.key(3), (6,), jnp.float64, 0.5, 2),
        "bias": jax.random.normal(jax.random.key(4), (6,), jnp.float64)}}

    def grads(x, bn):
      def loss(p, x):
        y, _ = bn.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(y * jnp.sin(x))  # a cotangent that differs per element
      g = jax.grad(loss, argnums=(0, 1))
      if synced:  # two devices with two examples each
        g = jax.pmap(g, axis_name="batch", in_axes=(None, 0))
        return g(variables["params"], x.reshape(2, 2, *x.shape[1:]))
      return g(variables["params"], x)

    got = grads(x, bn)
    want = grads(x, bn_autodiff)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert a.dtype == b.dtype == jnp.float64
    np.testing.assert_allclose(a, b, rtol=BN_VJP_RTOL, atol=BN_VJP_RTOL)


def test_batchnorm_backward_keeps_bfloat16_inputs():
  bn = resnet.BatchNorm(dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8)).astype(jnp.bfloat16)
  variables = bn.init(jax.random.key(1), x)
  dx = jax.grad(lambda x: bn.apply(variables, x, train=True, mutable=["batch_stats"])[0]
                .astype(jnp.float32).sum())(x)
  assert dx.dtype == jnp.bfloat16
