"""Model ranking: rank correlations against scipy and by hand, reports, the CLI end to end."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxpretrain.select import features, rank

# Sums over at most a few hundred pairs in float64.
TAU_ATOL = 1e-12


# ------------------------------------------------------------------------------------------
# Kendall's tau and weighted tau.
# ------------------------------------------------------------------------------------------


def test_kendall_tau_by_hand():
  assert rank.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
  assert rank.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
  # One swap among 4: C = 5, D = 1 of 6 pairs -> 4 / 6.
  assert rank.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3, abs=TAU_ATOL)
  # tau-b: x has one tied pair; C = 2, D = 0, P - T_x = 2, P - T_y = 3 -> 2 / sqrt(6).
  assert rank.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
  assert math.isnan(rank.kendall_tau([1, 1, 1], [1, 2, 3]))


def test_weighted_tau_by_hand():
  assert rank.weighted_tau([3, 2, 1], [30, 20, 10]) == pytest.approx(1.0)
  assert rank.weighted_tau([3, 2, 1], [10, 20, 30]) == pytest.approx(-1.0)
  # x ranks a > b > c, y ranks a > c > b. Ranks by (x, y): a0 b1 c2, weights 1, 1/2, 1/3;
  # pairs ab +(3/2), ac +(4/3), bc -(5/6): (3/2 + 4/3 - 5/6) / (3/2 + 4/3 + 5/6) = 6/11.
  # By (y, x): a0 c1 b2, weights 1, 1/3 (b), 1/2 (c): ab +(4/3), ac +(3/2), bc -(5/6), the same.
  assert rank.weighted_tau([3, 2, 1], [3, 1, 2]) == pytest.approx(6 / 11, abs=TAU_ATOL)
  # A swap at the top costs more than one at the bottom (plain Kendall sees no difference).
  x = [4, 3, 2, 1, 0]
  top, bottom = [3, 4, 2, 1, 0], [4, 3, 2, 0, 1]
  assert rank.kendall_tau(x, top) == rank.kendall_tau(x, bottom)
  assert rank.weighted_tau(x, top) < rank.weighted_tau(x, bottom)


def test_tau_against_scipy_with_ties():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  for trial in range(300):
    n = int(rng.integers(2, 15))
    x = rng.integers(0, 4, n) if trial % 2 else rng.normal(size=n)  # ties in half the cases
    y = rng.integers(0, 4, n) if trial % 3 else rng.normal(size=n)
    with np.errstate(invalid="ignore", divide="ignore"):
      want_k = stats.kendalltau(x, y).statistic
      want_w = stats.weightedtau(x, y).statistic
    np.testing.assert_allclose(rank.kendall_tau(x, y), want_k, atol=TAU_ATOL, equal_nan=True)
    np.testing.assert_allclose(rank.weighted_tau(x, y), want_w, atol=TAU_ATOL, equal_nan=True)


def test_tau_input_errors():
  with pytest.raises(ValueError, match="same length; got 2 and 3"):
    rank.kendall_tau([1, 2], [1, 2, 3])
  with pytest.raises(ValueError, match="finite"):
    rank.weighted_tau([1, np.nan], [1, 2])


# ------------------------------------------------------------------------------------------
# Scores and reports.
# ------------------------------------------------------------------------------------------


def _results():
  mk = lambda name, s, acc: rank.CandidateResult(  # noqa: E731
      name=name, spec=name, model="resnet_tiny", feature_dim=64, num_examples=100, scores=s,
      seconds={}, finetune_accuracy=acc)
  return [mk("good", {"logme": 1.0, "leep": -0.5}, 0.9),
          mk("bad", {"logme": -1.0, "leep": None}, 0.5),
          mk("mid", {"logme": 0.2, "leep": -0.9}, 0.7)]


def test_compute_scores_skips_head_scores_without_probs():
  rng = np.random.default_rng(0)
  y = np.arange(60) % 3
  f = features.Features(features=rng.normal(size=(60, 5)) + y[:, None], labels=y,
                        indices=np.arange(60))
  values, secs = rank.compute_scores(f, ["logme", "leep", "knn"])
  assert values["leep"] is None and set(secs) == {"logme", "knn"}
  assert values["knn"] > 0.5
  with pytest.raises(ValueError, match=r"unknown score\(s\) \['logmee'\]; known"):
    rank.check_scores(["logme", "logmee"])


def test_correlations_and_ranks():
  corr = rank.correlations(_results(), ["logme", "leep"])
  assert corr["logme"]["n"] == 3 and corr["logme"]["kendall_tau"] == pytest.approx(1.0)
  assert corr["logme"]["top1"] == "good" and corr["logme"]["top1_hit"]
  assert corr["leep"]["n"] == 2  # "bad" has no head
  assert rank.ranks([0.1, None, 0.5, 0.1]) == [2, None, 1, 2]


def test_reports_written(tmp_path):
  results = _results()
  corr = rank.correlations(results, ["logme", "leep"])
  md = rank.markdown_table(results, ["logme", "leep"], corr, title="t")
  lines = md.splitlines()
  assert lines[0] == "## t"
  assert lines[4].startswith("| good |") and lines[6].startswith("| bad |")  # by accuracy
  assert "| bad | resnet_tiny | 64 | -1.0000 (3) | — | 0.5000 (3) |" in md
  assert "| logme | 3 | 1.000 | 1.000 | good ✓ | 0.9000 |" in md
  rank.write_csv(tmp_path / "r.csv", results, ["logme", "leep"])
  with open(tmp_path / "r.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["candidate"] for r in rows] == ["good", "bad", "mid"]
  assert rows[1]["leep"] == "" and float(rows[2]["finetune_accuracy"]) == 0.7
  rank.plot_scores(tmp_path / "s.png", results, ["logme", "leep"], title="t")
  assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------
# The CLI end to end.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  pytest.importorskip("sklearn")
  from jaxpretrain.data import builders

  path = str(tmp_path_factory.mktemp("tfds"))
  builders.build("digits_local", path)
  return path


def _cli(args, cwd):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "jaxpretrain.select", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_end_to_end(digits_dir, tmp_path):
  other = features.write_random_checkpoint(tmp_path / "tiny_seed1", "resnet_tiny", seed=1)
  workdir = tmp_path / "work"
  args = [f"--candidates=random:resnet_tiny,{other}", "--dataset=digits_local",
          f"--data_dir={digits_dir}", "--max_examples=120", f"--workdir={workdir}",
          "--scores=logme,h_score,knn,leep", "--image_size=16", "--batch_size=32"]
  proc = _cli(args, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "features of 4/4 batches" in proc.stderr  # progress messages
  report = json.loads((workdir / "results.json").read_text())
  assert [r["name"] for r in report["results"]] == ["random_resnet_tiny", "tiny_seed1"]
  for r in report["results"]:
    assert r["num_examples"] == 120 and r["feature_dim"] == 64
    assert r["scores"]["leep"] is None and math.isfinite(r["scores"]["logme"])
  md = (workdir / "ranking.md").read_text()
  assert "digits_local: 120 examples, 2 candidates" in md and "| tiny_seed1 |" in md
  assert (workdir / "ranking.csv").is_file() and (workdir / "scores.png").is_file()
  cached = workdir / "features" / "tiny_seed1.npz"
  mtime = cached.stat().st_mtime_ns
  proc = _cli(args, tmp_path)  # again: features come from the cache
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tiny_seed1: features from" in proc.stderr
  assert cached.stat().st_mtime_ns == mtime


def test_cli_rejects_unknown_score(tmp_path):
  proc = _cli(["--candidates=random:resnet_tiny", "--dataset=digits_local",
               f"--workdir={tmp_path}", "--scores=logmee"], tmp_path)
  assert proc.returncode != 0 and "unknown score(s) ['logmee']; known:" in proc.stderr


def test_select_models_with_finetune_fn_caches_runs(digits_dir, tmp_path):
  calls = []

  def fake_finetune(cand):  # stands in for the training job: a fixed accuracy per candidate
    calls.append(cand.name)
    return {"a": 0.9, "b": 0.4}[cand.name]

  kw = dict(dataset="digits_local", data_dir=digits_dir, workdir=tmp_path, max_examples=60,
            scores=["logme", "knn"], image_size=16, batch_size=32,
            finetune_fn=fake_finetune, finetune_settings={"steps": 1})
  other = features.write_random_checkpoint(tmp_path / "b", "resnet_tiny", seed=1)
  specs = ["a=random:resnet_tiny", f"b={other}"]
  report = rank.select_models(specs, **kw)
  assert calls == ["a", "b"]
  assert [r["finetune_accuracy"] for r in report["results"]] == [0.9, 0.4]
  assert report["correlations"]["logme"]["n"] == 2
  assert "Rank agreement with finetune_accuracy" in (tmp_path / "ranking.md").read_text()
  rank.select_models(specs, **kw)  # cached: no new fine-tuning
  assert calls == ["a", "b"]
  rank.select_models(specs, **{**kw, "finetune_settings": {"steps": 2}})  # new recipe: rerun
  assert calls == ["a", "b", "a", "b"]
  with pytest.raises(ValueError, match=r"distinct candidate names.*repeated: \['a'\]"):
    rank.select_models(["a=random:resnet_tiny", "a=random:resnet18"], **kw)


@pytest.mark.slow
def test_make_finetune_fn_runs_the_job(digits_dir, tmp_path):
  pytest.importorskip("jaxpretrain.job")
  cand = features.load_candidate("random:resnet_tiny", tmp_path)
  fn = rank.make_finetune_fn(workdir=tmp_path, dataset="digits_local", data_dir=digits_dir,
                             steps=2, learning_rate=1e-3, batch_size=8, image_size=16)
  acc = fn(cand)
  assert 0.0 <= acc <= 1.0
  assert len(list((tmp_path / "finetune").glob("random_resnet_tiny-*/final.json"))) == 1
