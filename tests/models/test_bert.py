"""BERT model: parameter counts, shapes, heads, padding masks, positions, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import models, params
from jaxpretrain.models import bert

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=16)
# Padding changes only which zeros enter the sums; float32 reassociation, nothing more.
PAD_RTOL = 1e-6
# bf16 compute keeps ~3 significant digits per op; two layers of error on O(1) activations.
BF16_ATOL = 0.1


def count(name, **kwargs):
  shapes = models.variable_shapes(name, models.build_model(name, **kwargs))
  return sum(int(np.prod(v.shape)) for v in params.flatten(dict(shapes)).values())


def test_param_count_minilm_l6():
  # embeddings: 30522*384 + 512*384 + 2*384 + LN 2*384             = 11,918,592
  # per layer:  q,k,v,out 4*(384*384 + 384) = 591,360; 2 LN 1,536;
  #             fc1 384*1536 + 1536 = 591,360; fc2 1536*384 + 384 = 590,208  -> 1,774,464
  # 6 layers = 10,646,784; pooler 384*384 + 384 = 147,840          -> 22,713,216 (~22.7M)
  assert count("minilm_l6") == 22_713_216


def test_param_count_bert_base():
  # embeddings: 30522*768 + 512*768 + 2*768 + 2*768 = 23,837,184
  # per layer: 4*(768*768 + 768) + 2*1536 + (768*3072 + 3072) + (3072*768 + 768) = 7,087,872
  # 12 layers = 85,054,464; pooler 768*768 + 768 = 590,592 -> 109,482,240 (bert-base-uncased)
  assert count("bert_base") == 109_482_240


@pytest.fixture(scope="module")
def tiny_variables():
  model = bert.build("bert", **TINY, head="mlm")
  return jax.jit(lambda: models.init_variables("bert", model, jax.random.key(0), batch=2))()


def apply(model, variables, ids, **kwargs):
  """model.apply under jit: one compilation instead of one per eager op."""
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, ids)


@pytest.mark.parametrize("head,shape", [(None, (2, 6, 32)), ("classification", (2, 3)),
                                        ("mlm", (2, 6, 50))])
def test_shapes_and_intermediates(head, shape):
  model = bert.build("bert", **TINY, head=head, num_labels=3, pooler=head != "mlm")
  ids = jnp.ones((2, 6), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))
  out, aux = jax.eval_shape(lambda v: model.apply(v, ids), variables)
  assert out.shape == shape
  expected = {"embeddings", "layer_0", "layer_1", "last_hidden_state"}
  expected |= {"pooled"} if head != "mlm" else set()
  expected |= {"logits"} if head else set()
  assert set(aux) == expected
  assert aux["layer_1"].shape == (2, 6, 32)


def test_mlm_decoder_is_tied_to_word_embeddings(tiny_variables):
  flat = params.flatten(tiny_variables["params"])
  vocab_sized = sorted(k for k, v in flat.items() if 50 in v.shape)
  assert vocab_sized == ["embeddings/word_embeddings/embedding", "mlm_bias"]


def test_padding_does_not_change_other_positions(tiny_variables):
  model = bert.build("bert", **TINY, head="mlm")
  rng = np.random.RandomState(0)
  ids = rng.randint(1, 50, (1, 5))
  alone, alone_aux = apply(model, tiny_variables, ids)
  padded_ids = np.concatenate([ids, rng.randint(0, 50, (1, 4))], axis=1)  # garbage under mask
  mask = np.array([[1] * 5 + [0] * 4])
  padded, aux = apply(model, tiny_variables, padded_ids, attention_mask=mask)
  np.testing.assert_allclose(padded[:, :5], alone, rtol=PAD_RTOL, atol=PAD_RTOL)
  np.testing.assert_allclose(aux["layer_0"][:, :5], alone_aux["layer_0"], rtol=PAD_RTOL,
                             atol=PAD_RTOL)


def test_all_padding_row_is_finite(tiny_variables):
  model = bert.build("bert", **TINY, head="mlm")
  out, _ = apply(model, tiny_variables, jnp.ones((1, 4), jnp.int32),
                 attention_mask=jnp.zeros((1, 4), jnp.int32))
  assert np.isfinite(np.asarray(out)).all()


def test_dropout_only_in_train():
  model = bert.build("bert", **TINY)
  ids = jnp.ones((2, 6), jnp.int32)
  variables = jax.jit(model.init)(jax.random.key(0), ids)
  run = jax.jit(lambda v, rng, train: model.apply(v, ids, train=train, rngs={"dropout": rng}),
                static_argnums=2)
  eval1, eval2 = run(variables, jax.random.key(1), False)[0], run(variables, jax.random.key(2),
                                                                  False)[0]
  train = run(variables, jax.random.key(1), True)[0]
  np.testing.assert_array_equal(eval1, eval2)  # deterministic whatever the rng
  assert not np.allclose(eval1, train)


def test_bfloat16_compute_float32_params():
  model = bert.build("bert", **TINY, dtype=jnp.bfloat16)
  ids = jnp.ones((2, 6), jnp.int32)
  variables = jax.jit(model.init)(jax.random.key(0), ids)
  out, _ = apply(model, variables, ids)
  ref, _ = apply(bert.build("bert", **TINY), variables, ids)
  assert out.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=BF16_ATOL)


def test_position_ids():
  ids = jnp.array([[0, 5, 6, 1, 1]])
  np.testing.assert_array_equal(bert.position_ids(ids, "absolute", 1), [[0, 1, 2, 3, 4]])
  # RoBERTa: pad (1) stays 1, others count from pad + 1 = 2 over non-pad tokens.
  np.testing.assert_array_equal(bert.position_ids(ids, "roberta", 1), [[2, 3, 4, 1, 1]])


def test_too_long_sequence_is_an_error():
  model = bert.build("bert", **TINY)
  with pytest.raises(ValueError, match="max_position_embeddings=16"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 17), jnp.int32)))


def test_unknown_head_and_activation():
  ids = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="unknown head 'lm'"):
    jax.eval_shape(bert.build("bert", **TINY, head="lm").init, jax.random.key(0), ids)
  with pytest.raises(ValueError, match="unknown activation 'swish'"):
    jax.eval_shape(bert.build("bert", **TINY, hidden_act="swish").init, jax.random.key(0), ids)


def test_registry():
  assert models.family_of("minilm_l6") == "bert"
  model = models.build_model("roberta_base", num_hidden_layers=1)
  inputs = models.dummy_inputs("roberta_base", model, batch=2)
  assert inputs["x"].shape == (2, 8) and not (inputs["x"] == model.pad_token_id).any()
