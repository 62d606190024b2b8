"""Model ranking: score every candidate on a target dataset, with its cost; write the reports.

    report = select_models(["minilm", "random:minilm_l6"], dataset="tweets_sentiment",
                           workdir="/tmp/select", max_examples=2000)

For each candidate the cost of one forward pass is measured first (parameters, FLOPs,
latency, throughput, peak memory; see `cost`), and candidates over a budget
(`max_latency_ms`, `max_params`, `max_gflops`) are dropped with the reason. The others'
features are extracted once (and cached as .npz in the workdir), then every transferability
score of `scores.SCORES` is computed on them; a score that cannot be computed on a candidate
is "n/a" with its reason. The zero_shot score is a baseline without training: the accuracy of
a CLIPModel classifying the examples from the prompts "a photo of a {label}" of the dataset's
class names (used as given: digit classes read "a photo of a 3"), scored against the image
features of the same extraction pass; candidates without a CLIP text tower (or whose
tokenizer.json is missing) show it as n/a with why. The recommendation is the best
candidate within budget by one score (LogME by default).

With a fine-tuning function, each candidate is also fine-tuned `finetune_seeds` times, and
each score's ranking is compared with the ranking by mean fine-tuned accuracy through
Kendall's tau-b and the weighted tau of Vigna (2015), which weighs disagreements among the
top candidates more (choosing a model only needs the top right), each with a bootstrap
interval over seeds, and through the score's regret: the best mean accuracy minus the mean
accuracy of the candidate the score ranks first.

A candidate that fails to load, measure, extract or fine-tune is reported in one line and
left out; the others are still scored (unless `strict`).

Workdir layout:
  candidates/            converted (minilm) and random-init checkpoint folders
  features/NAME.npz      cached features, labels, rows, source-head probabilities and
                         zero-shot logits (keyed also by the class names and prompt)
  cost/NAME.json         cached cost measurements (delete to measure again)
  finetune/NAME-seedS.json  cached fine-tuned accuracies
  ranking.md, ranking.csv, scores.png, pareto.png, results.json
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from jaxpretrain import data
from jaxpretrain.data import sources
from jaxpretrain.select import cost as cost_lib
from jaxpretrain.select import features as features_lib
from jaxpretrain.select.scores import (
    HEAD_SCORES,
    SCORES,
    ZERO_SHOT_SCORES,
    ScoreUnavailable,
    zero_shot_accuracy,
)

FINETUNE = "finetune_accuracy"
DEFAULT_RECOMMEND_BY = "logme"
# Bootstrap resamples for the tau intervals, and their coverage.
DEFAULT_BOOTSTRAP = 1000
CONFIDENCE = 0.95
NO_HEAD = "no source classification head"
# Every score a selection can compute: the feature and source-head scores, then zero-shot.
SCORE_NAMES = (*SCORES, *ZERO_SHOT_SCORES)
NO_ZERO_SHOT = ("no zero-shot logits: extract the features with the target's class names "
                "(features.extract_features(class_names=...))")
# The plain H-score is at most (classes present - 1) and reaches it, to round-off, once the
# centred features span the examples (feature dim >= n - 1): it then says nothing about the
# features. float64 eigh recovers the maximum to ~1e-10 relative; 1e-6 leaves room for
# nearly spanning float32 features.
H_SCORE_SATURATION_RTOL = 1e-6
# SFDA, a mean true-class posterior, is at most 1 and reaches it when its discriminant
# separates the examples it was fitted on (random 512-dim features of 100 examples: 1.0):
# at 1 to 4 decimals the differences between candidates are softmax round-off.
SFDA_SATURATION_ATOL = 1e-4
# Scores with a ceiling that says nothing about the features; the shrinkage H-score (issue
# 15) does not saturate.
SATURABLE = ("h_score", "sfda")

# candidate, seed -> test accuracy after fine-tuning.
FinetuneFn = Callable[[features_lib.Candidate, int], float]
# Where select's own lines go: absl INFO by default (library use); the CLI prints them.
Log = Callable[[str], None]


def absl_log(message: str) -> None:
  """The default `Log`: absl INFO ("warning: ..." and "error: ..." at their levels)."""
  level = (logging.ERROR if message.startswith("error: ") else
           logging.WARNING if message.startswith("warning: ") else logging.INFO)
  logging.log(level, "%s", message)


class SelectionError(RuntimeError):
  """The selection cannot go on: a candidate failed under `strict`, or none could be scored."""


# ------------------------------------------------------------------------------------------
# Rank correlations (scipy.stats), bootstrap over seeds, regret.
# ------------------------------------------------------------------------------------------


def _check_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"x and y must have the same length; got {x.size} and {y.size}")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError("x and y must be finite (drop candidates without a value first)")
  return x, y


def kendall_tau(x: Any, y: Any) -> float:
  """Kendall's tau-b (Kendall 1945), `scipy.stats.kendalltau`: ties shrink the denominator.

  Returns:
    tau in [-1, 1]; NaN when either ranking is constant (or n < 2).
  """
  return _scipy_tau("kendalltau", x, y)


def weighted_tau(x: Any, y: Any, weigher: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> float:
  """Weighted Kendall tau, Vigna, "A weighted correlation index for rankings with ties", WWW 2015.

  `scipy.stats.weightedtau` with its defaults: each pair weighs w(r_i) + w(r_j), r an item's
  importance rank (0 = top) and w the hyperbolic weigher 1 / (r + 1), so swaps near the top
  cost more; the value is the mean of the indices with ranks from the decreasing
  lexicographic order by (x, y) and by (y, x).

  Args:
    x, y: [n] scores of the same items (higher = better).
    weigher: rank -> weight; default hyperbolic.
  Returns:
    tau in [-1, 1]; NaN when either ranking is constant (or n < 2).
  """
  return _scipy_tau("weightedtau", x, y, weigher=weigher)


def _scipy_tau(name: str, x: Any, y: Any, **kwargs: Any) -> float:
  """`scipy.stats.<name>(x, y, **kwargs).statistic` of checked scores; NaN when n < 2."""
  from scipy import stats  # noqa: PLC0415 -- only when ranking

  x, y = _check_xy(x, y)
  if x.size < 2:
    return math.nan
  with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
    warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
    return float(getattr(stats, name)(x, y, **kwargs).statistic)


def bootstrap_seed_means(accuracies: Sequence[Sequence[float]], resamples: int, seed: int = 0
                         ) -> np.ndarray:
  """Candidates' mean accuracies under resampling of each candidate's seeds.

  Each resample draws, for every candidate independently, as many seed accuracies as it has,
  with replacement, and takes their mean: the spread of the means over resamples is the
  seed-to-seed noise of the fine-tuning check.

  Args:
    accuracies: per candidate, its accuracies over seeds (at least one each).
    resamples: number of bootstrap resamples.
    seed: the draws' seed.
  Returns:
    [resamples, candidates] means.
  """
  rng = np.random.default_rng(seed)
  out = np.empty((resamples, len(accuracies)))
  for j, acc in enumerate(accuracies):
    a = np.asarray(acc, np.float64)
    if a.size == 0:
      raise ValueError(f"candidate {j} has no fine-tuned accuracy to resample")
    out[:, j] = a[rng.integers(0, a.size, (resamples, a.size))].mean(1)
  return out


def _percentile_interval(values: Sequence[float]) -> list[float] | None:
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]  # a resample with all accuracies tied has no tau
  if v.size == 0:
    return None
  lo, hi = np.percentile(v, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
  return [float(lo), float(hi)]


def regret(scores: Sequence[float], accuracies: Sequence[float], best: float | None = None
           ) -> tuple[int, float]:
  """(index the score picks, best accuracy minus the picked one's accuracy).

  The pick is the highest score (the first among ties); `best` defaults to the highest of
  `accuracies` (pass the best over a larger set of candidates to charge a score for the ones
  it cannot rate).
  """
  s, acc = _check_xy(scores, accuracies)
  if s.size == 0:
    raise ValueError("regret needs at least one candidate")
  pick = int(np.argmax(s))
  best = float(acc.max()) if best is None else float(best)
  return pick, best - float(acc[pick])


# ------------------------------------------------------------------------------------------
# Scoring.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CandidateResult:
  """One row of the ranking."""
  name: str
  spec: str
  model: str = ""
  status: str = "ok"  # "ok" | "over_budget" | "failed"
  reason: str | None = None  # why over budget or failed
  feature_dim: int | None = None
  num_examples: int | None = None
  scores: dict[str, float | None] = dataclasses.field(default_factory=dict)
  unavailable: dict[str, str] = dataclasses.field(default_factory=dict)  # score -> why n/a
  # score -> why its value is at its ceiling: shown, never ranked, recommended or correlated.
  saturated: dict[str, str] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # per score, "features"
  cost: dict[str, Any] | None = None  # `cost.Cost.to_json()`
  finetune_accuracies: list[float] | None = None  # one per seed
  finetune_accuracy: float | None = None  # their mean
  finetune_std: float | None = None  # their standard deviation (ddof 1; 0 for one seed)

  def set_finetune(self, accuracies: Sequence[float]) -> None:
    a = [float(x) for x in accuracies]
    self.finetune_accuracies = a
    self.finetune_accuracy = float(np.mean(a))
    self.finetune_std = float(np.std(a, ddof=1)) if len(a) > 1 else 0.0


def check_scores(names: Sequence[str]) -> list[str]:
  """The requested score names, or a ValueError naming the unknown ones and the known."""
  names = list(names) or list(SCORE_NAMES)
  unknown = [s for s in names if s not in SCORE_NAMES]
  if unknown:
    raise ValueError(f"unknown score(s) {unknown}; known: {sorted(SCORE_NAMES)}")
  return names


def check_recommend_by(by: str | None, names: Sequence[str]) -> str:
  """The score the recommendation uses: `by`, which must be computed, or the default."""
  if by is None:
    return DEFAULT_RECOMMEND_BY if DEFAULT_RECOMMEND_BY in names else names[0]
  if by not in names:
    raise ValueError(f"recommend_by '{by}' is not among the scores computed {list(names)}")
  return by


def compute_scores(feats: features_lib.Features, names: Sequence[str], *, label: str = "",
                   num_classes: int | None = None, log: Log = absl_log,
                   progress: bool = False
                   ) -> tuple[dict[str, float | None], dict[str, str], dict[str, float]]:
  """Every score in `names` on one candidate's features.

  Returns:
    ({score: value or None}, {score: why it is None}, {score: seconds}). A score is None when
    the candidate lacks what it needs (a source head; for zero_shot, the zero-shot logits of
    a CLIP text tower, `Features.zero_shot_unavailable` saying why there are none) or
    `ScoreUnavailable` says the inputs cannot give it (too few examples, a class with one
    example, constant features...); a non-finite result is turned into None too, so no NaN
    reaches a report. Each value (or why it is n/a) goes to `log`; with `progress`, a
    progress line with an ETA per score.
  """
  from jaxpretrain import console  # noqa: PLC0415

  values, unavailable, seconds = {}, {}, {}
  names = check_scores(names)
  for name in (console.progress(names, len(names), f"{label}: scoring", every=1 / len(names))
               if progress else names):
    values[name] = None
    if name in HEAD_SCORES and feats.source_probs is None:
      unavailable[name] = NO_HEAD
      continue
    if name in ZERO_SHOT_SCORES and feats.zero_shot_logits is None:
      unavailable[name] = feats.zero_shot_unavailable or NO_ZERO_SHOT
      if unavailable[name] != features_lib.NO_TEXT_TOWER:  # as NO_HEAD: said in the report
        log(f"{label}: {name} is n/a: {unavailable[name]}")
      continue
    start = time.perf_counter()
    try:
      if name in ZERO_SHOT_SCORES:
        v = zero_shot_accuracy(feats.zero_shot_logits, feats.labels)
      else:
        v = float(SCORES[name](feats.features, feats.labels, source_probs=feats.source_probs,
                               num_classes=num_classes))
      if not math.isfinite(v):
        raise ScoreUnavailable(f"{name}: the value is not finite ({v})")
    except ScoreUnavailable as e:
      unavailable[name] = str(e)
      log(f"{label}: {name} is n/a: {e}")
      continue
    values[name] = v
    seconds[name] = time.perf_counter() - start
    log(f"{label}: {name} = {v:.4f} ({seconds[name]:.1f}s)")
  return values, unavailable, seconds


def saturated_scores(feats: features_lib.Features, values: Mapping[str, float | None]
                     ) -> dict[str, str]:
  """{score: why} for the scores in `values` that sit at their ceiling on these features.

  The plain H-score is saturated when the feature dim is at least the number of examples
  (any labelling is then linearly separable after whitening) or its value is within
  `H_SCORE_SATURATION_RTOL` of its maximum, classes - 1. SFDA is saturated within
  `SFDA_SATURATION_ATOL` of its maximum, 1 (its regularized discriminant may still fall
  short of 1 when d >= n, so only its value tells).
  """
  out = {}
  n, d = feats.features.shape
  classes = int(np.unique(feats.labels).size)
  v = values.get("h_score")
  if v is not None:
    top = classes - 1
    if d >= n:
      out["h_score"] = (f"saturated: feature dim {d} >= {n} examples, so any labelling is "
                        f"separable (value {v:.4f}, maximum classes - 1 = {top})")
    elif v >= top * (1 - H_SCORE_SATURATION_RTOL):
      out["h_score"] = f"saturated: {v:.4f} is its maximum, classes - 1 = {top}"
  v = values.get("sfda")
  if v is not None and v >= 1 - SFDA_SATURATION_ATOL:
    out["sfda"] = (f"saturated: {v:.4f} is its maximum, 1 (its discriminant separates the "
                   f"{n} examples it was fitted on)")
  return out


def correlations(results: Sequence[CandidateResult], names: Sequence[str], *,
                 bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0
                 ) -> dict[str, dict[str, Any]]:
  """Per score: tau-b, weighted tau (with bootstrap intervals over seeds) and regret.

  Candidates within budget with both the score and fine-tuned accuracies enter. "top1" is the
  candidate the score ranks first and "top1_accuracy" its mean fine-tuned accuracy; "regret"
  is the best mean accuracy among all fine-tuned candidates within budget minus that one, so
  a score that cannot rate the best candidate (e.g. LEEP on a headless one) pays for it. A
  score that rates only one of several candidates (the others saturated or n/a) picks none.
  The intervals ("kendall_tau_ci", "weighted_tau_ci": [low, high], the central 95% of the
  resampled taus) need at least two seeds for some candidate; with one seed they are None.
  """
  ok = [r for r in results if r.status == "ok" and r.finetune_accuracies]
  best = max((r.finetune_accuracy for r in ok), default=None)
  seeds = max((len(r.finetune_accuracies) for r in ok), default=0)
  resampled = (bootstrap_seed_means([r.finetune_accuracies for r in ok], bootstrap, seed)
               if ok and seeds > 1 and bootstrap > 0 else None)
  out = {}
  for name in names:
    idx = [i for i, r in enumerate(ok) if _value(r, name) is not None]
    entry = {"n": len(idx), "kendall_tau": math.nan, "weighted_tau": math.nan,
             "kendall_tau_ci": None, "weighted_tau_ci": None, "top1": None,
             "top1_accuracy": None, "top1_hit": None, "regret": None}
    s = np.asarray([ok[i].scores[name] for i in idx])
    acc = np.asarray([ok[i].finetune_accuracy for i in idx])
    if len(idx) >= 2 or (idx and len(ok) == 1):  # rating one of several is not a choice
      pick, loss = regret(s, acc, best)
      entry.update(top1=ok[idx[pick]].name, top1_accuracy=float(acc[pick]),
                   top1_hit=bool(acc[pick] == best), regret=loss)
    if len(idx) >= 2:
      entry.update(kendall_tau=kendall_tau(s, acc), weighted_tau=weighted_tau(s, acc))
      if resampled is not None:
        boot = resampled[:, idx]
        entry["kendall_tau_ci"] = _percentile_interval([kendall_tau(s, b) for b in boot])
        entry["weighted_tau_ci"] = _percentile_interval([weighted_tau(s, b) for b in boot])
    out[name] = entry
  return out


def recommend(results: Sequence[CandidateResult], by: str) -> dict[str, Any]:
  """The best candidate within budget by score `by`; None (with the reason) when there is none."""
  rated = [r for r in results if r.status == "ok" and _value(r, by) is not None]
  within = sum(r.status == "ok" for r in results)
  if not rated:
    sat = [r.name for r in results if r.status == "ok" and by in r.saturated]
    return {"by": by, "candidate": None, "value": None, "within_budget": within,
            "reason": f"no candidate within budget has a {by} value"
            + (f" that is not saturated (saturated: {', '.join(sat)})" if sat else "")}
  best = max(rated, key=lambda r: _value(r, by))  # the first among ties
  return {"by": by, "candidate": best.name, "value": best.scores[by], "within_budget": within,
          "reason": None}


def ranks(values: Sequence[float | None]) -> list[int | None]:
  """1-based rank of each value, highest first (ties share the best rank); None stays None."""
  present = sorted((v for v in values if v is not None), reverse=True)
  return [None if v is None else present.index(v) + 1 for v in values]


# ------------------------------------------------------------------------------------------
# Reports.
# ------------------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 4) -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "n/a"
  return f"{v:.{digits}f}"


def _fmt_g(v: float | None) -> str:
  return "n/a" if v is None else f"{v:.3g}"


def _fmt_rate(v: float) -> str:
  return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _fmt_ci(ci: Sequence[float] | None) -> str:
  return "" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _value(r: CandidateResult, col: str) -> float | None:
  """The value `col` ranks `r` by: None when it has none or it is saturated."""
  if col == FINETUNE:
    return r.finetune_accuracy
  return None if col in r.saturated else r.scores.get(col)


def _scored(results: Sequence[CandidateResult]) -> list[CandidateResult]:
  return [r for r in results if r.status == "ok"]


def _has_finetune(results: Sequence[CandidateResult]) -> bool:
  return any(r.finetune_accuracies for r in results)


def _order(results: Sequence[CandidateResult], key: str) -> list[int]:
  col = ranks([_value(r, key) for r in results])
  return sorted(range(len(results)), key=lambda i: col[i] or len(results) + 1)


def _score_table(rows: Sequence[CandidateResult], cols: Sequence[str], order: Sequence[int],
                 finetune: bool) -> list[str]:
  col_ranks = {c: ranks([_value(r, c) for r in rows]) for c in cols}
  head = ["candidate", "model", "dim", *cols] + (["finetune_accuracy (mean ± std)"]
                                                 if finetune else [])
  lines = ["| " + " | ".join(head) + " |", "|---|---|---:|" + "---:|" * (len(head) - 3)]
  ft_ranks = ranks([r.finetune_accuracy for r in rows])
  for i in order:
    r = rows[i]
    cells = [f"{_fmt(_value(r, c))} ({col_ranks[c][i]})" if _value(r, c) is not None else
             f"{_fmt(r.scores.get(c))} saturated" if c in r.saturated else "n/a" for c in cols]
    if finetune:
      cells.append("n/a" if r.finetune_accuracy is None else
                   f"{r.finetune_accuracy:.4f} ± {r.finetune_std:.4f} ({ft_ranks[i]})")
    lines.append(f"| {r.name} | {r.model} | {r.feature_dim} | " + " | ".join(cells) + " |")
  return lines


def _cost_table(results: Sequence[CandidateResult]) -> list[str]:
  measured = [r for r in results if r.cost]
  if not measured:
    return []
  c0 = measured[0].cost
  lines = [f"### Cost (device: {c0['device']}, batch {c0['batch_size']}, median of "
           f"{c0['repeats']} timed calls after {c0['warmup']} warm-up)", "",
           "| candidate | params | GFLOPs / example | latency ms / batch | examples / s | "
           "peak memory MiB | status |", "|---|---:|---:|---:|---:|---:|---|"]
  for r in results:
    c = r.cost
    if not c:
      lines.append(f"| {r.name} | n/a | n/a | n/a | n/a | n/a | {r.status} |")
      continue
    mem = c["peak_memory_bytes"]
    lines.append(
        f"| {r.name} | {c['params']:,} | {_fmt_g(c['gflops_per_example'])} | "
        f"{c['latency_ms']:.3g} | {_fmt_rate(c['throughput'])} | "
        f"{'n/a' if mem is None else f'{mem / 2**20:.1f}'} | {r.status} |")
  lines += ["", "Peak memory: XLA's memory analysis of one compiled call (arguments + outputs + "
            "temporaries); on CPU no device statistics exist."]
  return lines


def _skipped(results: Sequence[CandidateResult], names: Sequence[str]) -> list[str]:
  lines = []
  for r in results:
    if r.status != "ok":
      lines.append(f"- {r.name}: {'over budget' if r.status == 'over_budget' else 'failed'}"
                   f" — {r.reason}")
  by_reason: dict[tuple[str, str], list[str]] = {}
  for r in _scored(results):
    for name, why in r.unavailable.items():
      by_reason.setdefault((name, why), []).append(r.name)
  for (name, why), cands in by_reason.items():
    why = why.removeprefix(f"{name}: ")
    lines.append(f"- {name} n/a for {', '.join(cands)}: {why}")
  for r in _scored(results):
    for name, why in r.saturated.items():
      if name in names:
        lines.append(f"- {name} not ranked for {r.name}: {why}")
  not_run = [s for s in SCORE_NAMES if s not in names]
  if not_run:
    lines.append(f"- not requested (--scores): {', '.join(not_run)}")
  return lines


def markdown_table(results: Sequence[CandidateResult], names: Sequence[str],
                   corr: Mapping[str, Mapping[str, Any]] | None = None, *, title: str = "",
                   recommendation: Mapping[str, Any] | None = None,
                   budgets: Mapping[str, float] | None = None,
                   finetune_seeds: int | None = None, bootstrap: int | None = None) -> str:
  """The ranking as markdown.

  In order: the recommendation; the cost table (every candidate, with its status); the
  scores that need only features, those that need a source classification head and zero-shot
  (a CLIP text tower: its own group, since it needs neither features nor a head and only
  CLIPModels have it), one row per scored candidate, "value (rank)" per score and "n/a"
  where a score has no value; the rank agreement with fine-tuning (`corr`); and what was
  skipped and why. Rows are ordered by the mean fine-tuned accuracy when there is one, else
  by the recommendation's score.
  """
  scored = _scored(results)
  finetune = _has_finetune(scored)
  by = (recommendation or {}).get("by") or check_recommend_by(None, names)
  order = _order(scored, FINETUNE if finetune else by)
  lines = [f"## {title}", ""] if title else []
  if recommendation is not None:
    limits = ", ".join(f"{k}={v:g}" for k, v in (budgets or {}).items()) or "none"
    if recommendation["candidate"] is None:
      lines += [f"No recommendation: {recommendation['reason']} (budgets: {limits}).", ""]
    else:
      lines += [f"Recommended: **{recommendation['candidate']}**, the best {by} "
                f"({recommendation['value']:.4f}) of {recommendation['within_budget']} "
                f"candidate(s) within budget (budgets: {limits}).", ""]
  cost_lines = _cost_table(results)
  if cost_lines:
    lines += cost_lines + [""]
  groups = [("Scores that need only features", [n for n in names if n in SCORES and
                                                 n not in HEAD_SCORES]),
            ("Scores that need a source classification head", [n for n in names
                                                               if n in HEAD_SCORES]),
            # Only when a candidate has a text tower: otherwise a column of n/a.
            ("Zero-shot: needs a text tower", [n for n in names if n in ZERO_SHOT_SCORES and any(
                r.scores.get(n) is not None for r in scored)])]
  if scored:
    zero_shot = (" zero_shot is the accuracy of CLIP's zero-shot classifier, the prompts "
                 "\"a photo of a {label}\" of the class names, without training (0 to 1)."
                 if groups[-1][1] else "")
    lines += ["Higher is better for every score; each cell is \"value (rank)\", rank 1 the "
              "best. knn and linear_probe are cross-validated accuracies (0 to 1); a "
              f"saturated score is shown but not ranked (see below).{zero_shot}", ""]
  for heading, cols in groups:
    if cols and scored:
      lines += [f"### {heading}", "", *_score_table(scored, cols, order, finetune), ""]
  if corr:
    seeds = f"{finetune_seeds} seed(s) each" if finetune_seeds else "seeds"
    ci = (f"; [95% interval] from {bootstrap} bootstrap resamples of each candidate's seeds"
          if finetune_seeds and finetune_seeds > 1 and bootstrap else "")
    lines += [f"### Rank agreement with {FINETUNE} ({seeds}{ci})", "",
              "Regret: best mean fine-tuned accuracy minus that of the candidate the score "
              "ranks first (lower is better).", "",
              "| score | n | Kendall τ | weighted τ | picks | its accuracy | regret |",
              "|---|---:|---:|---:|---|---:|---:|"]
    for name, c in corr.items():
      pick = "n/a" if c["top1"] is None else c["top1"] + (" ✓" if c["top1_hit"] else "")
      lines.append(f"| {name} | {c['n']} | {_fmt(c['kendall_tau'], 3)}"
                   f"{_fmt_ci(c['kendall_tau_ci'])} | {_fmt(c['weighted_tau'], 3)}"
                   f"{_fmt_ci(c['weighted_tau_ci'])} | {pick} | {_fmt(c['top1_accuracy'])} | "
                   f"{_fmt(c['regret'])} |")
    lines.append("")
  skipped = _skipped(results, names)
  if skipped:
    lines += ["### Skipped or not ranked", "", *skipped, ""]
  return "\n".join(lines).rstrip("\n") + "\n"


COST_COLUMNS = ("params", "gflops_per_example", "latency_ms", "throughput", "peak_memory_bytes",
                "device")


def write_csv(path: str | pathlib.Path, results: Sequence[CandidateResult],
              names: Sequence[str]) -> None:
  """One row per candidate: identity, status, cost, each score (empty if none), fine-tuning."""
  ft = [FINETUNE, "finetune_std", "finetune_seeds"] if _has_finetune(results) else []

  def cell(v: Any) -> str:
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)

  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["candidate", "spec", "model", "status", "reason", "feature_dim",
                "num_examples", *COST_COLUMNS, *names, *ft, "saturated"])
    for r in results:
      c = r.cost or {}
      fine = ([r.finetune_accuracy, r.finetune_std,
               len(r.finetune_accuracies) if r.finetune_accuracies else None] if ft else [])
      w.writerow([cell(v) for v in [r.name, r.spec, r.model, r.status, r.reason,
                                    r.feature_dim, r.num_examples,
                                    *(c.get(k) for k in COST_COLUMNS),
                                    *(r.scores.get(n) for n in names), *fine,
                                    ";".join(n for n in names if n in r.saturated)]])


# How each score's panel is drawn: its axis and what its value is. "zero": a magnitude,
# the axis includes 0 (bars start there); "unit": an accuracy or probability, axis 0 to 1;
# "range": a log-likelihood-like score that can be negative (its zero means nothing), the
# axis spans the values. `test_score_axes_cover_every_score` keeps this in step with SCORES.
SCORE_AXES: dict[str, tuple[str, str]] = {
    "logme": ("range", "LogME: log evidence per example (can be negative)"),
    "leep": ("range", "LEEP: log-likelihood (<= 0)"),
    "nce": ("range", "NCE: minus conditional entropy (<= 0)"),
    "h_score": ("zero", "H-score (0 to classes - 1)"),
    "shrinkage_h_score": ("zero", "shrinkage H-score (>= 0)"),
    "nleep": ("range", "NLEEP: log-likelihood (<= 0)"),
    "gbc": ("zero", "GBC: minus class overlap (<= 0)"),
    "transrate": ("range", "TransRate: coding-rate gain"),
    "sfda": ("unit", "SFDA: mean true-class probability"),
    "knn": ("unit", "kNN accuracy (cross-validated)"),
    "linear_probe": ("unit", "linear probe accuracy (cross-validated)"),
    "zero_shot": ("unit", "zero-shot accuracy (CLIP label prompts)"),
    FINETUNE: ("unit", "fine-tuned test accuracy (mean over seeds)"),
}
NEEDS_HEAD = "needs a source classification head"
NEEDS_TEXT_TOWER = "needs a CLIP text tower"
_TOP, _OTHER, _SATURATED = "tab:orange", "tab:blue", "0.7"


def _axis_range(values: Sequence[float], kind: str = "range") -> tuple[float, float]:
  """x-limits: 0 to 1 for "unit", from 0 for "zero", else the values' range plus margins."""
  lo, hi = min(values), max(values)
  if kind == "unit":
    return 0.0, 1.12  # room on the right for the value labels
  if kind == "zero":
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = (hi - lo) or 1.0
    return lo - (0.2 * span if lo < 0 else 0.0), hi + (0.25 * span if hi > 0 else 0.02 * span)
  pad = 0.2 * (hi - lo) or 0.05 * max(abs(hi), 1e-3)
  return lo - pad, hi + 0.6 * pad


def _pyplot():
  import matplotlib  # noqa: PLC0415 -- heavy; only when writing reports

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  return plt


def _panel_note(results: Sequence[CandidateResult], col: str) -> str:
  """What an empty panel says: the shared reason when there is one."""
  whys = {r.unavailable.get(col) for r in results}
  if whys == {NO_HEAD}:
    return NEEDS_HEAD
  if whys == {features_lib.NO_TEXT_TOWER}:
    return NEEDS_TEXT_TOWER
  if all(col in r.saturated for r in results) and results:
    return "saturated for every candidate:\nnot ranked"
  return "n/a for every candidate"


def plot_scores(path: str | pathlib.Path, results: Sequence[CandidateResult],
                names: Sequence[str], *, title: str = "",
                recommendation: Mapping[str, Any] | None = None) -> None:
  """A PNG bar chart, one panel per score (and the fine-tuned accuracy), one bar per candidate.

  Higher is better in every panel, as the chart says. Accuracies (kNN, the probe, SFDA,
  fine-tuning) span 0 to 1 and magnitudes (H-scores, GBC) start at 0; log-likelihood-like
  scores (LogME, LEEP, NCE, NLEEP, TransRate) can be negative, so their axis spans their
  values (`SCORE_AXES`). Each panel's top candidate is orange (the legend says so); the
  recommended candidate's name is bold. A saturated score is a grey bar labelled
  "saturated", not a pick; a score without a value is labelled with why ("needs a source
  classification head" for LEEP/NCE on headless candidates).
  """
  from matplotlib import patches, ticker  # noqa: PLC0415

  plt = _pyplot()
  results = _scored(results)
  cols = list(names) + ([FINETUNE] if _has_finetune(results) else [])
  ncol = min(4, len(cols))
  nrow = -(-len(cols) // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.9 * ncol, 0.45 * len(results) * nrow + 2.4),
                           squeeze=False)
  labels = [r.name for r in results]
  picked = (recommendation or {}).get("candidate")
  for ax, col in zip(list(axes.flat)[:len(cols)], cols, strict=True):
    kind, what = SCORE_AXES.get(col, ("range", col))
    ranked = [_value(r, col) for r in results]
    shown = [r.finetune_accuracy if col == FINETUNE else r.scores.get(col) for r in results]
    finite = [v for v in shown if v is not None]
    ax.set_title(what, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.set_yticks(range(len(labels)), labels)
    for tick, name in zip(ax.get_yticklabels(), labels, strict=True):
      if name == picked:
        tick.set_fontweight("bold")
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first candidate on top, rows without a value too
    if not finite:
      ax.set_xticks([])
      ax.text(0.5, 0.5, _panel_note(results, col), ha="center", va="center",
              transform=ax.transAxes, fontsize=8)
      continue
    lo, hi = _axis_range(finite, kind)
    base = 0.0 if kind in ("unit", "zero") else lo
    best = max((v for v in ranked if v is not None), default=None)
    colors = [_SATURATED if s is not None and v is None else _TOP if v is not None and
              v == best else _OTHER for v, s in zip(ranked, shown, strict=True)]
    ax.barh(range(len(labels)), [np.nan if v is None else v - base for v in shown], left=base,
            color=colors)
    for i, (r, v) in enumerate(zip(results, shown, strict=True)):
      if v is None:
        why = r.unavailable.get(col)
        note = (" n/a: no source head" if why == NO_HEAD else " n/a: no text tower"
                if why == features_lib.NO_TEXT_TOWER else " n/a")
        ax.text(base, i, note, va="center", fontsize=7)
      else:
        sat = " saturated, not ranked" if col in r.saturated else ""
        left = kind == "zero" and v < 0  # a bar drawn leftwards from 0: label its end
        ax.text(v, i, f"{v:.4g} " if left else f" {v:.4g}{sat}", va="center", fontsize=7,
                ha="right" if left else "left")
    ax.set_xlim(lo, hi)
    if lo <= 0 < hi:
      ax.axvline(0.0, color="0.3", lw=0.6)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
  for ax in list(axes.flat)[len(cols):]:
    ax.axis("off")
  handles = [patches.Patch(color=_TOP, label="top candidate by this score"),
             patches.Patch(color=_OTHER, label="other candidates")]
  if any(r.saturated for r in results):
    handles.append(patches.Patch(color=_SATURATED, label="saturated: not ranked"))
  pick = (f"; recommended (bold): {picked} by {recommendation['by']}" if picked else "")
  fig.suptitle(f"{title + chr(10) if title else ''}higher is better in every panel{pick}",
               fontsize=10)
  fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
             frameon=False)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_pareto(path: str | pathlib.Path, results: Sequence[CandidateResult], score: str, *,
                title: str = "") -> bool:
  """A PNG of `score` against measured throughput, the Pareto front drawn and labelled.

  Only scored candidates with both values appear. Returns False (nothing written) when none.
  """
  pts = [(r.cost["throughput"], r.scores[score], r.name) for r in _scored(results)
         if r.cost and r.scores.get(score) is not None]
  if not pts:
    return False
  plt = _pyplot()
  front = cost_lib.pareto_front([(t, s) for t, s, _ in pts])
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  xs, ys = [p[0] for p in pts], [p[1] for p in pts]
  ax.scatter(xs, ys, color="tab:blue", zorder=2, label="candidates")
  ax.plot([xs[i] for i in front], [ys[i] for i in front], "--o", color="tab:orange", zorder=3,
          label="Pareto front (no candidate is faster and better)")
  for x, y, name in pts:
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
  if max(xs) > 10 * min(xs):
    ax.set_xscale("log")
  c0 = next(r.cost for r in _scored(results) if r.cost)
  ax.set_xlabel(f"throughput, examples / s (batch {c0['batch_size']}, {c0['device']})")
  ax.set_ylabel(score)
  ax.legend(fontsize=8, loc="best")
  if title:
    ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# ------------------------------------------------------------------------------------------
# Fine-tuning check.
# ------------------------------------------------------------------------------------------


def make_finetune_fn(*, workdir: str | pathlib.Path, dataset: str, steps: int,
                     learning_rate: float, batch_size: int, data_dir: str | None = None,
                     optimizer: str = "adamw", schedule: str = "cosine", warmup: int = 0,
                     image_size: int | None = None, max_len: int = 128,
                     train_per_class: int = 0, log: Log = absl_log) -> FinetuneFn:
  """(candidate, seed) -> test accuracy after fine-tuning it with the project's job.

  Every candidate gets the same recipe (`jaxpretrain.job.finetune`): a fresh classification
  head (`reset_head`, even when the source head has as many classes), `steps` steps of
  `batch_size` on the train split, accuracy on the test split; the seed sets the head's
  initialization, the data order and dropout. Runs live in
  <workdir>/finetune/NAME-<hash of the recipe, seed and checkpoint>/ and resume or are reused
  like any job.
  """
  recipe = dict(dataset=dataset, data_dir=data_dir, steps=steps, lr=learning_rate,
                batch_size=batch_size, optimizer=optimizer, schedule=schedule, warmup=warmup,
                image_size=image_size, max_len=max_len)
  if train_per_class:  # keys only when set: cached results of earlier recipes stay valid
    recipe["train_per_class"] = train_per_class

  def finetune(cand: features_lib.Candidate, seed: int) -> float:
    from jaxpretrain import job  # noqa: PLC0415 -- the training stack, only when asked

    run = {**recipe, "seed": seed}
    run_dir = finetune_run_dir(workdir, cand, run)
    config = job.JobConfig(workdir=str(run_dir), init_checkpoint=str(cand.path.absolute()),
                           reset_head=True, progress="log", log_every=max(1, steps // 4),
                           **run)
    result = job.finetune(config, log=lambda msg: log(f"{cand.name}: {msg}"))
    return float(result.metrics["accuracy"])

  return finetune


def finetune_run_dir(workdir: str | pathlib.Path, cand: features_lib.Candidate,
                     run: dict[str, Any]) -> pathlib.Path:
  """<workdir>/finetune/NAME-<hash>: of the recipe and seed, and of the checkpoint, so that a
  candidate whose NAME now points elsewhere gets a run of its own (the job would refuse to
  resume the old one with another checkpoint)."""
  ident = {**run, "init_checkpoint": str(pathlib.Path(cand.path).absolute())}
  digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
  return pathlib.Path(workdir) / "finetune" / f"{cand.name}-{digest}"


# ------------------------------------------------------------------------------------------
# The whole selection.
# ------------------------------------------------------------------------------------------


def _json_ready(x: Any) -> Any:
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_ready(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_ready(v) for v in x]
  return x


def is_stopped(e: BaseException) -> bool:
  """Whether `e` is the job's Stopped (a signal, with a checkpoint written), not a failure."""
  loop = sys.modules.get("jaxpretrain.job.loop")  # imported once a fine-tuning run started
  return loop is not None and isinstance(e, loop.Stopped)


def _one_line(e: BaseException) -> str:
  return " ".join(f"{type(e).__name__}: {e}".split())


def select_models(candidates: Sequence[str], *, dataset: str, workdir: str | pathlib.Path,
                  data_dir: str | None = None, split: str = "train",
                  max_examples: int | None = 2000, train_per_class: int = 0,
                  scores: Sequence[str] = (),
                  pooling: str = "pooled", batch_size: int = 64, image_size: int | None = None,
                  max_len: int = 128, seed: int = 0, finetune_fn: FinetuneFn | None = None,
                  finetune_settings: Mapping[str, Any] | None = None, finetune_seeds: int = 1,
                  bootstrap: int = DEFAULT_BOOTSTRAP, measure_cost: bool = True,
                  cost_repeats: int = cost_lib.DEFAULT_REPEATS,
                  cost_warmup: int = cost_lib.DEFAULT_WARMUP,
                  budgets: Mapping[str, float | None] | None = None,
                  recommend_by: str | None = None, strict: bool = False,
                  log: Log = absl_log, progress: bool = False) -> dict[str, Any]:
  """Costs, scores (and optionally fine-tunes) every candidate; writes the reports to `workdir`.

  Args:
    candidates: specs, see `features.load_candidate` (PATH, "minilm", "random:MODEL",
      "NAME=..."). Names must be distinct.
    dataset: a `data.load_dataset` spec (e.g. "mnist_local", "csv:PATH").
    workdir: output folder; cached features, costs and fine-tuning results are reused from it.
    data_dir: TFDS data dir.
    split: the split the scores are computed on.
    max_examples: a stratified, seeded subset of at most this many examples (None: all).
    train_per_class: the low-data regime: score on exactly the training examples a
      fine-tuning run with `--train_per_class` uses (split must be "train"; replaces
      `max_examples`). 0: off.
    scores: names in `SCORES` (empty: all).
    pooling, batch_size, image_size, max_len: feature extraction (see `features`); the cost is
      measured on one batch of `batch_size` at the same input size.
    seed: subset draw, random-init seed, first fine-tuning seed and bootstrap seed.
    finetune_fn: (candidate, seed) -> fine-tuned test accuracy, for the rank agreement check.
    finetune_settings: what defines a fine-tuning result (steps, lr...); a cached result is
      reused only if they are equal.
    finetune_seeds: fine-tuning runs per candidate, seeds `seed`, `seed + 1`...
    bootstrap: resamples for the tau intervals (0: none).
    measure_cost: measure parameters, FLOPs, latency, throughput and memory.
    cost_repeats, cost_warmup: timed and untimed calls of the cost measurement.
    budgets: {"max_latency_ms" | "max_params" | "max_gflops": limit or None}; candidates over
      any are dropped (not scored, not fine-tuned) with the reason.
    recommend_by: the score the recommendation maximizes (default logme, else the first).
    strict: a candidate that fails stops the selection (SelectionError) instead of being
      reported and left out.
    log: where each step's line goes (absl INFO by default; the CLI prints to stderr).
    progress: progress lines with an ETA (`console.progress`) on extraction, scoring and
      fine-tuning.
  Returns:
    The report written to results.json: settings, recommendation, per-candidate results,
    correlations.
  """
  names = check_scores(scores)
  by = check_recommend_by(recommend_by, names)
  limits = cost_lib.check_budgets(budgets or {})
  if limits and not measure_cost:
    raise ValueError(f"budgets {sorted(limits)} need the cost measurement (measure_cost=True)")
  if finetune_seeds < 1 or bootstrap < 0 or cost_repeats < 1 or cost_warmup < 0:
    raise ValueError(f"need finetune_seeds >= 1, bootstrap >= 0, cost_repeats >= 1, "
                     f"cost_warmup >= 0; got {finetune_seeds}, {bootstrap}, {cost_repeats}, "
                     f"{cost_warmup}")
  parsed = [features_lib.parse_spec(c)[0] for c in candidates]
  dupes = sorted({n for n in parsed if parsed.count(n) > 1})
  if not candidates or dupes:
    raise ValueError(f"need distinct candidate names; got {parsed} (repeated: {dupes}); "
                     "name them NAME=SPEC")
  workdir = pathlib.Path(workdir)
  if train_per_class:
    indices, source, meta = _low_data_rows(dataset, data_dir, split, train_per_class)
    labels = features_lib.source_labels(source)
    max_examples = None
  else:
    source, meta = data.load_dataset(dataset, data_dir, split)
    labels = features_lib.source_labels(source)
    indices = features_lib.stratified_subset(labels, max_examples, seed)
  workdir.mkdir(parents=True, exist_ok=True)
  log(f"{meta.name}: scoring on {len(indices)} of {len(labels)} examples ({split} split"
      f"{f', {train_per_class} per class' if train_per_class else ''})")
  settings = {"dataset": dataset, "split": split, "max_examples": max_examples,
              **({"train_per_class": train_per_class} if train_per_class else {}),
              "num_examples": len(indices), "num_classes": meta.num_classes,
              "pooling": pooling, "batch_size": batch_size, "image_size": image_size,
              "max_len": max_len, "seed": seed, "scores": names, "recommend_by": by,
              "budgets": limits, "finetune_seeds": finetune_seeds if finetune_fn else None,
              "bootstrap": bootstrap if finetune_fn else None,
              "cost": {"repeats": cost_repeats, "warmup": cost_warmup} if measure_cost
              else None}
  seeds = [seed + i for i in range(finetune_seeds)]
  results = []
  for k, (spec, name) in enumerate(zip(candidates, parsed, strict=True)):
    log(f"candidate {k + 1}/{len(candidates)}: {spec}")
    result = CandidateResult(name=name, spec=spec)
    stage = "load"
    try:
      cand = features_lib.load_candidate(spec, workdir / "candidates", seed=seed)
      result.model = cand.model_name
      if cand.modality != meta.modality:
        raise ValueError(f"it takes {cand.modality}; dataset '{dataset}' is {meta.modality}")
      if measure_cost:
        stage = "measure cost"
        cost = _cached_cost(cand, source, indices, settings, workdir, repeats=cost_repeats,
                            warmup=cost_warmup, log=log)
        result.cost = cost.to_json()
        over = cost_lib.over_budget(cost, limits)
        if over:
          result.status, result.reason = "over_budget", "; ".join(over)
          log(f"warning: candidate {name}: over budget: {result.reason}")
          results.append(result)
          continue
      stage = "extract features"
      feats, secs = _cached_features(
          cand, source, indices, settings, workdir, batch_size=batch_size, log=log,
          progress=progress,
          class_names=meta.class_names if any(n in ZERO_SHOT_SCORES for n in names) else None)
      result.feature_dim = int(feats.features.shape[1])
      result.num_examples = len(feats.labels)
      stage = "score"
      result.scores, result.unavailable, score_secs = compute_scores(
          feats, names, label=name, num_classes=meta.num_classes, log=log, progress=progress)
      result.saturated = saturated_scores(feats, result.scores)
      result.seconds = {"features": secs, **score_secs}
      if finetune_fn is not None:
        stage = "fine-tune"
        from jaxpretrain import console  # noqa: PLC0415

        runs = (console.progress(seeds, len(seeds), f"{name}: fine-tuning", every=1 / len(seeds))
                if progress else seeds)
        result.set_finetune([_cached_finetune(cand, finetune_fn, finetune_settings or {},
                                              workdir, s, log=log) for s in runs])
    except Exception as e:  # noqa: BLE001 -- any failure of one candidate is reported as such
      if is_stopped(e):  # SIGTERM/Ctrl-C in a fine-tuning run stops the selection, not a candidate
        raise
      message = f"candidate '{name}' ({spec}) failed to {stage}: {_one_line(e)}"
      if strict:
        raise SelectionError(message) from e
      log(f"error: {message}")
      result.status, result.reason = "failed", f"failed to {stage}: {_one_line(e)}"
    results.append(result)
  if not any(r.status == "ok" for r in results):
    raise SelectionError("no candidate could be scored: " + "; ".join(
        f"{r.name}: {r.reason}" for r in results))
  corr = (correlations(results, names, bootstrap=bootstrap, seed=seed)
          if finetune_fn is not None else None)
  rec = recommend(results, by)
  title = f"{meta.name}: {len(indices)} examples, {len(results)} candidates"
  (workdir / "ranking.md").write_text(markdown_table(
      results, names, corr, title=title, recommendation=rec, budgets=limits,
      finetune_seeds=finetune_seeds if finetune_fn else None, bootstrap=bootstrap))
  write_csv(workdir / "ranking.csv", results, names)
  plot_scores(workdir / "scores.png", results, names, title=title, recommendation=rec)
  if measure_cost:
    plot_pareto(workdir / "pareto.png", results, by, title=title)
  report = {"settings": settings, "finetune": dict(finetune_settings or {}) or None,
            "recommendation": rec, "results": [dataclasses.asdict(r) for r in results],
            "correlations": corr}
  (workdir / "results.json").write_text(json.dumps(_json_ready(report), indent=2) + "\n")
  log(f"wrote {workdir / 'ranking.md'}")
  return report


def _low_data_rows(dataset: str, data_dir: str | None, split: str, per_class: int):
  """(rows, source, meta): the training examples `finetune --train_per_class` trains on."""
  from jaxpretrain.job import task  # noqa: PLC0415 -- the training stack, only when asked

  if split != "train":
    raise ValueError(f"train_per_class={per_class} scores the fine-tuning training examples; "
                     f"split must be 'train', got {split!r}")
  options = task.DataOptions(dataset=dataset, data_dir=data_dir)
  source, meta = data.load_dataset(dataset, data_dir, "train",
                                   validation_fraction=options.validation_fraction)
  rows = sources.per_class_subset(features_lib.source_labels(source), per_class,
                                  seed=task.LOW_DATA_SEED)
  return rows, source, meta


def _feature_meta(cand, settings) -> dict[str, Any]:
  return {"spec": cand.spec, "path": str(cand.path.absolute()), "config": cand.config,
          **{k: settings[k] for k in ("dataset", "split", "pooling", "image_size", "max_len")},
          **{k: settings[k] for k in ("train_per_class",) if k in settings}}


def _cached_features(cand, source, indices, settings, workdir, *, batch_size, log=absl_log,
                     progress=False, class_names=None):
  """Features from workdir/features/NAME.npz when made the same way, else extracted.

  With `class_names` (zero_shot requested), a CLIPModel's features also hold its zero-shot
  logits over them (or why there are none), and the names and the prompt are part of its
  cache key; other candidates' features (and caches) are the same either way, with
  `features.NO_TEXT_TOWER` as why they have no zero-shot logits.
  """
  from jaxpretrain import api  # noqa: PLC0415
  from jaxpretrain.models import clip  # noqa: PLC0415

  path = workdir / "features" / f"{cand.name}.npz"
  meta = _feature_meta(cand, settings)
  text_tower = class_names is not None and api.has_text_tower(cand.model)
  if text_tower:
    meta["zero_shot"] = {"class_names": list(class_names), "template": clip.PROMPT}
  feats = features_lib.load_features(path, meta)
  if feats is not None and np.array_equal(feats.indices, indices):
    log(f"{cand.name}: features from {path}")
    if class_names is not None and not text_tower:
      feats = dataclasses.replace(feats, zero_shot_logits=None,
                                  zero_shot_unavailable=features_lib.NO_TEXT_TOWER)
    return feats, 0.0
  start = time.perf_counter()
  feats = features_lib.extract_features(
      cand, source, indices=indices, pooling=settings["pooling"], batch_size=batch_size,
      image_size=settings["image_size"], max_len=settings["max_len"],
      class_names=class_names if text_tower else None,
      progress=f"{cand.name}: extracting features" if progress else None)
  secs = time.perf_counter() - start
  features_lib.save_features(path, feats, meta)
  if class_names is not None and not text_tower:
    feats = dataclasses.replace(feats, zero_shot_unavailable=features_lib.NO_TEXT_TOWER)
  log(f"{cand.name}: {feats.features.shape} features in {secs:.1f}s -> {path}")
  return feats, secs


def _cost_inputs(cand, source, indices, settings):
  """(the extraction function, (variables, one batch of batch_size)) the cost is measured on."""
  prep = features_lib.preprocessor(cand, image_size=settings["image_size"],
                                   max_len=settings["max_len"])
  subset = features_lib.Subset(source, indices[:settings["batch_size"]])
  it = data.eval_iterator(subset, prep, global_batch_size=settings["batch_size"],
                          process_index=0, process_count=1, local_device_count=1,
                          num_threads=1)
  batch = dict(next(iter(it)))
  batch.pop("mask", None)
  batch.pop("label", None)
  fn = features_lib.make_extract_fn(cand.model, cand.family, settings["pooling"])
  return fn, (cand.variables, batch)


def _cached_cost(cand, source, indices, settings, workdir, *, repeats, warmup, log=absl_log
                 ) -> cost_lib.Cost:
  """The cost from workdir/cost/NAME.json when measured the same way here, else measured."""
  import jax  # noqa: PLC0415

  path = workdir / "cost" / f"{cand.name}.json"
  key = json.loads(json.dumps(
      {**_feature_meta(cand, settings), "batch_size": settings["batch_size"],
       "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
       "repeats": repeats, "warmup": warmup}, sort_keys=True, default=str))
  if path.is_file():
    try:
      saved = json.loads(path.read_text())
      if saved.get("key") == key:
        log(f"{cand.name}: cost from {path}")
        return cost_lib.Cost.from_json(saved["cost"])
    except (ValueError, TypeError, KeyError) as e:
      log(f"warning: {cand.name}: ignoring unreadable {path} ({_one_line(e)})")
  fn, args = _cost_inputs(cand, source, indices, settings)
  cost = cost_lib.measure_cost(fn, args, batch_size=settings["batch_size"], repeats=repeats,
                               warmup=warmup)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"key": key, "cost": cost.to_json()}, indent=2) + "\n")
  log(f"{cand.name}: {cost.params:,} params, {_fmt_g(cost.gflops_per_example)} GFLOPs/example, "
      f"{cost.latency_ms:.3g} ms/batch, {cost.throughput:.4g} examples/s")
  return cost


def _cached_finetune(cand, finetune_fn, settings, workdir, seed: int, log=absl_log) -> float:
  """Fine-tuned accuracy from workdir/finetune/NAME-seedS.json when run the same way, else runs."""
  path = workdir / "finetune" / f"{cand.name}-seed{seed}.json"
  key = json.loads(json.dumps({"spec": cand.spec, "path": str(cand.path.absolute()),
                               **settings, "seed": seed}, sort_keys=True, default=str))
  if path.is_file():
    saved = json.loads(path.read_text())
    if saved.get("key") == key and isinstance(saved.get("accuracy"), (int, float)):
      log(f"{cand.name}: fine-tuned accuracy {saved['accuracy']:.4f} (seed {seed}) from {path}")
      return float(saved["accuracy"])
  log(f"{cand.name}: fine-tuning, seed {seed} ({settings})")
  start = time.perf_counter()
  acc = float(finetune_fn(cand, seed))
  if not (math.isfinite(acc) and 0.0 <= acc <= 1.0):
    raise ValueError(f"fine-tuned accuracy {acc} is not in [0, 1]")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"key": key, "accuracy": acc,
                              "seconds": time.perf_counter() - start}, indent=2) + "\n")
  log(f"{cand.name}: fine-tuned accuracy {acc:.4f}, seed {seed} "
      f"({time.perf_counter() - start:.0f}s)")
  return acc
