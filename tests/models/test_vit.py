"""ViT model: parameter counts, shapes, heads, patching, position-embedding resizing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import models, params
from jaxpretrain.models import vit

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=16, patch_size=4)


def count(name, **kwargs):
  shapes = models.variable_shapes(name, models.build_model(name, **kwargs))
  return sum(int(np.prod(v.shape)) for v in params.flatten(dict(shapes)).values())


def test_param_count_vit_b16():
  # patches 16*16*3*768 + 768 = 590,592; cls 768; positions (196 + 1)*768 = 151,296
  # per layer: 2 LN 3,072; q,k,v,out 4*(768*768 + 768) = 2,362,368;
  #            fc1 768*3072 + 3072 = 2,362,368; fc2 3072*768 + 768 = 2,360,064 -> 7,087,872
  # 12 layers = 85,054,464; final LN 1,536                         -> 85,798,656 backbone
  # head 768*1000 + 1000 = 769,000 -> 86,567,656 (google/vit-base-patch16-224)
  assert count("vit_base_patch16_224") == 86_567_656
  # in21k ViTModel: backbone + pooler 768*768 + 768 = 590,592 -> 86,389,248
  assert count("vit_base_patch16_224_in21k") == 86_389_248


@pytest.mark.parametrize("head,pooler,shape", [(None, True, (2, 17, 32)),
                                               ("classification", False, (2, 5))])
def test_shapes_and_intermediates(head, pooler, shape):
  model = vit.build("vit", **TINY, head=head, pooler=pooler, num_labels=5)
  x = jnp.zeros((2, 16, 16, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  out, aux = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert out.shape == shape
  expected = {"embeddings", "layer_0", "layer_1", "last_hidden_state", "pre_logits"}
  expected |= {"pooled"} if pooler else set()
  expected |= {"logits"} if head else set()
  assert set(aux) == expected
  assert aux["embeddings"].shape == (2, 1 + 16, 32)


def test_position_interpolation_shape():
  model = vit.build("vit", **TINY)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert variables["params"]["embeddings"]["position_embeddings"].shape == (1, 17, 32)
  out, _ = jax.jit(model.apply)(variables, jnp.ones((2, 24, 20, 3)))  # 6 x 5 patches
  assert out.shape == (2, 1 + 30, 32)
  assert np.isfinite(np.asarray(out)).all()


def test_resize_pos_embed():
  pos = jax.random.normal(jax.random.key(0), (1, 1 + 4 * 4, 8))
  assert vit.resize_pos_embed(pos, (4, 4), (4, 4)) is pos
  out = vit.resize_pos_embed(pos, (4, 4), (6, 5))
  assert out.shape == (1, 31, 8)
  np.testing.assert_array_equal(out[:, 0], pos[:, 0])  # [CLS] position untouched
  # Each output is a weighted mean of inputs (cubic weights sum to one), identity at n -> n.
  np.testing.assert_allclose(vit.bicubic_matrix(4, 7).sum(1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(vit.bicubic_matrix(5, 5), np.eye(5), atol=1e-12)


def test_patching_drops_remainder_like_torch():
  # torch's Conv2d (no padding) ignores the last 18 % 4 = 2 rows and columns, as VALID does.
  model = vit.build("vit", **TINY)
  x = jax.random.normal(jax.random.key(1), (1, 18, 18, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x[:, :16, :16])
  np.testing.assert_array_equal(jax.jit(model.apply)(variables, x)[0],
                                jax.jit(model.apply)(variables, x[:, :16, :16])[0])


def test_channels_last_is_checked():
  model = vit.build("vit", **TINY)
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 16, 16))))


def test_registry():
  assert models.family_of("vit_base_patch16_224") == "vit"
  model = models.build_model("vit", **TINY)
  assert models.dummy_inputs("vit", model, batch=2)["x"].shape == (2, 16, 16, 3)
  assert vit.build("vit", **{**TINY, "image_size": [16, 16]}).image_size == (16, 16)
