"""Evaluation keeps the model's labels: dataset label names map onto the checkpoint's classes.

The classifiers here are tiny BERTs whose classifier weights are zero and whose bias forces one
class, so what they predict is known without training: a model that always says "acq" must
score 0.0 on a file of "crude" articles (rebuilding the class list from that file used to call
it 1.0).
"""

import csv
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxpretrain import models, params, pretrained
from jaxpretrain.data import sources
from jaxpretrain.job import evaluate_checkpoint
from jaxpretrain.job.config import ConfigError
from jaxpretrain.job.evaluation import label_mapping

REPO = pathlib.Path(__file__).resolve().parents[2]
CLASSES = ["acq", "crude", "earn"]
TINY_BERT = dict(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=16, max_position_embeddings=32, head="classification",
                 num_labels=3)


def forced_checkpoint(folder, winner, class_names=CLASSES):
  """A text classifier that always predicts class `winner` (zero kernel, bias 10 on it)."""
  model = models.build_model("bert", **TINY_BERT)
  variables = jax.jit(lambda: models.init_variables("bert", model, jax.random.key(0)))()
  flat = {k: np.asarray(v) for k, v in params.flatten(dict(variables)).items()}
  flat["params/classifier/kernel"] = np.zeros_like(flat["params/classifier/kernel"])
  flat["params/classifier/bias"] = 10.0 * np.eye(3, dtype=np.float32)[winner]
  return pretrained.save_pretrained(
      folder, "bert", TINY_BERT, params.unflatten(flat),
      preprocessing={"tokenizer": "tokenizer.json", "max_len": 16},
      files={"tokenizer.json": sources.minilm_tokenizer_path()}, class_names=class_names)


def write_csv(path, labels):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["text", "label"])
    for i, label in enumerate(labels):
      w.writerow([f"oil prices and shares number {i}", label])
  return f"csv:{path}"


@pytest.fixture(scope="module")
def always_acq(tmp_path_factory):
  return forced_checkpoint(tmp_path_factory.mktemp("acq") / "ckpt", CLASSES.index("acq"))


@pytest.fixture(scope="module")
def always_crude(tmp_path_factory):
  return forced_checkpoint(tmp_path_factory.mktemp("crude") / "ckpt", CLASSES.index("crude"))


def test_always_acq_scores_zero_on_crude_articles(always_acq, tmp_path):
  dataset = write_csv(tmp_path / "crude.csv", ["crude"] * 6)
  m = evaluate_checkpoint(always_acq, dataset, split="all", output_dir=tmp_path,
                          log=lambda _: None)
  assert m["accuracy"] == 0.0 and m["num_examples"] == 6
  assert m["class_names"] == CLASSES
  assert [(r["name"], r["support"]) for r in m["per_class"]] == [
      ("acq", 0), ("crude", 6), ("earn", 0)]
  assert m["confusion"][1] == [6, 0, 0]  # every crude article predicted acq


def test_subset_of_classes_is_scored_against_the_models_classes(always_crude, tmp_path):
  # The file's own sorted classes would be crude=0, earn=1; the model's are acq, crude, earn.
  dataset = write_csv(tmp_path / "subset.csv", ["earn", "crude", "earn", "crude", "crude"])
  m = evaluate_checkpoint(always_crude, dataset, split="all", output_dir=tmp_path,
                          log=lambda _: None)
  assert m["accuracy"] == pytest.approx(3 / 5)
  rows = {r["name"]: r for r in m["per_class"]}
  assert list(rows) == CLASSES
  assert (rows["acq"]["support"], rows["crude"]["support"], rows["earn"]["support"]) == (0, 3, 2)
  assert rows["crude"]["recall"] == 1.0 and rows["crude"]["precision"] == pytest.approx(0.6)
  assert rows["earn"]["recall"] == 0.0
  (md,) = tmp_path.glob("eval_*_all.md")
  assert "| acq | 0.0000 | 0.0000 | 0.0000 | 0 |" in md.read_text()


def test_unknown_label_is_a_one_line_error(always_acq, tmp_path):
  dataset = write_csv(tmp_path / "ship.csv", ["crude", "ship", "acq"])
  out = tmp_path / "out"
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "jaxpretrain.evaluate", f"--checkpoint={always_acq}",
       f"--dataset={dataset}", "--split=all", f"--output_dir={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "label 'ship'" in lines[0] and "'acq', 'crude', 'earn'" in lines[0]
  assert not out.exists()


def test_checkpoint_without_class_names_falls_back_with_a_warning(tmp_path):
  ckpt = forced_checkpoint(tmp_path / "ckpt", 0, class_names=None)
  logged = []
  m = evaluate_checkpoint(ckpt, write_csv(tmp_path / "c.csv", ["crude"] * 4), split="all",
                          output_dir=tmp_path, log=logged.append)
  assert m["accuracy"] == 1.0  # the old behaviour: the file's only class is id 0
  assert any(line.startswith("warning:") and "no class names" in line for line in logged)


def test_label_mapping():
  np.testing.assert_array_equal(label_mapping(["earn", "acq"], CLASSES, what="d"), [2, 0])
  warned = []
  np.testing.assert_array_equal(
      label_mapping(["0", "1"], CLASSES, what="d", warn=warned.append), [0, 1])
  assert "integer labels" in warned[0]
  with pytest.raises(ConfigError, match="integer labels up to 3 but the model has 3 classes"):
    label_mapping(["0", "1", "2", "3"], CLASSES, what="d")
  with pytest.raises(ConfigError, match="'crane', which names more than one"):
    label_mapping(["crane"], ["crane", "dog", "crane"], what="d")
  with pytest.raises(ConfigError, match=r"label 'x', which the model does not know \(and 1 more"):
    label_mapping(["x", "acq", "y"], CLASSES, what="d")
