"""Model ranking: score every candidate on a target dataset, write a table and a chart.

    report = select_models(["minilm", "random:minilm_l6"], dataset="tweets_sentiment",
                           workdir="/tmp/select", max_examples=2000)

For each candidate the features are extracted once (and cached as .npz in the workdir), then
every transferability score of `scores.SCORES` is computed on them. With a fine-tuning
function, each candidate is also fine-tuned on a fixed budget, and each score's ranking is
compared with the ranking by fine-tuned accuracy through Kendall's tau-b and the weighted tau
of Vigna (2015), which weighs disagreements among the top candidates more: choosing a model
only needs the top of the ranking right.

Workdir layout:
  candidates/            converted (minilm) and random-init checkpoint folders
  features/NAME.npz      cached features, labels, rows and source-head probabilities
  finetune/NAME.json     cached fine-tuned accuracies
  ranking.md, ranking.csv, scores.png, results.json
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from jaxpretrain import data
from jaxpretrain.select import features as features_lib
from jaxpretrain.select.scores import SCORES

# Scores that read the source head's probabilities; candidates without a classification head
# (random init, plain encoders) have no value for them.
HEAD_SCORES = ("leep", "nce")
FINETUNE = "finetune_accuracy"

FinetuneFn = Callable[[features_lib.Candidate], float]
# Libraries whose INFO messages (orbax: several per checkpoint read) would bury the progress.
QUIET_LIBRARIES = ("orbax", "etils", "tensorflow_datasets", "grain")


def quiet_library_logs(libraries: Sequence[str] = QUIET_LIBRARIES) -> None:
  """Keeps only warnings and errors from `libraries` on absl's log handler."""
  import logging as std_logging  # noqa: PLC0415

  parts = tuple(f"/{name}/" for name in libraries)

  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        p in record.pathname for p in parts)

  logging.get_absl_handler().addFilter(keep)


# ------------------------------------------------------------------------------------------
# Rank correlations.
# ------------------------------------------------------------------------------------------


def _check_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"x and y must have the same length; got {x.size} and {y.size}")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError("x and y must be finite (drop candidates without a value first)")
  return x, y


def _pair_signs(v: np.ndarray) -> np.ndarray:
  """sign(v_i - v_j) for i < j, [n (n - 1) / 2]."""
  i, j = np.triu_indices(v.size, 1)
  return np.sign(v[i] - v[j])


def kendall_tau(x: Any, y: Any) -> float:
  """Kendall's tau-b (Kendall 1945): ties in either ranking shrink the denominator.

  tau_b = (C - D) / sqrt((P - T_x) (P - T_y)) over the P = n (n - 1) / 2 pairs, with C / D
  the concordant / discordant pairs and T_x / T_y the pairs tied in x / y; scipy's
  `kendalltau` default. O(n^2) memory, meant for rankings of a few hundred items at most.

  Args:
    x, y: [n] scores of the same items.
  Returns:
    tau in [-1, 1]; NaN when either ranking is constant (or n < 2).
  """
  x, y = _check_xy(x, y)
  sx, sy = _pair_signs(x), _pair_signs(y)
  denom = math.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))
  return float(np.sum(sx * sy) / denom) if denom else math.nan


def hyperbolic_weigher(rank: np.ndarray) -> np.ndarray:
  """Vigna's default weight of the item at rank r (0 = most important): 1 / (r + 1)."""
  return 1.0 / (rank + 1.0)


def _weighted_tau_ranked(x: np.ndarray, y: np.ndarray, weigher) -> float:
  """Weighted tau with importance ranks from the decreasing lexicographic order by (x, y)."""
  n = x.size
  order = np.lexsort((y, x))[::-1]  # largest x first; ties broken by larger y
  rank = np.empty(n, np.int64)
  rank[order] = np.arange(n)
  w = weigher(rank.astype(np.float64))
  i, j = np.triu_indices(n, 1)
  pair_w = w[i] + w[j]  # additive: a pair weighs the sum of its items' weights
  sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
  denom = math.sqrt(np.sum(pair_w * (sx != 0)) * np.sum(pair_w * (sy != 0)))
  return float(np.sum(pair_w * sx * sy) / denom) if denom else math.nan


def weighted_tau(x: Any, y: Any, weigher: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> float:
  """Weighted Kendall tau, Vigna, "A weighted correlation index for rankings with ties", WWW 2015.

  Each pair (i, j) weighs w(r_i) + w(r_j), r the item's importance rank (0 = top) and w the
  hyperbolic weigher 1 / (r + 1), so swaps near the top cost more. tau = sum_pairs
  weight * sign(x_i - x_j) sign(y_i - y_j) / sqrt(weight of pairs untied in x * ... in y).
  As scipy.stats.weightedtau's defaults (rank=True, additive=True): the mean of the values
  with ranks from the decreasing lexicographic order by (x, y) and by (y, x). O(n^2) memory.

  Args:
    x, y: [n] scores of the same items (higher = better).
    weigher: rank [n] float -> weight [n]; default `hyperbolic_weigher`.
  Returns:
    tau in [-1, 1]; NaN when either ranking is constant (or n < 2).
  """
  x, y = _check_xy(x, y)
  weigher = weigher or hyperbolic_weigher
  return 0.5 * (_weighted_tau_ranked(x, y, weigher) + _weighted_tau_ranked(y, x, weigher))


# ------------------------------------------------------------------------------------------
# Scoring.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CandidateResult:
  """One row of the ranking."""
  name: str
  spec: str
  model: str
  feature_dim: int
  num_examples: int
  scores: dict[str, float | None]  # None: the score needs a head the candidate lacks
  seconds: dict[str, float]  # per score, plus "features"
  finetune_accuracy: float | None = None


def check_scores(names: Sequence[str]) -> list[str]:
  """The requested score names, or a ValueError naming the unknown ones and the known."""
  names = list(names) or list(SCORES)
  unknown = [s for s in names if s not in SCORES]
  if unknown:
    raise ValueError(f"unknown score(s) {unknown}; known: {sorted(SCORES)}")
  return names


def compute_scores(feats: features_lib.Features, names: Sequence[str], *, label: str = ""
                   ) -> tuple[dict[str, float | None], dict[str, float]]:
  """Every score in `names` on one candidate's features.

  Returns:
    ({score: value, or None when it needs source probabilities the candidate has none of},
     {score: seconds}).
  """
  values, seconds = {}, {}
  for name in check_scores(names):
    if name in HEAD_SCORES and feats.source_probs is None:
      values[name] = None
      continue
    start = time.perf_counter()
    values[name] = float(SCORES[name](feats.features, feats.labels,
                                      source_probs=feats.source_probs))
    seconds[name] = time.perf_counter() - start
    logging.info("%s: %s = %.4f (%.1fs)", label, name, values[name], seconds[name])
  return values, seconds


def correlations(results: Sequence[CandidateResult], names: Sequence[str]
                 ) -> dict[str, dict[str, Any]]:
  """Per score, Kendall's tau-b and weighted tau against the fine-tuned accuracy.

  Only candidates with both values enter. Also reports whether the score's top candidate is
  the best fine-tuned one ("top1_hit") and the accuracy it would have given ("top1_accuracy").
  """
  out = {}
  for name in names:
    rows = [r for r in results
            if r.scores.get(name) is not None and r.finetune_accuracy is not None]
    entry = {"n": len(rows), "kendall_tau": math.nan, "weighted_tau": math.nan,
             "top1": None, "top1_accuracy": None, "top1_hit": None}
    if len(rows) >= 2:
      s = np.asarray([r.scores[name] for r in rows])
      acc = np.asarray([r.finetune_accuracy for r in rows])
      top = int(np.argmax(s))
      entry.update(kendall_tau=kendall_tau(s, acc), weighted_tau=weighted_tau(s, acc),
                   top1=rows[top].name, top1_accuracy=float(acc[top]),
                   top1_hit=bool(acc[top] == acc.max()))
    out[name] = entry
  return out


def ranks(values: Sequence[float | None]) -> list[int | None]:
  """1-based rank of each value, highest first (ties share the best rank); None stays None."""
  present = sorted((v for v in values if v is not None), reverse=True)
  return [None if v is None else present.index(v) + 1 for v in values]


# ------------------------------------------------------------------------------------------
# Reports.
# ------------------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 4) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "—"
  return f"{v:.{digits}f}"


def _columns(results: Sequence[CandidateResult], names: Sequence[str]) -> list[str]:
  has_ft = any(r.finetune_accuracy is not None for r in results)
  return list(names) + ([FINETUNE] if has_ft else [])


def _value(r: CandidateResult, col: str) -> float | None:
  return r.finetune_accuracy if col == FINETUNE else r.scores.get(col)


def markdown_table(results: Sequence[CandidateResult], names: Sequence[str],
                   corr: Mapping[str, Mapping[str, Any]] | None = None, *, title: str = ""
                   ) -> str:
  """The ranking as markdown: one row per candidate, "value (rank)" per score.

  Rows are ordered by the fine-tuned accuracy when there is one, else by the first score.
  With `corr`, a second table gives each score's tau against the fine-tuned accuracy.
  """
  cols = _columns(results, names)
  key = cols[-1] if FINETUNE in cols else cols[0]
  col_ranks = {c: ranks([_value(r, c) for r in results]) for c in cols}
  order = sorted(range(len(results)), key=lambda i: col_ranks[key][i] or len(results) + 1)
  lines = [f"## {title}", ""] if title else []
  lines += ["| candidate | model | dim | " + " | ".join(cols) + " |",
            "|---|---|---:|" + "---:|" * len(cols)]
  for i in order:
    r = results[i]
    cells = [f"{_fmt(_value(r, c))} ({col_ranks[c][i]})" if _value(r, c) is not None else "—"
             for c in cols]
    lines.append(f"| {r.name} | {r.model} | {r.feature_dim} | " + " | ".join(cells) + " |")
  if corr:
    lines += ["", f"Rank agreement with {FINETUNE} (higher is better):", "",
              "| score | n | Kendall τ | weighted τ | picks | its accuracy |",
              "|---|---:|---:|---:|---|---:|"]
    for name, c in corr.items():
      pick = "—" if c["top1"] is None else c["top1"] + (" ✓" if c["top1_hit"] else "")
      lines.append(f"| {name} | {c['n']} | {_fmt(c['kendall_tau'], 3)} | "
                   f"{_fmt(c['weighted_tau'], 3)} | {pick} | {_fmt(c['top1_accuracy'])} |")
  return "\n".join(lines) + "\n"


def write_csv(path: str | pathlib.Path, results: Sequence[CandidateResult],
              names: Sequence[str]) -> None:
  """One row per candidate: name, spec, model, dim, n, then each score (empty if none)."""
  cols = _columns(results, names)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["candidate", "spec", "model", "feature_dim", "num_examples", *cols])
    for r in results:
      w.writerow([r.name, r.spec, r.model, r.feature_dim, r.num_examples,
                  *("" if _value(r, c) is None else repr(_value(r, c)) for c in cols)])


def _axis_range(values: Sequence[float]) -> tuple[float, float]:
  """x-limits that show differences: the data's range plus margins, not the distance to 0."""
  lo, hi = min(values), max(values)
  pad = 0.2 * (hi - lo) or 0.05 * max(abs(hi), 1e-3)
  return lo - pad, hi + 0.6 * pad  # room on the right for the value labels


def plot_scores(path: str | pathlib.Path, results: Sequence[CandidateResult],
                names: Sequence[str], *, title: str = "") -> None:
  """A PNG bar chart, one panel per score (and the fine-tuned accuracy), one bar per candidate.

  Each panel's axis spans its values' range (scores differ by little next to their size);
  the best candidate's bar is orange and every bar is labelled with its value.
  """
  import matplotlib  # noqa: PLC0415 -- heavy; only when writing reports

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  from matplotlib import ticker  # noqa: PLC0415

  cols = _columns(results, names)
  ncol = min(4, len(cols))
  nrow = -(-len(cols) // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.8 * ncol, 0.45 * len(results) * nrow + 1.6),
                           squeeze=False)
  labels = [r.name for r in results]
  for ax, col in zip(list(axes.flat)[:len(cols)], cols, strict=True):
    vals = [_value(r, col) for r in results]
    finite = [v for v in vals if v is not None]
    ax.set_title(col, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first candidate on top, rows without a value too
    if not finite:
      ax.set_xticks([])
      ax.text(0.5, 0.5, "no values (needs a classification head)", ha="center",
              transform=ax.transAxes, fontsize=8)
      continue
    lo, hi = _axis_range(finite)
    best = max(finite)
    ax.barh(range(len(labels)), [np.nan if v is None else v - lo for v in vals], left=lo,
            color=["tab:orange" if v == best else "tab:blue" for v in vals])
    for i, v in enumerate(vals):
      ax.text(lo if v is None else v, i, " —" if v is None else f" {v:.4g}", va="center",
              fontsize=7)
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
  for ax in list(axes.flat)[len(cols):]:
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------------------
# Fine-tuning check.
# ------------------------------------------------------------------------------------------


def make_finetune_fn(*, workdir: str | pathlib.Path, dataset: str, steps: int,
                     learning_rate: float, batch_size: int, data_dir: str | None = None,
                     optimizer: str = "adamw", schedule: str = "cosine", warmup: int = 0,
                     image_size: int | None = None, max_len: int = 128, seed: int = 0
                     ) -> FinetuneFn:
  """candidate -> test accuracy after fine-tuning it with the project's job, on a fixed budget.

  Every candidate gets the same recipe (`jaxpretrain.job.finetune`): a fresh classification
  head (`reset_head`, even when the source head has as many classes), `steps` steps of
  `batch_size` on the train split, accuracy on the test split. Runs live in
  <workdir>/finetune/NAME-<hash of the recipe>/ and resume or are reused like any job.
  """
  recipe = dict(dataset=dataset, data_dir=data_dir, steps=steps, lr=learning_rate,
                batch_size=batch_size, optimizer=optimizer, schedule=schedule, warmup=warmup,
                image_size=image_size, max_len=max_len, seed=seed)
  digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]

  def finetune(cand: features_lib.Candidate) -> float:
    from jaxpretrain import job  # noqa: PLC0415 -- the training stack, only when asked

    run_dir = pathlib.Path(workdir) / "finetune" / f"{cand.name}-{digest}"
    config = job.JobConfig(workdir=str(run_dir), init_checkpoint=str(cand.path.absolute()),
                           reset_head=True, progress="log", log_every=max(1, steps // 4),
                           **recipe)
    result = job.finetune(config, log=lambda msg: logging.info("%s: %s", cand.name, msg))
    return float(result.metrics["accuracy"])

  return finetune


# ------------------------------------------------------------------------------------------
# The whole selection.
# ------------------------------------------------------------------------------------------


def _json_ready(x: Any) -> Any:
  if isinstance(x, float) and math.isnan(x):
    return None
  if isinstance(x, dict):
    return {k: _json_ready(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_ready(v) for v in x]
  return x


def select_models(candidates: Sequence[str], *, dataset: str, workdir: str | pathlib.Path,
                  data_dir: str | None = None, split: str = "train",
                  max_examples: int | None = 2000, scores: Sequence[str] = (),
                  pooling: str = "pooled", batch_size: int = 64, image_size: int | None = None,
                  max_len: int = 128, seed: int = 0, finetune_fn: FinetuneFn | None = None,
                  finetune_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Scores (and optionally fine-tunes) every candidate; writes the reports to `workdir`.

  Args:
    candidates: specs, see `features.load_candidate` (PATH, "minilm", "random:MODEL",
      "NAME=..."). Names must be distinct.
    dataset: a `data.load_dataset` spec (e.g. "mnist_local", "csv:PATH").
    workdir: output folder; cached features and fine-tuning results are reused from it.
    data_dir: TFDS data dir.
    split: the split the scores are computed on.
    max_examples: a stratified, seeded subset of at most this many examples (None: all).
    scores: names in `SCORES` (empty: all).
    pooling, batch_size, image_size, max_len: feature extraction (see `features`).
    seed: subset draw and random-init seed.
    finetune_fn: candidate -> fine-tuned test accuracy, for the rank agreement check.
    finetune_settings: what defines a fine-tuning result (steps, lr...); a cached result is
      reused only if they are equal.
  Returns:
    The report written to results.json: settings, per-candidate results, correlations.
  """
  names = check_scores(scores)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  parsed = [features_lib.parse_spec(c)[0] for c in candidates]
  dupes = sorted({n for n in parsed if parsed.count(n) > 1})
  if not candidates or dupes:
    raise ValueError(f"need distinct candidate names; got {parsed} (repeated: {dupes}); "
                     "name them NAME=SPEC")
  source, meta = data.load_dataset(dataset, data_dir, split)
  labels = features_lib.source_labels(source)
  indices = features_lib.stratified_subset(labels, max_examples, seed)
  logging.info("%s: scoring on %d of %d examples (%s split)", meta.name, len(indices),
               len(labels), split)
  settings = {"dataset": dataset, "split": split, "max_examples": max_examples,
              "num_examples": len(indices), "pooling": pooling, "image_size": image_size,
              "max_len": max_len, "seed": seed, "scores": names}
  results = []
  for k, spec in enumerate(candidates):
    logging.info("candidate %d/%d: %s", k + 1, len(candidates), spec)
    cand = features_lib.load_candidate(spec, workdir / "candidates", seed=seed)
    if cand.modality != meta.modality:
      raise ValueError(f"candidate '{cand.name}' ({cand.model_name}) takes {cand.modality}; "
                       f"dataset '{dataset}' is {meta.modality}")
    feats, secs = _cached_features(cand, source, indices, settings, workdir,
                                   batch_size=batch_size)
    values, score_secs = compute_scores(feats, names, label=cand.name)
    result = CandidateResult(name=cand.name, spec=spec, model=cand.model_name,
                             feature_dim=int(feats.features.shape[1]),
                             num_examples=len(feats.labels), scores=values,
                             seconds={"features": secs, **score_secs})
    if finetune_fn is not None:
      result.finetune_accuracy = _cached_finetune(cand, finetune_fn, finetune_settings or {},
                                                  workdir)
    results.append(result)
  corr = correlations(results, names) if finetune_fn is not None else None
  title = f"{meta.name}: {len(indices)} examples, {len(results)} candidates"
  (workdir / "ranking.md").write_text(markdown_table(results, names, corr, title=title))
  write_csv(workdir / "ranking.csv", results, names)
  plot_scores(workdir / "scores.png", results, names, title=title)
  report = {"settings": settings, "finetune": dict(finetune_settings or {}) or None,
            "results": [dataclasses.asdict(r) for r in results], "correlations": corr}
  (workdir / "results.json").write_text(json.dumps(_json_ready(report), indent=2) + "\n")
  logging.info("wrote %s", workdir / "ranking.md")
  return report


def _cached_features(cand, source, indices, settings, workdir, *, batch_size):
  """Features from workdir/features/NAME.npz when made the same way, else extracted."""
  path = workdir / "features" / f"{cand.name}.npz"
  meta = {"spec": cand.spec, "path": str(cand.path.absolute()),
          "config": cand.config, **{k: settings[k] for k in
                                    ("dataset", "split", "pooling", "image_size", "max_len")}}
  feats = features_lib.load_features(path, meta)
  if feats is not None and np.array_equal(feats.indices, indices):
    logging.info("%s: features from %s", cand.name, path)
    return feats, 0.0
  start = time.perf_counter()
  feats = features_lib.extract_features(
      cand, source, indices=indices, pooling=settings["pooling"], batch_size=batch_size,
      image_size=settings["image_size"], max_len=settings["max_len"])
  secs = time.perf_counter() - start
  features_lib.save_features(path, feats, meta)
  logging.info("%s: %s features in %.1fs -> %s", cand.name, feats.features.shape, secs, path)
  return feats, secs


def _cached_finetune(cand, finetune_fn, settings, workdir) -> float:
  """Fine-tuned accuracy from workdir/finetune/NAME.json when run the same way, else runs it."""
  path = workdir / "finetune" / f"{cand.name}.json"
  key = json.loads(json.dumps({"spec": cand.spec, "path": str(cand.path.absolute()),
                               **settings}, sort_keys=True, default=str))
  if path.is_file():
    saved = json.loads(path.read_text())
    if saved.get("key") == key:
      logging.info("%s: fine-tuned accuracy %.4f from %s", cand.name, saved["accuracy"], path)
      return float(saved["accuracy"])
  logging.info("%s: fine-tuning (%s)", cand.name, settings)
  start = time.perf_counter()
  acc = float(finetune_fn(cand))
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"key": key, "accuracy": acc,
                              "seconds": time.perf_counter() - start}, indent=2) + "\n")
  logging.info("%s: fine-tuned accuracy %.4f (%.0fs)", cand.name, acc,
               time.perf_counter() - start)
  return acc
