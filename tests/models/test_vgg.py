"""VGG family: parameter counts, names, shapes, backbone cuts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import models, params
from jaxpretrain.models import vgg

# torchvision's `num_params` (VGG16_Weights.IMAGENET1K_V1.meta etc.). vgg16 by hand:
#   13 convs: 3*64*9 + 64*64*9 + 64*128*9 + 128*128*9 + 128*256*9 + 2*256*256*9
#             + 256*512*9 + 5*512*512*9 = 14,710,464 weights + 4,224 biases = 14,714,688
#   classifier: 25,088*4,096 + 4,096 + 4,096*4,096 + 4,096 + 4,096*1,000 + 1,000 = 123,642,856
#   total 138,357,544; the _bn variants add 2 per conv channel (vgg16_bn: + 2 * 4,224 = 8,448).
TORCHVISION_PARAM_COUNTS = {
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
}


def _count(tree):
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


def test_parameter_counts_match_torchvision():
  assert set(TORCHVISION_PARAM_COUNTS) == set(vgg.VARIANTS)
  got = {n: _count(models.variable_shapes(n, vgg.build(n))["params"]) for n in vgg.VARIANTS}
  assert got == TORCHVISION_PARAM_COUNTS


def test_names_mirror_torchvision_features_indices():
  shapes = models.variable_shapes("vgg11_bn", vgg.build("vgg11_bn"))
  paths = params.tree_paths(shapes["params"])
  # make_layers(cfg "A", batch_norm=True): conv 0, bn 1, relu 2, pool 3, conv 4, bn 5 ...
  assert "features_0/kernel" in paths and "features_1/scale" in paths
  assert "features_4/kernel" in paths and "features_3/kernel" not in paths
  assert {p.split("/")[0] for p in paths if p.startswith("classifier")} == {
      "classifier_0", "classifier_3", "classifier_6"}
  assert shapes["params"]["classifier_0"]["kernel"].shape == (512 * 7 * 7, 4096)
  assert set(params.tree_paths(shapes["batch_stats"])) >= {"features_1/mean", "features_1/var"}


def test_shapes_and_intermediates():
  model = vgg.build("vgg11", cfg=(8, "M", 16, "M"), classifier_width=32, num_classes=5)
  x = jnp.zeros((2, 20, 20, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only: no compile
  logits, aux = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (2, 5)
  assert aux["stage1"].shape == (2, 10, 10, 8) and aux["stage2"].shape == (2, 5, 5, 16)
  assert aux["avgpool"].shape == (2, 7, 7, 16) and aux["pooled"].shape == (2, 16)
  assert aux["pre_logits"].shape == (2, 32)


def test_cut_keeps_a_prefix_of_features():
  # vgg16_bn().features[:39]: through conv5_2's BatchNorm (CRAFT's backbone), no classifier.
  model = vgg.build("vgg16_bn", cut=39, num_classes=None)
  shapes = models.variable_shapes("vgg16_bn", model)
  paths = params.tree_paths(shapes["params"])
  assert "features_38/scale" in paths and "features_40/kernel" not in paths
  assert not any(p.startswith("classifier") for p in paths)
  out = jax.eval_shape(model.apply, shapes, jnp.zeros((1, 64, 64, 3)))
  assert out[0].shape == (1, 512) and out[1]["features"].shape == (1, 4, 4, 512)
  assert vgg.layer_name(vgg.CFGS["D"], True, 38) == "conv5_2's BatchNorm"
  headed = vgg.build("vgg16_bn", cut=39, num_classes=3)
  assert "head/kernel" in params.tree_paths(models.variable_shapes("vgg16_bn", headed)["params"])


def test_cut_out_of_range_is_refused():
  with pytest.raises(ValueError, match="cut 99 out of range"):
    models.variable_shapes("vgg11", vgg.build("vgg11", cut=99))


def test_adaptive_pool_matches_torch_bins():
  # torch AdaptiveAvgPool2d(3) on 4 values: bins [0, 2), [1, 3), [2, 4).
  x = jnp.arange(4.0).reshape(1, 4, 1, 1) * jnp.ones((1, 1, 4, 1))
  got = vgg._adaptive_avg_pool(x, 3)[0, :, 0, 0]
  np.testing.assert_allclose(got, [0.5, 1.5, 2.5])
