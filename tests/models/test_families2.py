"""DistilBERT, DINOv2 and CLIP: parameter counts (jax.eval_shape, no memory) against the
published models, parameter names mirroring Hugging Face's hierarchy, output shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import models, params
from jaxpretrain.models import clip, dinov2, distilbert, transformer


def _count(name, **kw):
  shapes = params.flatten(dict(models.variable_shapes(name, models.build_model(name, **kw))))
  return shapes, sum(int(np.prod(s.shape)) for s in shapes.values())


@pytest.mark.parametrize("name,kw,expected", [
    # DistilBertModel (distilbert-base-uncased): embeddings 30522*768 + 512*768 + LN 2*768 =
    # 23,835,648; a layer 4*(768*768+768) + 2*3072 (LNs) + 2*768*3072 + 3072 + 768 = 7,087,872,
    # times 6 = 42,527,232; 66,362,880 in all, as transformers counts it.
    ("distilbert_base_uncased", {}, 66_362_880),
    # + pre_classifier 768*768+768 and a 2-way classifier 768*2+2: 592,130.
    ("distilbert_base_uncased", {"head": "classification"}, 66_955_010),
    # facebook/dinov2-small: patch conv 384*3*14*14+384 = 226,176; cls, mask token 2*384;
    # positions 1370*384 = 526,080; a layer 4*(384*384+384) + 2*(384*1536) + 1536 + 384 +
    # 4*384 (LNs) + 2*384 (layer scales) = 1,775,232, times 12 = 21,302,784; final LN 768.
    ("dinov2_small", {}, 22_056_576),
    ("dinov2_with_registers_small", {}, 22_056_576 + 4 * 384),  # + 4 register tokens
    ("dinov2_base", {}, 86_580_480),  # facebook/dinov2-base, as transformers counts it
    ("clip_vit_base_patch32", {}, 151_277_313),  # openai/clip-vit-base-patch32's model card
    ("clip_vit_base_patch16", {}, 149_620_737),  # openai/clip-vit-base-patch16
])
def test_parameter_counts(name, kw, expected):
  assert _count(name, **kw)[1] == expected


def test_names_mirror_hugging_face():
  shapes, _ = _count("dinov2_with_registers_small")
  for path in ("params/embeddings/patch_embeddings/kernel", "params/embeddings/mask_token",
               "params/embeddings/register_tokens", "params/encoder/layer_11/layer_scale2",
               "params/encoder/layer_0/attention/query/kernel", "params/layernorm/scale"):
    assert path in shapes, path
  shapes, _ = _count("distilbert_base_uncased", head="classification")
  for path in ("params/embeddings/word_embeddings", "params/transformer/layer_5/mlp/fc1/kernel",
               "params/pre_classifier/kernel", "params/classifier/kernel"):
    assert path in shapes, path
  shapes, _ = _count("clip_vit_base_patch32")
  for path in ("params/logit_scale", "params/text_model/final_layer_norm/scale",
               "params/vision_model/pre_layrnorm/scale", "params/visual_projection/kernel",
               "params/vision_model/encoder/layer_11/attention/out/kernel"):
    assert path in shapes, path
  assert shapes["params/logit_scale"].shape == ()
  assert "params/vision_model/embeddings/patch_embedding/bias" not in shapes
  shapes, _ = _count("clip_vit_base_patch32", head="classification", num_labels=5)
  assert not [p for p in shapes if "text" in p or "projection" in p or "logit" in p]


def test_output_shapes():
  m = dinov2.build("dinov2", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   image_size=28, patch_size=7, num_register_tokens=2, head="classification",
                   num_labels=3)
  out, aux = jax.eval_shape(lambda: m.init_with_output(
      jax.random.key(0), jnp.zeros((2, 35, 42, 3)))[0])
  assert out.shape == (2, 3) and aux["last_hidden_state"].shape == (2, 1 + 2 + 30, 16)
  assert aux["pre_logits"].shape == (2, 32)
  c = clip.build("clip", text_vocab_size=40, text_hidden_size=16, text_intermediate_size=24,
                 text_num_hidden_layers=1, text_num_attention_heads=2, vision_hidden_size=16,
                 vision_intermediate_size=24, vision_num_hidden_layers=1,
                 vision_num_attention_heads=2, vision_image_size=8, vision_patch_size=4,
                 projection_dim=8)
  out, aux = jax.eval_shape(lambda: c.init_with_output(
      jax.random.key(0), jnp.zeros((2, 8, 8, 3)), input_ids=jnp.ones((3, 5), jnp.int32))[0])
  assert out.shape == (2, 3) and aux["logits_per_text"].shape == (3, 2)
  assert aux["text_features"].shape == (3, 8) and aux["image_features"].shape == (2, 8)
  d = distilbert.build("distilbert", vocab_size=40, dim=16, n_layers=1, n_heads=2,
                       hidden_dim=24)
  out, aux = jax.eval_shape(lambda: d.init_with_output(
      jax.random.key(0), jnp.ones((2, 5), jnp.int32))[0])
  assert out.shape == (2, 5, 16) and aux["pre_logits"].shape == (2, 16)


def test_causal_bias_and_quick_gelu():
  mask = jnp.array([[1, 1, 0]])
  bias = transformer.attention_bias(mask, 3, causal=True)[0, 0]
  hidden = np.asarray(bias) < 0
  # Query 0 sees key 0; query 1 keys 0-1; query 2 keys 0-1 (key 2 is padding, and after it).
  np.testing.assert_array_equal(hidden, [[0, 1, 1], [0, 0, 1], [0, 0, 1]])
  x = jnp.linspace(-3, 3, 7)
  np.testing.assert_allclose(transformer.activation("quick_gelu")(x),
                             x / (1 + np.exp(-1.702 * np.asarray(x))), rtol=1e-6)


def test_bicubic_aa_rows_sum_to_one():
  for n_in, n_out in [(37, 16), (4, 6), (5, 3)]:
    m = dinov2.bicubic_matrix_aa(n_in, n_out)
    np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-12)
