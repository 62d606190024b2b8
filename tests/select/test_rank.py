"""Model ranking: rank correlations, seeds and bootstrap intervals, regret, budgets, reports, the
CLI end to end."""

import csv
import dataclasses
import json
import math
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxpretrain import models, pretrained
from jaxpretrain.select import cost as cost_lib
from jaxpretrain.select import features, rank
from jaxpretrain.select.scores import SCORES

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


def test_tau_is_scipys():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  for trial in range(20):
    n = int(rng.integers(2, 15))
    x = rng.integers(0, 4, n) if trial % 2 else rng.normal(size=n)  # ties in half the cases
    y = rng.normal(size=n)
    assert rank.kendall_tau(x, y) == stats.kendalltau(x, y).statistic
    assert rank.weighted_tau(x, y) == stats.weightedtau(x, y).statistic
  assert math.isnan(rank.kendall_tau([1.0], [2.0])) and math.isnan(rank.weighted_tau([1], [2]))
  assert math.isnan(rank.weighted_tau([1, 1, 1], [1, 2, 3]))  # constant: NaN, no warning


def test_tau_input_errors():
  with pytest.raises(ValueError, match="same length; got 2 and 3"):
    rank.kendall_tau([1, 2], [1, 2, 3])
  with pytest.raises(ValueError, match="finite"):
    rank.weighted_tau([1, np.nan], [1, 2])


# ------------------------------------------------------------------------------------------
# Seeds, bootstrap intervals and regret.
# ------------------------------------------------------------------------------------------


def _mk(name, s, accs=None, status="ok", cost=None):
  r = rank.CandidateResult(name=name, spec=name, model="resnet_tiny", feature_dim=64,
                           num_examples=100, scores=s, status=status, cost=cost)
  if accs is not None:
    r.set_finetune(accs)
  return r


def _results():
  return [_mk("good", {"logme": 1.0, "leep": -0.5}, [0.9]),
          _mk("bad", {"logme": -1.0, "leep": None}, [0.5]),
          _mk("mid", {"logme": 0.2, "leep": -0.9}, [0.7])]


def test_set_finetune_mean_and_std():
  r = _mk("a", {}, [0.8, 0.9, 0.7])
  assert r.finetune_accuracy == pytest.approx(0.8) and r.finetune_std == pytest.approx(0.1)
  assert _mk("b", {}, [0.6]).finetune_std == 0.0


def test_bootstrap_seed_means():
  accs = [[0.5, 0.5, 0.5], [0.6, 0.8], [0.9]]
  m = rank.bootstrap_seed_means(accs, 2000, seed=0)
  assert m.shape == (2000, 3)
  np.testing.assert_array_equal(m[:, 0], 0.5)  # identical seeds: no spread
  np.testing.assert_array_equal(m[:, 2], 0.9)  # one seed: nothing to resample
  # Two seeds: the mean of a resample is 0.6, 0.7 or 0.8 with probabilities 1/4, 1/2, 1/4.
  counts = {v: np.mean(np.isclose(m[:, 1], v)) for v in (0.6, 0.7, 0.8)}
  assert sum(counts.values()) == 1.0
  assert abs(counts[0.7] - 0.5) < 0.05 and abs(counts[0.6] - 0.25) < 0.05, counts
  np.testing.assert_array_equal(m, rank.bootstrap_seed_means(accs, 2000, seed=0))  # seeded
  assert not np.array_equal(m, rank.bootstrap_seed_means(accs, 2000, seed=1))


def test_correlations_intervals_over_seeds():
  # Well separated candidates (seed noise 0.002, gaps 0.1): every resample keeps the order.
  sep = [_mk(f"c{i}", {"logme": float(i)}, [0.5 + 0.1 * i + d for d in (-0.002, 0, 0.002)])
         for i in range(4)]
  c = rank.correlations(sep, ["logme"], bootstrap=300)["logme"]
  assert c["kendall_tau"] == 1.0 and c["kendall_tau_ci"] == [1.0, 1.0]
  np.testing.assert_allclose(c["weighted_tau_ci"], [1.0, 1.0], atol=TAU_ATOL)
  # Near-ties (gaps 0.001, seed noise 0.05): the interval is wide and holds the estimate.
  tie = [_mk(f"c{i}", {"logme": float(i)}, [0.7 + 0.001 * i + d for d in (-0.05, 0, 0.05)])
         for i in range(4)]
  c = rank.correlations(tie, ["logme"], bootstrap=300)["logme"]
  lo, hi = c["kendall_tau_ci"]
  assert lo < 0 < hi and lo <= c["kendall_tau"] <= hi and hi - lo > 1.0, c
  assert rank.correlations(tie, ["logme"], bootstrap=300) == rank.correlations(
      tie, ["logme"], bootstrap=300)  # seeded
  one = rank.correlations(_results(), ["logme"])["logme"]  # one seed: no interval
  assert one["kendall_tau_ci"] is None and one["weighted_tau_ci"] is None


def test_regret():
  assert rank.regret([0.1, 0.9, 0.5], [0.80, 0.75, 0.82]) == (1, pytest.approx(0.07))
  assert rank.regret([3, 3, 1], [0.5, 0.9, 0.1]) == (0, pytest.approx(0.4))  # first of ties
  assert rank.regret([1.0], [0.6], best=0.9) == (0, pytest.approx(0.3))
  res = [_mk("a", {"logme": 0.1, "leep": None}, [0.80, 0.82]),  # best mean 0.81, no head
         _mk("b", {"logme": 0.9, "leep": -0.2}, [0.74, 0.76]),
         _mk("c", {"logme": 0.5, "leep": -0.9}, [0.78, 0.80]),
         _mk("d", {"logme": 2.0, "leep": 0.0}, [0.99], status="over_budget")]  # not counted
  corr = rank.correlations(res, ["logme", "leep"], bootstrap=50)
  assert corr["logme"]["top1"] == "b" and corr["logme"]["regret"] == pytest.approx(0.06)
  # LEEP cannot rate "a" (no head): it picks "b" among the others and pays against "a".
  assert corr["leep"]["n"] == 2 and corr["leep"]["regret"] == pytest.approx(0.06)
  res[2].scores["logme"] = 5.0
  assert rank.correlations(res, ["logme"])["logme"]["regret"] == pytest.approx(0.02)
  # Rating one of several (the others saturated or n/a) is no choice: no pick, no regret.
  res[1].scores["leep"] = None
  one = rank.correlations(res, ["leep"])["leep"]
  assert one["n"] == 1 and one["top1"] is None and one["regret"] is None


def test_recommend_within_budget():
  res = [_mk("a", {"logme": 0.3}), _mk("b", {"logme": 0.9}, status="over_budget"),
         _mk("c", {"logme": 0.5}), _mk("d", {"logme": None})]
  assert rank.recommend(res, "logme") == {"by": "logme", "candidate": "c", "value": 0.5,
                                          "within_budget": 3, "reason": None}
  none = rank.recommend(res[1:2], "logme")
  assert none["candidate"] is None and "no candidate within budget" in none["reason"]
  assert rank.check_recommend_by(None, ["knn", "logme"]) == "logme"
  assert rank.check_recommend_by(None, ["knn", "gbc"]) == "knn"
  with pytest.raises(ValueError, match="recommend_by 'sfda' is not among"):
    rank.check_recommend_by("sfda", ["logme"])


# ------------------------------------------------------------------------------------------
# Scores and reports.
# ------------------------------------------------------------------------------------------


def test_compute_scores_marks_unavailable_scores_with_reasons():
  rng = np.random.default_rng(0)
  y = np.arange(60) % 3
  f = features.Features(features=rng.normal(size=(60, 5)) + y[:, None], labels=y,
                        indices=np.arange(60))
  values, why, secs = rank.compute_scores(f, ["logme", "leep", "knn"])
  assert values["leep"] is None and why == {"leep": rank.NO_HEAD}
  assert set(secs) == {"logme", "knn"} and values["knn"] > 0.5
  values, why, _ = rank.compute_scores(f, ["logme", "gbc"], num_classes=100)
  assert values == {"logme": None, "gbc": None}
  assert why["gbc"] == "gbc: 60 examples for 100 classes; need at least one per class"
  const = features.Features(features=np.ones((60, 5)), labels=y, indices=np.arange(60))
  values, why, _ = rank.compute_scores(const, ["logme", "sfda"])
  assert values == {"logme": None, "sfda": None} and "features are constant" in why["sfda"]
  with pytest.raises(ValueError, match=r"unknown score\(s\) \['logmee'\]; known"):
    rank.check_scores(["logme", "logmee"])


def test_correlations_and_ranks():
  corr = rank.correlations(_results(), ["logme", "leep"])
  assert corr["logme"]["n"] == 3 and corr["logme"]["kendall_tau"] == pytest.approx(1.0)
  assert corr["logme"]["top1"] == "good" and corr["logme"]["top1_hit"]
  assert corr["logme"]["regret"] == 0.0
  assert corr["leep"]["n"] == 2  # "bad" has no head
  assert rank.ranks([0.1, None, 0.5, 0.1]) == [2, None, 1, 2]


def test_reports_written(tmp_path):
  cost = {"params": 1000, "gflops_per_example": 0.002, "latency_ms": 2.0, "throughput": 500.0,
          "peak_memory_bytes": 2**20, "device": "cpu", "batch_size": 8, "repeats": 3,
          "warmup": 1}
  results = _results()
  for r, tput in zip(results, (100.0, 800.0, 400.0), strict=True):
    r.cost = {**cost, "throughput": tput}
  results[1].unavailable = {"leep": rank.NO_HEAD}
  results.append(_mk("huge", {}, status="over_budget", cost={**cost, "params": 10**9}))
  results[-1].reason = "1,000,000,000 parameters > max_params=1,000,000"
  results.append(_mk("broken", {}, status="failed"))
  results[-1].reason = "failed to load: ValueError: no config.json"
  corr = rank.correlations(results, ["logme", "leep"])
  rec = rank.recommend(results, "logme")
  md = rank.markdown_table(results, ["logme", "leep"], corr, title="t", recommendation=rec,
                           budgets={"max_params": 1e6}, finetune_seeds=1)
  assert md.startswith("## t\n")
  assert "Recommended: **good**, the best logme (1.0000) of 3 candidate(s) within budget " \
         "(budgets: max_params=1e+06)." in md
  assert "| huge | 1,000,000,000 | 0.002 | 2 | 500 | 1.0 | over_budget |" in md
  assert "| good | 1,000 | 0.002 | 2 | 100 | 1.0 | ok |" in md
  assert "| broken | n/a | n/a | n/a | n/a | n/a | failed |" in md
  feats = md.index("### Scores that need only features")
  head = md.index("### Scores that need a source classification head")
  assert feats < md.index("| good | resnet_tiny | 64 | 1.0000 (1) | 0.9000 ± 0.0000 (1) |") < head
  assert "| bad | resnet_tiny | 64 | n/a | 0.5000 ± 0.0000 (3) |" in md[head:]  # leep n/a
  assert "| logme | 3 | 1.000 | 1.000 | good ✓ | 0.9000 | 0.0000 |" in md
  assert "- huge: over budget — 1,000,000,000 parameters > max_params=1,000,000" in md
  assert "- broken: failed — failed to load: ValueError: no config.json" in md
  assert f"- leep n/a for bad: {rank.NO_HEAD}" in md
  assert "- not requested (--scores): nce, h_score," in md
  assert "nan" not in md.lower()
  rank.write_csv(tmp_path / "r.csv", results, ["logme", "leep"])
  with open(tmp_path / "r.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["candidate"] for r in rows] == ["good", "bad", "mid", "huge", "broken"]
  assert rows[1]["leep"] == "" and float(rows[2]["finetune_accuracy"]) == 0.7
  assert rows[3]["status"] == "over_budget" and rows[3]["params"] == str(10**9)
  assert rows[0]["throughput"] == "100.0" and rows[4]["params"] == ""
  rank.plot_scores(tmp_path / "s.png", results, ["logme", "leep"], title="t")
  assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert rank.plot_pareto(tmp_path / "p.png", results, "logme", title="t")
  assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not rank.plot_pareto(tmp_path / "none.png", results, "nce")


def test_saturated_h_score_is_detected():
  rng = np.random.default_rng(0)
  y = np.arange(20) % 3

  def check(f):
    feats = features.Features(features=f, labels=y, indices=np.arange(20))
    values, _, _ = rank.compute_scores(feats, ["h_score", "shrinkage_h_score", "sfda"])
    return values, rank.saturated_scores(feats, values)

  values, sat = check(rng.normal(size=(20, 30)))  # d >= n: any labelling is separable
  assert values["h_score"] == pytest.approx(2.0) and list(sat) == ["h_score", "sfda"]
  assert sat["h_score"].startswith("saturated: feature dim 30 >= 20 examples")
  assert values["sfda"] >= 1 - rank.SFDA_SATURATION_ATOL
  assert sat["sfda"] == ("saturated: 1.0000 is its maximum, 1 (its discriminant separates the "
                         "20 examples it was fitted on)")
  values, sat = check(rng.normal(size=(20, 19)))  # d = n - 1: at its maximum, by value
  assert sat["h_score"] == "saturated: 2.0000 is its maximum, classes - 1 = 2"
  values, sat = check(rng.normal(size=(20, 4)) + y[:, None])  # informative, not saturated
  assert sat == {} and 0 < values["h_score"] < 2 and values["shrinkage_h_score"] > 0
  assert 1 / 3 < values["sfda"] < 1 - rank.SFDA_SATURATION_ATOL


def _saturated_results():
  res = [_mk("a", {"h_score": 2.0, "knn": 0.6, "leep": None}),
         _mk("b", {"h_score": 1.2, "knn": 0.8, "leep": None}),
         _mk("c", {"h_score": 0.4, "knn": 0.5, "leep": None})]
  res[0].saturated = {"h_score": "saturated: feature dim 64 >= 20 examples"}
  for r in res:
    r.unavailable = {"leep": rank.NO_HEAD}
  return res


def test_saturated_score_is_shown_not_ranked_in_ranking_md():
  res = _saturated_results()
  rec = rank.recommend(res, "h_score")
  assert rec["candidate"] == "b"  # a's saturated 2.0 is not a pick
  md = rank.markdown_table(res, ["h_score", "knn", "leep"], title="t", recommendation=rec)
  assert "Higher is better for every score" in md
  assert "knn and linear_probe are cross-validated accuracies" in md
  assert "| a | resnet_tiny | 64 | 2.0000 saturated | 0.6000 (2) |" in md
  assert "| b | resnet_tiny | 64 | 1.2000 (1) | 0.8000 (1) |" in md
  assert "| c | resnet_tiny | 64 | 0.4000 (2) | 0.5000 (3) |" in md
  assert "- h_score not ranked for a: saturated: feature dim 64 >= 20 examples" in md
  for r in res:
    r.set_finetune([{"a": 0.9, "b": 0.7, "c": 0.5}[r.name]])
  corr = rank.correlations(res, ["h_score"])["h_score"]
  assert corr["n"] == 2 and corr["top1"] == "b" and corr["regret"] == pytest.approx(0.2)
  res[1].saturated = res[2].saturated = dict(res[0].saturated)
  assert "(saturated: a, b, c)" in rank.recommend(res, "h_score")["reason"]


def test_score_axes_cover_every_score():
  assert set(rank.SCORE_AXES) == {*rank.SCORE_NAMES, rank.FINETUNE}
  assert set(rank.SCORE_NAMES) == {*SCORES, "zero_shot"}
  for kind, _ in rank.SCORE_AXES.values():
    assert kind in ("zero", "unit", "range")
  assert rank._axis_range([0.6, 0.8], "unit") == (0.0, 1.12)
  assert rank._axis_range([0.4, 2.0], "zero")[0] == 0.0  # H-scores: magnitudes from zero
  assert rank._axis_range([-40.0, -38.0], "range")[0] < -40.0  # LogME-like: the values' range
  assert rank._axis_range([-40.0, -38.0], "range")[1] < 0.0


def test_scores_chart_renders(tmp_path):
  res = _saturated_results()
  for r in res:
    r.set_finetune([0.5])
  rank.plot_scores(tmp_path / "s.png", res, ["h_score", "knn", "leep", "logme"], title="t",
                   recommendation=rank.recommend(res, "knn"))
  assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # What each panel says (text and legend) is read back from the figure matplotlib drew.
  import matplotlib.pyplot as plt

  captured = {}
  original = plt.close
  plt.close = lambda fig=None: captured.setdefault("fig", fig)
  try:
    rank.plot_scores(tmp_path / "s2.png", res, ["h_score", "knn", "leep", "logme"],
                     recommendation=rank.recommend(res, "knn"))
  finally:
    plt.close = original
  fig = captured["fig"]
  texts = [t.get_text() for ax in fig.axes for t in ax.texts]
  assert rank.NEEDS_HEAD in texts and "n/a for every candidate" in texts  # leep, logme
  assert any("saturated, not ranked" in t for t in texts)
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == ["top candidate by this score", "other candidates", "saturated: not ranked"]
  assert "higher is better in every panel; recommended (bold): b by knn" in \
      fig._suptitle.get_text()
  h_ax, knn_ax = fig.axes[0], fig.axes[1]
  assert h_ax.get_xlim()[0] == 0.0 and knn_ax.get_xlim() == (0.0, 1.12)
  assert "accuracy" in knn_ax.get_title() and "accuracy" in fig.axes[4].get_title()
  plt.close(fig)


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
  # One CPU device and the shared persistent compilation cache, as the reliability CLI runs:
  # the second run of a test compiles nothing anew.
  from tests.reliability.conftest import cli_env  # noqa: PLC0415

  env = {**cli_env(), "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "jaxpretrain.select", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_end_to_end(digits_dir, tmp_path):
  other = features.write_random_checkpoint(tmp_path / "tiny_seed1", "resnet_tiny", seed=1)
  workdir = tmp_path / "work"
  args = [f"--candidates=random:resnet_tiny,{other}", "--dataset=digits_local",
          f"--data_dir={digits_dir}", "--max_examples=120", f"--workdir={workdir}",
          "--scores=logme,h_score,knn,leep", "--image_size=16", "--batch_size=32",
          "--cost_repeats=2"]
  proc = _cli(args, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Progress with an ETA on each phase, select's own lines only (no absl/orbax/XLA/TFDS).
  assert "tiny_seed1: extracting features: 4/4 (100%), ETA" in proc.stderr
  assert "tiny_seed1: scoring: 4/4 (100%), ETA" in proc.stderr
  noise = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines()
           if re.match(r"[IWEF]\d{4} ", line) or re.search(r"\b(INFO|WARNING)\b", line)]
  assert not noise, noise[:5]
  assert "recommended: " in proc.stdout and "report: " in proc.stdout
  report = json.loads((workdir / "results.json").read_text())
  assert [r["name"] for r in report["results"]] == ["random_resnet_tiny", "tiny_seed1"]
  for r in report["results"]:
    assert r["num_examples"] == 120 and r["feature_dim"] == 64 and r["status"] == "ok"
    assert r["scores"]["leep"] is None and math.isfinite(r["scores"]["logme"])
    assert r["unavailable"] == {"leep": rank.NO_HEAD}
    assert r["cost"]["params"] > 0 and r["cost"]["batch_size"] == 32
    assert r["cost"]["gflops_per_example"] > 0 and r["cost"]["throughput"] > 0
  assert report["recommendation"]["by"] == "logme"
  md = (workdir / "ranking.md").read_text()
  assert "digits_local: 120 examples, 2 candidates" in md and "| tiny_seed1 |" in md
  assert proc.stdout.endswith(md)  # the console ends with the ranking table
  for name in ("ranking.csv", "scores.png", "pareto.png"):
    assert (workdir / name).is_file()
  cached = [workdir / "features" / "tiny_seed1.npz", workdir / "cost" / "tiny_seed1.json"]
  mtimes = [p.stat().st_mtime_ns for p in cached]
  proc = _cli(args, tmp_path)  # again: features and cost come from the cache
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tiny_seed1: features from" in proc.stderr and "tiny_seed1: cost from" in proc.stderr
  assert [p.stat().st_mtime_ns for p in cached] == mtimes


def test_cli_rejects_bad_flags_in_one_line(tmp_path):
  base = ["--candidates=random:resnet_tiny", "--dataset=digits_local", f"--workdir={tmp_path}/w"]
  for flag, message in [("--scores=logmee", "error: unknown score(s) ['logmee']; known:"),
                        ("--max_params=-5", "error: budget max_params must be a positive")]:
    proc = _cli([*base, flag], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1
  assert not (tmp_path / "w").exists()  # nothing written


@pytest.fixture
def headed_dir(tmp_path):
  """resnet_tiny with a 5-class source head (more parameters, and LEEP/NCE apply)."""
  model = models.build_model("resnet_tiny", num_classes=5)
  variables = models.init_variables("resnet_tiny", model, jax.random.key(1))
  return pretrained.save_pretrained(
      tmp_path / "headed", "resnet_tiny", {"num_classes": 5},
      jax.tree.map(np.asarray, variables), preprocessing={"image_size": 16})


def test_select_models_seeds_budgets_failures_and_caches(digits_dir, tmp_path, headed_dir):
  calls = []

  def fake_finetune(cand, seed):  # stands in for the training job
    calls.append((cand.name, seed))
    return {"a": 0.9, "b": 0.4, "h": 0.95}[cand.name] + 0.01 * seed

  work = tmp_path / "work"
  other = features.write_random_checkpoint(tmp_path / "b", "resnet_tiny", seed=1)
  small = cost_lib.count_params(features.load_candidate("random:resnet_tiny", work).variables)
  kw = dict(dataset="digits_local", data_dir=digits_dir, workdir=work, max_examples=60,
            scores=["logme", "knn", "leep"], image_size=16, batch_size=32,
            finetune_fn=fake_finetune, finetune_settings={"steps": 1}, finetune_seeds=2,
            bootstrap=100, cost_repeats=2, cost_warmup=0, budgets={"max_params": small + 10})
  specs = ["a=random:resnet_tiny", f"b={other}", f"h={headed_dir}", "ghost=/nonexistent/ckpt"]
  report = rank.select_models(specs, **kw)
  res = {r["name"]: r for r in report["results"]}
  assert calls == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # h over budget, ghost failed
  assert [res[n]["status"] for n in "abh"] + [res["ghost"]["status"]] == [
      "ok", "ok", "over_budget", "failed"]
  assert res["h"]["reason"] == f"{small + 325:,} parameters > max_params={small + 10:,}"
  assert res["h"]["cost"]["params"] == small + 325  # + 64 x 5 weights + 5 biases
  assert res["ghost"]["reason"].startswith("failed to load: ValueError: candidate "
                                           "'/nonexistent/ckpt' is not a checkpoint folder")
  assert "\n" not in res["ghost"]["reason"]
  assert res["a"]["finetune_accuracies"] == [0.9, 0.91]
  assert res["a"]["finetune_accuracy"] == pytest.approx(0.905)
  assert res["a"]["finetune_std"] == pytest.approx(0.01 / math.sqrt(2))
  assert res["a"]["cost"]["params"] == small and res["a"]["cost"]["repeats"] == 2
  corr = report["correlations"]["logme"]
  assert corr["n"] == 2 and corr["kendall_tau_ci"] is not None and corr["regret"] >= 0
  assert report["correlations"]["leep"]["n"] == 0  # only h has a head, and it is dropped
  assert report["recommendation"]["candidate"] in ("a", "b")
  md = (work / "ranking.md").read_text()
  assert "Recommended: **" in md and "- h: over budget — " in md and "- ghost: failed — " in md
  assert "0.9050 ± 0.0071" in md and "bootstrap resamples" in md
  assert (work / "pareto.png").is_file()
  saved_cost = (work / "cost" / "a.json").read_text()
  rank.select_models(specs, **kw)  # everything cached: no new fine-tuning or measurement
  assert len(calls) == 4 and (work / "cost" / "a.json").read_text() == saved_cost
  rank.select_models(specs, **{**kw, "finetune_settings": {"steps": 2}})  # new recipe: rerun
  assert len(calls) == 8
  with pytest.raises(rank.SelectionError, match="candidate 'ghost'.*failed to load"):
    rank.select_models(specs, **{**kw, "strict": True})
  with pytest.raises(rank.SelectionError, match="no candidate could be scored"):
    rank.select_models(specs[2:], **kw)
  with pytest.raises(ValueError, match=r"distinct candidate names.*repeated: \['a'\]"):
    rank.select_models(["a=random:resnet_tiny", "a=random:resnet18"], **kw)


@pytest.mark.slow
def test_make_finetune_fn_runs_the_job(digits_dir, tmp_path):
  pytest.importorskip("jaxpretrain.job")
  cand = features.load_candidate("random:resnet_tiny", tmp_path)
  fn = rank.make_finetune_fn(workdir=tmp_path, dataset="digits_local", data_dir=digits_dir,
                             steps=2, learning_rate=1e-3, batch_size=8, image_size=16,
                             train_per_class=4)
  acc = fn(cand, 0)
  assert 0.0 <= acc <= 1.0
  runs = list((tmp_path / "finetune").glob("random_resnet_tiny-*/final.json"))
  assert len(runs) == 1
  assert json.loads((runs[0].parent / "flags.json").read_text())["train_per_class"] == 4
  # The same NAME pointing at another checkpoint gets a run folder of its own.
  moved = dataclasses.replace(cand, path=tmp_path / "elsewhere")
  assert rank.finetune_run_dir(tmp_path, cand, {"seed": 0}) != rank.finetune_run_dir(
      tmp_path, moved, {"seed": 0})
  assert rank.finetune_run_dir(tmp_path, moved, {"seed": 0}).name.startswith(
      "random_resnet_tiny-")


def test_low_data_scores_the_examples_finetune_trains_on(digits_dir, tmp_path):
  from jaxpretrain.data import loaders, sources
  from jaxpretrain.job import task

  report = rank.select_models(["a=random:resnet_tiny"], dataset="digits_local",
                              data_dir=digits_dir, workdir=tmp_path, train_per_class=5,
                              scores=["logme", "knn"], image_size=16, batch_size=32,
                              measure_cost=False, log=lambda m: None)
  assert report["settings"]["num_examples"] == 50
  assert report["settings"]["train_per_class"] == 5
  job = task.load_data(task.DataOptions(dataset="digits_local", data_dir=digits_dir,
                                        image_size=16, train_per_class=5))
  feats = np.load(tmp_path / "features" / "a.npz")
  source, _ = loaders.load_dataset("digits_local", digits_dir, "train")
  rows = sources.per_class_subset(loaders.source_labels(source), 5, seed=task.LOW_DATA_SEED)
  np.testing.assert_array_equal(feats["indices"], rows)
  np.testing.assert_array_equal(loaders.source_labels(job.train), feats["labels"])
  with pytest.raises(ValueError, match="split must be 'train', got 'test'"):
    rank.select_models(["a=random:resnet_tiny"], dataset="digits_local", data_dir=digits_dir,
                       workdir=tmp_path, train_per_class=5, split="test")


def test_a_stopped_fine_tuning_run_stops_the_selection(digits_dir, tmp_path):
  """SIGTERM/Ctrl-C inside a candidate's fine-tuning run (the job's Stopped) ends the selection
  (the CLI exits 143/130 with a rerun hint); it is not that candidate's failure."""
  from jaxpretrain.job.loop import Stopped

  def stopped(cand, seed):
    raise Stopped(3, "SIGTERM", tmp_path / "ft")

  with pytest.raises(Stopped, match="SIGTERM at step 3") as info:
    rank.select_models(["a=random:resnet_tiny", "b=random:resnet_tiny"], dataset="digits_local",
                       data_dir=digits_dir, workdir=tmp_path / "w", max_examples=40,
                       scores=["knn"], image_size=16, batch_size=32, measure_cost=False,
                       finetune_fn=stopped, finetune_settings={"steps": 1},
                       log=lambda m: None)
  assert info.value.status == 143 and rank.is_stopped(info.value)
