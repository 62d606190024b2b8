"""CLIP's zero-shot classification as a model-selection baseline: the zero_shot score.

The tiny CLIPModel of tests/test_zero_shot.py (tests/parity/test_families2_parity.py's config,
a WordLevel tokenizer.json made like CLIP's, converted with ports.convert), here with the
digits "0".."9" in its vocabulary so that digits_local's class names make distinct prompts.
"""

import csv
import json
import shutil

import numpy as np
import pytest

import jaxpretrain
from jaxpretrain import data
from jaxpretrain.data import loaders
from jaxpretrain.models import clip as jclip
from jaxpretrain.select import features, rank
from tests import torch_refs
from tests.parity.test_families2_parity import CLIP, CLIP_TEXT
from tests.select.test_rank import digits_dir  # noqa: F401 -- the fixture

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

# The same float32 image features and prompt weights on both sides under "highest" precision;
# only XLA's fusion of the one jitted forward pass against api's two calls differs.
PROB_RTOL = 1e-5
LABELS = ["cat", "dog", "fish"]
DIGITS = [str(d) for d in range(10)]
WORDS = ["a", "photo", "of", *LABELS, *DIGITS]
SIZE = CLIP["vision_config"]["image_size"]
_SAVE = torch_refs.clip_saver(WORDS, CLIP_TEXT["vocab_size"], SIZE)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  """The converted CLIPModel checkpoint folder."""
  ported = torch_refs.hf_ported(tmp_path_factory, {"CLIPModel": ("CLIPModel", "CLIPConfig",
                                                                 CLIP)}, save=_SAVE)
  return ported("CLIPModel")[2]


def test_zero_shot_score_is_the_accuracy_of_pretrained_zero_shot(clip_dir, tmp_path,
                                                                   highest_precision):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 20, 20, 3), np.uint8)  # resized and cropped to 16
  probs = jaxpretrain.load(clip_dir, batch_size=4).zero_shot(images, LABELS)
  pred = np.argmax(probs, axis=1)
  # Labels the classifier gets right on the first 7 images and wrong on the other 5.
  labels = np.where(np.arange(12) < 7, pred, (pred + 1) % 3)
  cand = features.load_candidate(str(clip_dir), tmp_path)
  feats = features.extract_features(cand, loaders.ArraySource(images, labels), batch_size=8,
                                    class_names=LABELS)
  assert feats.zero_shot_unavailable is None and feats.zero_shot_logits.shape == (12, 3)
  z = feats.zero_shot_logits.astype(np.float64)
  got = np.exp(z - z.max(1, keepdims=True))
  np.testing.assert_allclose(got / got.sum(1, keepdims=True), probs, rtol=PROB_RTOL)
  values, why, _ = rank.compute_scores(feats, ["zero_shot", "logme"], num_classes=3)
  assert why == {} and values["zero_shot"] == 7 / 12
  # Without class names: no zero-shot logits, and the score says why.
  plain = features.extract_features(cand, loaders.ArraySource(images, labels), batch_size=8)
  assert plain.zero_shot_logits is None and plain.zero_shot_unavailable is None
  np.testing.assert_array_equal(plain.features, feats.features)  # the same forward pass
  values, why, _ = rank.compute_scores(plain, ["zero_shot"])
  assert values == {"zero_shot": None} and why == {"zero_shot": rank.NO_ZERO_SHOT}


def test_select_ranks_zero_shot_with_the_other_scores(clip_dir, digits_dir, tmp_path):  # noqa: F811
  bare = tmp_path / "bare"  # a CLIPModel without its tokenizer.json
  shutil.copytree(clip_dir, bare)
  (bare / "tokenizer.json").unlink()
  work = tmp_path / "work"
  accuracy = {"clip": 0.9, "random_resnet_tiny": 0.5, "bare": 0.7}
  logs = []
  kw = dict(dataset="digits_local", data_dir=digits_dir, workdir=work, max_examples=40,
            scores=["logme", "leep", "zero_shot"], image_size=16, batch_size=32,
            finetune_fn=lambda cand, seed: accuracy[cand.name], finetune_settings={"steps": 1},
            bootstrap=0, measure_cost=False, log=logs.append)
  specs = [f"clip={clip_dir}", "random:resnet_tiny", f"bare={bare}"]
  report = rank.select_models(specs, **kw)
  res = {r["name"]: r for r in report["results"]}
  assert all(r["status"] == "ok" for r in res.values()), res
  value = res["clip"]["scores"]["zero_shot"]
  assert 0.0 <= value <= 1.0 and "zero_shot" not in res["clip"]["unavailable"]
  assert res["clip"]["unavailable"] == {"leep": rank.NO_HEAD}
  assert res["random_resnet_tiny"]["scores"]["zero_shot"] is None
  assert res["random_resnet_tiny"]["unavailable"]["zero_shot"] == features.NO_TEXT_TOWER
  assert res["bare"]["scores"]["zero_shot"] is None
  assert res["bare"]["unavailable"]["zero_shot"].startswith(
      f"{bare}: no tokenizer.json for the label prompts; convert from a CLIP folder")
  corr = report["correlations"]["zero_shot"]
  # It rates one of three candidates: no pick (rank.correlations), as a saturated score.
  assert corr["n"] == 1 and corr["top1"] is None and corr["regret"] is None
  saved = json.loads((work / "results.json").read_text())
  assert saved["settings"]["scores"] == ["logme", "leep", "zero_shot"]
  assert saved["correlations"]["zero_shot"]["n"] == 1
  md = (work / "ranking.md").read_text()
  group = md.index("### Zero-shot: needs a text tower")
  assert md.index("### Scores that need a source classification head") < group
  table = md[group:md.index("### Rank agreement")]
  assert f"| clip | clip | 24 | {value:.4f} (1) | 0.9000 ± 0.0000 (1) |" in table
  assert "| random_resnet_tiny | resnet_tiny | 64 | n/a | 0.5000 ± 0.0000 (3) |" in table
  assert "| zero_shot | 1 | n/a | n/a | n/a | n/a | n/a |" in md
  assert f"- zero_shot n/a for random_resnet_tiny: {features.NO_TEXT_TOWER}" in md
  assert f"- zero_shot n/a for bare: {bare}: no tokenizer.json" in md
  assert "nan" not in md.lower()
  with open(work / "ranking.csv") as f:
    rows = {r["candidate"]: r for r in csv.DictReader(f)}
  assert float(rows["clip"]["zero_shot"]) == value and rows["bare"]["zero_shot"] == ""
  # Again: every candidate's features (and zero-shot logits) come from the cache.
  logs.clear()
  again = rank.select_models(specs, **kw)
  assert all(f"{n}: features from" in "\n".join(logs) for n in accuracy)
  assert {r["name"]: r["scores"] for r in again["results"]} == {
      n: r["scores"] for n, r in res.items()}
  assert again["results"][1]["unavailable"]["zero_shot"] == features.NO_TEXT_TOWER
  # Other class names are another cache key: the CLIPModel's logits are made again (here,
  # the same prompts in reverse order: the same logits, columns reversed).
  source, meta = data.load_dataset("digits_local", digits_dir, "train")
  assert list(meta.class_names) == DIGITS
  indices = features.stratified_subset(features.source_labels(source), 40, 0)
  cand = features.load_candidate(f"clip={clip_dir}", work / "candidates")
  first, _ = rank._cached_features(cand, source, indices, report["settings"], work,
                                   batch_size=32, class_names=DIGITS)
  logs.clear()
  turned, secs = rank._cached_features(cand, source, indices, report["settings"], work,
                                       batch_size=32, log=logs.append,
                                       class_names=DIGITS[::-1])
  assert secs > 0 and not any("features from" in line for line in logs)
  np.testing.assert_allclose(turned.zero_shot_logits, first.zero_shot_logits[:, ::-1],
                             rtol=1e-6)
  prompts = jclip.prompts(DIGITS)
  assert prompts[3] == "a photo of a 3"  # bare integer class names are used as given
