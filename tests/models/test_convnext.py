"""ConvNeXt family: parameter counts, names, shapes, stochastic depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import models, params
from jaxpretrain.models import convnext

# torchvision's `num_params` (ConvNeXt_*_Weights.IMAGENET1K_V1.meta). convnext_tiny by hand:
#   stem 3*96*16 + 96 + LN 192                                              =      4,896
#   a block of dim d: dw 49d + d, LN 2d, fc1 4d*d + 4d, fc2 4d*d + d, layer_scale d
#     = 8d^2 + 58d: d=96 -> 79,296; 192 -> 306,048; 384 -> 1,201,920; 768 -> 4,763,136
#   blocks 3*79,296 + 3*306,048 + 9*1,201,920 + 3*4,763,136                 = 25,882,752
#   downsamples (LN 2d + 4*d*2d + 2d): 192 -> 74,304; 384 -> 295,680; 768 -> 1,180,416
#   classifier LN 1,536 + 768*1,000 + 1,000                                  =    770,536
#   total 28,589,128
TORCHVISION_PARAM_COUNTS = {
    "convnext_tiny": 28_589_128, "convnext_small": 50_223_688,
    "convnext_base": 88_591_464, "convnext_large": 197_767_336,
}
# Tracing the 36-block small/base/large costs seconds each; tiny and large cover both widths
# and both depths (small and base were checked once: the numbers above).
CHECKED = ("convnext_tiny", "convnext_large")


def _count(tree):
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", CHECKED)
def test_parameter_count_matches_torchvision(name):
  shapes = models.variable_shapes(name, convnext.build(name))
  assert _count(shapes["params"]) == TORCHVISION_PARAM_COUNTS[name]


def test_every_variant_has_a_count():
  assert set(TORCHVISION_PARAM_COUNTS) == set(convnext.VARIANTS)


def _small(**kwargs):
  return convnext.build("convnext_tiny", dims=(8, 16), depths=(2, 1), **kwargs)


def test_names_and_shapes():
  model = _small(num_classes=4)
  x = jnp.zeros((2, 16, 16, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only: no compile
  paths = params.tree_paths(variables["params"])
  assert {"features_0_0/kernel", "features_0_1/scale", "features_1_1/block_0/kernel",
          "features_1_1/block_2/scale", "features_1_1/block_3/kernel",
          "features_1_1/layer_scale", "features_2_0/scale", "features_2_1/kernel",
          "features_3_0/block_5/bias", "classifier_0/scale", "classifier_2/kernel"} <= set(paths)
  assert "batch_stats" not in variables
  logits, aux = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (2, 4)
  assert aux["stem"].shape == (2, 4, 4, 8) and aux["stage2"].shape == (2, 2, 2, 16)
  assert aux["pooled"].shape == aux["pre_logits"].shape == (2, 16)


def test_stochastic_depth_drops_whole_samples_in_training_only():
  model = _small(num_classes=None, stochastic_depth_prob=1.0, layer_scale=1.0)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  # Values from NumPy: a jitted init compiles for tens of seconds on two busy cores.
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(s.dtype), shapes)
  apply = jax.jit(model.apply, static_argnames="train")
  eval_out, _ = apply(variables, x)
  train_out, _ = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  # p rises linearly to 1 at the last block: that block's branch is always dropped, so the
  # output differs from eval (which keeps every branch), and is random per key.
  assert not np.allclose(eval_out, train_out)
  again, _ = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  np.testing.assert_array_equal(train_out, again)
  with pytest.raises(Exception, match="dropout"):
    model.apply(variables, x, train=True)
