"""Transferability scores: how well a candidate's features (or source head) fit a target task.

Every score takes features already extracted from a candidate model, `[n, d]`, and integer
target labels `[n]`, and returns a number where higher means "transfers better":

  logme                 LogME, You et al., ICML 2021; fixed-point form of arXiv:2110.10545.
  leep                  LEEP, Nguyen et al., ICML 2020 (needs the source head's probabilities).
  nce                   NCE, Tran et al., ICCV 2019 (needs source pseudo-labels).
  h_score               H-score, Bao et al., ICIP 2019.
  knn_accuracy          leave-one-out (or k-fold) kNN accuracy, batched in JAX.
  linear_probe          closed-form ridge probe, regularization chosen by k-fold CV.
  few_shot_linear_probe the same probe trained on `shots` examples per class.

The linear algebra runs in NumPy float64: LogME's evidence and the ridge solutions subtract
large, nearly equal terms. Only the kNN search, which ranks distances, runs in JAX float32.
`SCORES` maps a name to a callable with one signature for the model-ranking CLI:
`score_fn(features, labels, *, source_probs=None) -> float`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# LogME fixed point: stop when alpha / beta changes by less than this (relative). The
# original code stops at 1e-3 after at most 11 steps; a tighter stop costs little because the
# iteration is O(min(n, d) * classes) per step once F has been decomposed.
LOGME_TOL = 1e-10
LOGME_MAX_ITER = 1000
# Probabilities from a float32 softmax sum to 1 within ~1e-6 per row; anything further off is
# not a probability vector (e.g. logits passed by mistake).
PROB_SUM_TOL = 1e-3
# H-score inverts cov(f) on the directions whose variance exceeds this fraction of the largest
# (a relative pseudo-inverse): rank-deficient features (d > n, constant or duplicated
# channels) would otherwise divide by round-off. Invariance under invertible linear maps holds
# as long as no direction of the mapped features falls below the cut-off.
H_SCORE_RCOND = 1e-10
# A feature whose standard deviation is below this (relative to its magnitude) is treated as
# constant by the linear probe's standardization instead of being blown up by 1 / ~0.
STD_FLOOR = 1e-12
# Per-example ridge strengths searched by `linear_probe` (see `_ridge_predict` for the scale).
DEFAULT_LAMBDAS = tuple(float(x) for x in np.logspace(-6, 4, 11))
# `few_shot_linear_probe` cannot cross-validate one example per class, so it uses one fixed
# per-example ridge strength: about big_vision's few-shot l2 of 2**10 at a few hundred
# training examples on standardized features.
FEW_SHOT_L2 = 1.0


# ------------------------------------------------------------------------------------------
# Input checks.
# ------------------------------------------------------------------------------------------


def _check_features(features: Any, name: str = "features") -> np.ndarray:
  """Returns `features` as float64 `[n, d]`, or raises ValueError naming what is wrong."""
  f = np.asarray(features)
  if f.ndim != 2:
    raise ValueError(f"{name} must be 2-D [n, d]; got shape {f.shape}")
  if not np.issubdtype(f.dtype, np.number) or np.issubdtype(f.dtype, np.complexfloating):
    raise ValueError(f"{name} must be real numbers; got dtype {f.dtype}")
  f = f.astype(np.float64)
  bad = ~np.isfinite(f)
  if bad.any():
    row = int(np.argwhere(bad)[0, 0])
    raise ValueError(
      f"{name} contain {int(bad.sum())} non-finite value(s) (NaN/inf), first in row {row}"
    )
  return f


def _check_labels(
  labels: Any,
  n: int | None,
  num_classes: int | None = None,
  name: str = "labels",
  min_classes: int = 2,
) -> tuple[np.ndarray, int]:
  """Returns (`labels` as int64 `[n]`, number of classes), or raises ValueError."""
  y = np.asarray(labels)
  if y.ndim != 1:
    raise ValueError(f"{name} must be 1-D [n]; got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{name} must be integers; got dtype {y.dtype}")
  if n is not None and y.shape[0] != n:
    raise ValueError(f"{name} has {y.shape[0]} entries but features have n={n} rows")
  y = y.astype(np.int64)
  if y.size and y.min() < 0:
    raise ValueError(f"{name} must be >= 0; got {int(y.min())}")
  if num_classes is not None and y.size and y.max() >= num_classes:
    raise ValueError(
      f"{name} contain {int(y.max())}, out of range for num_classes={num_classes} "
      f"(allowed 0..{num_classes - 1})"
    )
  present = np.unique(y)
  if present.size < min_classes:
    raise ValueError(
      f"{name} have {present.size} distinct class(es) {present.tolist()}; "
      f"need at least {min_classes}"
    )
  return y, int(num_classes if num_classes is not None else y.max() + 1)


def _check_probs(source_probs: Any, n: int | None) -> np.ndarray:
  """Returns `source_probs` as float64 `[n, z]` rows on the simplex, or raises ValueError."""
  p = _check_features(source_probs, name="source_probs")
  if n is not None and p.shape[0] != n:
    raise ValueError(f"source_probs has {p.shape[0]} rows but labels have n={n}")
  if p.min() < 0:
    raise ValueError(f"source_probs must be >= 0 (probabilities, not logits); min {p.min():g}")
  err = np.abs(p.sum(1) - 1.0)
  if err.max() > PROB_SUM_TOL:
    row = int(err.argmax())
    raise ValueError(
      f"source_probs rows must sum to 1 (softmax output); row {row} sums to {p[row].sum():g}"
    )
  return p / p.sum(1, keepdims=True)


def _check_pair(
  features: Any, labels: Any, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
  f = _check_features(features)
  y, c = _check_labels(labels, f.shape[0], num_classes)
  return f, y, c


def _one_hot(y: np.ndarray, c: int) -> np.ndarray:
  return (y[:, None] == np.arange(c)[None, :]).astype(np.float64)  # [n, c]


# ------------------------------------------------------------------------------------------
# LogME.
# ------------------------------------------------------------------------------------------


def logme(features: Any, labels: Any, num_classes: int | None = None) -> float:
  """LogME: log marginal evidence of a Bayesian linear model from features to labels.

  You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning", ICML 2021. For each class c, the one-hot column y_c [n] is modelled as
  y = F w + noise, w ~ N(0, 1/alpha), noise ~ N(0, 1/beta); alpha, beta maximize the evidence
  and the score is the maximized log evidence per example, averaged over classes.

  The maximization uses the fixed-point iteration of You et al., "Ranking and Tuning
  Pre-trained Models", arXiv:2110.10545 (Algorithm 2): one thin SVD F = U S V^T, then in
  the basis of U everything is a sum over singular values, so all classes iterate together
  in O(min(n, d) * C) per step. Unlike the reference code we keep the (d - rank) zero
  eigenvalues of F^T F in log|A| (each contributes log alpha), as Algorithm 1 of the ICML
  paper does, and we add no 1e-5 to the denominators.

  Classes that never occur in `labels` are skipped: their all-zero target has no finite
  evidence maximum.

  Args:
    features: [n, d] features of the target data.
    labels: [n] integer class ids in [0, num_classes).
    num_classes: number of target classes; default `labels.max() + 1`.

  Returns:
    The LogME score (log evidence per example, mean over present classes).
  """
  f, y, _ = _check_pair(features, labels, num_classes)
  n = f.shape[0]
  present = np.unique(y)
  targets = _one_hot(y, int(y.max()) + 1)[:, present]  # [n, c]
  u, s, _ = np.linalg.svd(f, full_matrices=False)  # u [n, k], s [k], k = min(n, d)
  sigma = (s * s)[:, None]  # [k, 1], the nonzero-capable eigenvalues of F^T F
  z2 = (u.T @ targets) ** 2  # [k, c], target energy along each singular direction
  res_out = np.maximum(targets.sum(0) - z2.sum(0), 0.0)  # [c], energy outside span(U)
  t = _logme_fixed_point(sigma, z2, res_out, n)
  gamma, res2, tm2 = _logme_terms(t, sigma, z2, res_out)
  beta = np.maximum(n - gamma, _TINY) / np.maximum(res2, _TINY)  # alpha = beta * t
  # 2 L = d log a + n log b - log|a I + b F^T F| - b ||F m - y||^2 - a m^T m - n log 2 pi.
  # F^T F has d - k zero eigenvalues besides sigma, so d log a - log|A| = -sum log(1 + sigma/t):
  # finite as t -> inf (the "no signal" limit), where alpha itself overflows.
  evidence = (
    n / 2 * np.log(beta)
    - 0.5 * np.log1p(sigma / t).sum(0)
    - beta / 2 * (res2 + tm2)  # beta ||F m - y||^2 + alpha m^T m, alpha m^T m = beta t m^T m
    - n / 2 * np.log(2 * np.pi)
  )  # [c]
  return float(np.mean(evidence / n))


_TINY = np.finfo(np.float64).tiny


def _logme_terms(
  t: np.ndarray, sigma: np.ndarray, z2: np.ndarray, res_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Sufficient statistics of the posterior at t = alpha / beta, per class.

  Written in r = sigma / t so that nothing overflows as t -> inf.

  Args:
    t: [c] alpha / beta per class.
    sigma: [k, 1] eigenvalues of F^T F.
    z2: [k, c] squared projections of each target onto the left singular vectors.
    res_out: [c] squared norm of each target outside the column span of F.

  Returns:
    gamma (effective number of parameters), ||F m - y||^2 and t * m^T m, each [c].
  """
  r = sigma / t  # [k, c]
  shrink = 1.0 / (1.0 + r)  # fraction of each direction the posterior mean leaves unfit
  gamma = (r * shrink).sum(0)
  res2 = (z2 * shrink**2).sum(0) + res_out
  tm2 = (r * z2 * shrink**2).sum(0)
  return gamma, res2, tm2


def _logme_fixed_point(
  sigma: np.ndarray, z2: np.ndarray, res_out: np.ndarray, n: int
) -> np.ndarray:
  """MacKay's fixed point alpha = gamma / m^T m, beta = (n - gamma) / ||F m - y||^2.

  Iterated on t = alpha / beta for all classes at once (arXiv:2110.10545, Algorithm 2).
  t is kept in [1e-15, 1e15] * max(sigma): at the upper end the weights are pinned to zero
  (the target is uncorrelated with the features) and log1p(sigma / t) < 1e-15; the lower end
  is only reached when the features interpolate the target exactly (rank(F) >= n).

  Args:
    sigma: [k, 1] eigenvalues of F^T F.
    z2: [k, c] squared projections of each target onto the left singular vectors.
    res_out: [c] squared norm of each target outside the column span of F.
    n: number of examples.

  Returns:
    [c] alpha / beta at the fixed point.
  """
  scale = max(float(sigma.max()), _TINY)
  t_min, t_max = 1e-15 * scale, 1e15 * scale
  t = np.ones(z2.shape[1])  # alpha = beta = 1, as in the papers
  active = np.ones_like(t, dtype=bool)
  for _ in range(LOGME_MAX_ITER):
    gamma, res2, tm2 = _logme_terms(t, sigma, z2, res_out)
    # alpha / beta = gamma ||F m - y||^2 / ((n - gamma) m^T m), with m^T m = tm2 / t.
    new_t = t * gamma * res2 / (np.maximum(n - gamma, _TINY) * np.maximum(tm2, _TINY))
    new_t = np.clip(new_t, t_min, t_max)
    active &= np.abs(new_t - t) > LOGME_TOL * t
    t = np.where(active, new_t, t)
    if not active.any():
      break
  return t


# ------------------------------------------------------------------------------------------
# Scores from the source classifier head: LEEP and NCE.
# ------------------------------------------------------------------------------------------


def pseudo_labels(source_probs: Any) -> np.ndarray:
  """Source-class pseudo-labels, the argmax of the source head's probabilities.

  Args:
    source_probs: [n, z] probabilities (or logits: the argmax is the same) over z source
      classes.

  Returns:
    [n] int64 source class ids.
  """
  p = _check_features(source_probs, name="source_probs")
  return np.argmax(p, axis=1).astype(np.int64)


def leep(source_probs: Any, labels: Any) -> float:
  """LEEP: log expected empirical prediction of the source head re-mapped to target labels.

  Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of
  Learned Representations", ICML 2020, eqs. (1)-(2):
    P(y, z) = 1/n sum_i theta_i(z) [y_i = y],   P(y | z) = P(y, z) / P(z),
    LEEP = 1/n sum_i log sum_z P(y_i | z) theta_i(z).

  Args:
    source_probs: [n, z] source-head probabilities theta_i (rows sum to 1).
    labels: [n] integer target labels.

  Returns:
    The LEEP score (<= 0; higher is better).
  """
  y, c = _check_labels(labels, None)
  p = _check_probs(source_probs, y.shape[0])
  n = y.shape[0]
  joint = _one_hot(y, c).T @ p / n  # [c, z]
  p_z = joint.sum(0)  # [z]
  # A source class that no example puts mass on never enters the sum; avoid 0 / 0.
  cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)  # P(y | z), [c, z]
  eep = np.einsum("nz,nz->n", p, cond[y])  # [n], expected empirical prob. of y_i
  return float(np.mean(np.log(eep)))


def nce(source_labels: Any, labels: Any) -> float:
  """NCE: negative conditional entropy -H(Y | Z) of target labels given source labels.

  Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks",
  ICCV 2019, eq. (2): with the empirical joint P(y, z) of target label y and source label z,
  NCE = sum_{y,z} P(y, z) log P(y | z).

  Args:
    source_labels: [n] integer source labels (e.g. `pseudo_labels(source_probs)`).
    labels: [n] integer target labels.

  Returns:
    The NCE score (<= 0; 0 when source labels determine target labels).
  """
  y, _ = _check_labels(labels, None)
  z, _ = _check_labels(source_labels, y.shape[0], name="source_labels", min_classes=1)
  _, y = np.unique(y, return_inverse=True)  # compact ids: absent classes add nothing
  _, z = np.unique(z, return_inverse=True)
  cy, cz = int(y.max()) + 1, int(z.max()) + 1
  joint = np.bincount(y * cz + z, minlength=cy * cz).reshape(cy, cz) / y.shape[0]  # [cy, cz]
  p_z = joint.sum(0, keepdims=True)  # [1, cz], every entry > 0 after compacting
  nz = joint > 0
  return float(np.sum(joint[nz] * np.log((joint / p_z)[nz])))


# ------------------------------------------------------------------------------------------
# H-score.
# ------------------------------------------------------------------------------------------


def h_score(features: Any, labels: Any) -> float:
  """H-score: tr(cov(f)^-1 cov(E[f | y])).

  Bao, Li, Huang, Zheng, Tian, Zhang, "An Information-Theoretic Approach to Transferability
  in Task Transfer Learning", ICIP 2019, Definition 2. cov(E[f | y]) is the between-class
  covariance sum_y P(y) (mu_y - mu)(mu_y - mu)^T; cov(f)^-1 is the pseudo-inverse with the
  relative cut-off `H_SCORE_RCOND`. The score is invariant under invertible linear maps of
  the features, and at most (number of classes - 1).

  Args:
    features: [n, d] features.
    labels: [n] integer labels.

  Returns:
    The H-score.
  """
  f, y, _ = _check_pair(features, labels)
  n = f.shape[0]
  f = f - f.mean(0)
  present, y, counts = np.unique(y, return_inverse=True, return_counts=True)
  sums = np.zeros((present.size, f.shape[1]))
  np.add.at(sums, y, f)
  # Rows scaled so that between = b^T b = sum_y P(y) mu_y mu_y^T (features centred).
  b = sums / counts[:, None] * np.sqrt(counts / n)[:, None]  # [c, d]
  e, v = np.linalg.eigh(f.T @ f / n)  # cov(f) = V diag(e) V^T
  keep = e > H_SCORE_RCOND * e.max()
  proj = b @ v[:, keep]  # [c, r]
  return float(np.sum(proj**2 / e[keep]))


# ------------------------------------------------------------------------------------------
# kNN accuracy.
# ------------------------------------------------------------------------------------------


def _fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
  """Stratified fold id per example, [n] in [0, folds).

  Examples are shuffled once, then each class deals its examples round-robin over the folds,
  starting at a class offset. Only the partition into classes is used, never the class ids,
  so relabeling classes leaves the folds unchanged.
  """
  n = labels.shape[0]
  perm = np.random.default_rng(seed).permutation(n)
  _, y_perm = np.unique(labels[perm], return_inverse=True)
  order = np.argsort(y_perm, kind="stable")  # group by class, shuffled order within
  starts = np.searchsorted(y_perm[order], y_perm[order], side="left")
  rank = np.empty(n, dtype=np.int64)
  rank[order] = np.arange(n) - starts  # position of each example within its class
  # Offset by the order in which classes first appear in the shuffle (label-id free).
  first_seen = np.full(y_perm.max() + 1, n)
  np.minimum.at(first_seen, y_perm, np.arange(n))
  offset = np.argsort(np.argsort(first_seen))
  ids = np.empty(n, dtype=np.int64)
  ids[perm] = (rank + offset[y_perm]) % folds
  return ids


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "chunk", "euclidean"))
def _knn_predict(
  queries: jax.Array,
  query_fold: jax.Array,
  refs: jax.Array,
  ref_fold: jax.Array,
  ref_labels: jax.Array,
  *,
  k: int,
  num_classes: int,
  chunk: int,
  euclidean: bool,
) -> jax.Array:
  """Majority vote of the k nearest references outside each query's fold.

  Args:
    queries: [q, d], q a multiple of `chunk`.
    query_fold: [q] fold id of each query; references with the same id are excluded.
    refs: [n, d] reference features (rows unit-norm for cosine similarity).
    ref_fold: [n] fold id of each reference.
    ref_labels: [n] int labels of the references.
    k: neighbours per query.
    num_classes: number of classes.
    chunk: queries per step; memory is O(chunk * (n + k * num_classes)).
    euclidean: rank by -||q - r||^2 instead of the dot product.

  Returns:
    [q] predicted labels. Ties in the vote go to the tied class with the nearest neighbour.
  """
  # -||q - r||^2 / 2 = q.r - ||r||^2 / 2 - ||q||^2 / 2; the last term does not change ranks.
  half_sq = 0.5 * jnp.sum(refs * refs, -1) if euclidean else jnp.zeros(refs.shape[0])
  rank_bonus = k - jnp.arange(k)  # [k], nearest first

  def one_chunk(args):
    q, qf = args  # [chunk, d], [chunk]
    sim = jnp.dot(q, refs.T, precision=jax.lax.Precision.HIGHEST) - half_sq  # [chunk, n]
    sim = jnp.where(qf[:, None] == ref_fold[None, :], -jnp.inf, sim)
    _, idx = jax.lax.top_k(sim, k)  # [chunk, k]
    votes = jax.nn.one_hot(ref_labels[idx], num_classes, dtype=jnp.int32)  # [chunk, k, C]
    count = votes.sum(1)  # [chunk, C]
    nearest = (votes * rank_bonus[None, :, None]).max(1)  # [chunk, C], in [0, k]
    return jnp.argmax(count * (k + 1) + nearest, -1)  # count first, then nearest

  steps = queries.shape[0] // chunk
  preds = jax.lax.map(
    one_chunk, (queries.reshape(steps, chunk, -1), query_fold.reshape(steps, chunk))
  )
  return preds.reshape(-1)


def knn_accuracy(
  features: Any,
  labels: Any,
  k: int = 20,
  metric: str = "cosine",
  folds: int | None = None,
  seed: int = 0,
  chunk_size: int = 512,
) -> float:
  """Accuracy of a k-nearest-neighbour majority vote, leave-one-out or k-fold.

  The kNN evaluation of self-supervised features (e.g. Wu et al., CVPR 2018; Caron et al.,
  DINO, ICCV 2021, with k = 20) without a separate train split: every example is classified
  by its k nearest neighbours among the others (leave-one-out), or among the examples
  outside its fold. Distances are computed in JAX float32, `chunk_size` queries at a time, so
  memory stays O(chunk_size * (n + k * classes)) (about 60 MB for n = 10k, 1000 classes).

  Args:
    features: [n, d] features.
    labels: [n] integer labels.
    k: number of neighbours.
    metric: "cosine" (invariant to the norm of each example) or "euclidean".
    folds: None for leave-one-out, else stratified k-fold with this many folds.
    seed: shuffle seed for the folds.
    chunk_size: queries per step of the batched search.

  Returns:
    The fraction of examples whose vote equals their label.
  """
  f, y, c = _check_pair(features, labels)
  n = f.shape[0]
  if metric not in ("cosine", "euclidean"):
    raise ValueError(f"unknown metric '{metric}'; known: ['cosine', 'euclidean']")
  if folds is None:
    fold = np.arange(n)
  elif folds < 2:
    raise ValueError(f"folds must be >= 2 or None (leave-one-out); got {folds}")
  else:
    fold = _fold_ids(y, folds, seed)
  available = n - np.bincount(fold).max()
  if not 1 <= k <= available:
    raise ValueError(f"k={k} must be in [1, {available}] (references outside a fold)")
  if metric == "cosine":
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), np.finfo(np.float64).tiny)
  else:
    f = f - f.mean(0)  # translation-invariant; keeps float32 dot products well scaled
  chunk = min(chunk_size, n)
  pad = -n % chunk
  refs = jnp.asarray(f, jnp.float32)
  queries = jnp.pad(refs, ((0, pad), (0, 0)))
  query_fold = jnp.pad(jnp.asarray(fold, jnp.int32), (0, pad), constant_values=-1)
  preds = _knn_predict(
    queries,
    query_fold,
    refs,
    jnp.asarray(fold, jnp.int32),
    jnp.asarray(y, jnp.int32),
    k=k,
    num_classes=c,
    chunk=chunk,
    euclidean=metric == "euclidean",
  )
  return float(np.mean(np.asarray(preds)[:n] == y))


# ------------------------------------------------------------------------------------------
# Linear probes: closed-form ridge regression to one-hot targets.
# ------------------------------------------------------------------------------------------


def _standardize(x_tr: np.ndarray, x_ev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Zero mean, unit variance per feature, with statistics of the training rows only."""
  mu = x_tr.mean(0)
  sd = x_tr.std(0)
  sd = np.where(sd > STD_FLOOR * np.maximum(np.abs(mu), 1.0), sd, 1.0)  # constant -> as is
  return (x_tr - mu) / sd, (x_ev - mu) / sd


def _ridge_predict(
  x_tr: np.ndarray, y_tr: np.ndarray, x_ev: np.ndarray, num_classes: int, lambdas: Sequence[float]
) -> np.ndarray:
  """Argmax predictions of ridge regression to one-hot targets, for every lambda.

  Minimizes 1/m ||X W + 1 b^T - Y||^2 + lambda ||W||^2 on standardized features (the bias b
  is not penalized). One eigendecomposition of the smaller Gram matrix (X^T X, or X X^T when
  m < d) serves all lambdas: predictions are P diag(1 / (e + m lambda)) B.

  Args:
    x_tr: [m, d] training features.
    y_tr: [m] training labels.
    x_ev: [v, d] evaluation features.
    num_classes: number of classes.
    lambdas: [L] per-example ridge strengths, > 0.

  Returns:
    [L, v] predicted labels.
  """
  xt, xe = _standardize(x_tr, x_ev)
  t = _one_hot(y_tr, num_classes)
  t_mean = t.mean(0)  # the bias, since xt is centred
  t = t - t_mean
  m, d = xt.shape
  if m >= d:
    e, v = np.linalg.eigh(xt.T @ xt)  # [d], [d, d]
    p, b = xe @ v, v.T @ (xt.T @ t)  # [v, d], [d, C]
  else:
    e, u = np.linalg.eigh(xt @ xt.T)  # dual form: W = X^T (X X^T + m lambda)^-1 Y
    p, b = (xe @ xt.T) @ u, u.T @ t  # [v, m], [m, C]
  e = np.maximum(e, 0.0)
  return np.stack([np.argmax((p / (e + m * lam)) @ b + t_mean, axis=1) for lam in lambdas])


def linear_probe(
  features: Any, labels: Any, lambdas: Sequence[float] | None = None, folds: int = 5, seed: int = 0
) -> dict[str, Any]:
  """Cross-validated accuracy of a closed-form ridge linear probe.

  Ridge regression from standardized features (plus a bias) to one-hot targets, predicting
  the argmax, as in the linear evaluation of Kornblith, Shlens, Le, "Do Better ImageNet
  Models Transfer Better?", CVPR 2019 (regularization chosen by cross-validation) and
  big_vision's few-shot evaluator (closed-form ridge to one-hot). Every example is predicted
  once, by the model trained on the other folds; the regularization is the one with the
  highest pooled cross-validated accuracy (ties go to the strongest). The reported accuracy
  is that maximum, so it is slightly optimistic by the choice over `lambdas`.

  Args:
    features: [n, d] features.
    labels: [n] integer labels.
    lambdas: [L] per-example ridge strengths (the penalty is m * lambda ||W||^2 for m
      training rows); default `DEFAULT_LAMBDAS`.
    folds: number of stratified folds, >= 2.
    seed: shuffle seed for the folds.

  Returns:
    dict with `accuracy` (float), `best_lambda` (float), `lambdas` [L] and `cv_accuracy` [L]
    (pooled cross-validated accuracy per lambda).
  """
  f, y, c = _check_pair(features, labels)
  lams = np.asarray(DEFAULT_LAMBDAS if lambdas is None else lambdas, np.float64)
  if lams.ndim != 1 or lams.size == 0 or not np.all(lams > 0):
    raise ValueError(f"lambdas must be a non-empty list of positive numbers; got {lambdas}")
  if folds < 2 or folds > f.shape[0]:
    raise ValueError(f"folds must be in [2, n={f.shape[0]}]; got {folds}")
  fold = _fold_ids(y, folds, seed)
  correct = np.zeros(lams.size)
  for j in range(folds):
    tr, ev = fold != j, fold == j
    if ev.any():
      correct += (_ridge_predict(f[tr], y[tr], f[ev], c, lams) == y[ev]).sum(1)
  cv = correct / f.shape[0]  # [L]
  best = int(np.argmax(np.where(cv == cv.max(), lams, -np.inf)))  # strongest among ties
  return {
    "accuracy": float(cv[best]),
    "best_lambda": float(lams[best]),
    "lambdas": lams,
    "cv_accuracy": cv,
  }


def few_shot_linear_probe(
  features: Any,
  labels: Any,
  shots: Sequence[int] = (1, 5, 10),
  trials: int = 5,
  seed: int = 0,
  l2: float = FEW_SHOT_L2,
) -> dict[int, dict[str, Any]]:
  """Few-shot accuracy of the ridge linear probe: `shots` examples per class, test on rest.

  The few-shot linear evaluation of big_vision (Kolesnikov et al., "Big Transfer", ECCV
  2020; Dosovitskiy et al., ViT, ICLR 2021): closed-form ridge to one-hot targets on
  standardized features. Each trial shuffles the data once and takes, from every class, its
  first `s` examples in that order, so larger shot counts extend smaller ones.

  Args:
    features: [n, d] features.
    labels: [n] integer labels; every class needs at least max(shots) examples.
    shots: training examples per class, one evaluation per entry.
    trials: random draws per shot count.
    seed: seed of the draws.
    l2: per-example ridge strength (as in `linear_probe`'s lambdas).

  Returns:
    {s: {"accuracy": mean over trials, "accuracy_std": std over trials,
         "accuracies": [trials]}} for each s in `shots`.
  """
  f, y, c = _check_pair(features, labels)
  present, y_compact, counts = np.unique(y, return_inverse=True, return_counts=True)
  bad = [int(s) for s in shots if s < 1]
  if bad or trials < 1 or l2 <= 0:
    raise ValueError(
      f"shots must be >= 1, trials >= 1, l2 > 0; got shots={list(shots)}, trials={trials}, l2={l2}"
    )
  if counts.min() < max(shots):
    small = int(present[counts.argmin()])
    raise ValueError(
      f"class {small} has {int(counts.min())} examples; "
      f"shots={max(shots)} needs at least that many per class"
    )
  n = f.shape[0]
  accs = {int(s): [] for s in shots}
  for rng in np.random.default_rng(seed).spawn(trials):
    perm = rng.permutation(n)
    order = np.argsort(y_compact[perm], kind="stable")  # by class, shuffled within
    starts = np.searchsorted(y_compact[perm][order], y_compact[perm][order], side="left")
    rank = np.empty(n, dtype=np.int64)
    rank[perm[order]] = np.arange(n) - starts  # position within its class in this draw
    for s in accs:
      tr, ev = rank < s, rank >= s
      if not ev.any():
        raise ValueError(f"shots={s} leaves no examples to evaluate on")
      pred = _ridge_predict(f[tr], y[tr], f[ev], c, [l2])[0]
      accs[s].append(float(np.mean(pred == y[ev])))
  return {
    s: {
      "accuracy": float(np.mean(a)),
      "accuracy_std": float(np.std(a)),
      "accuracies": np.asarray(a),
    }
    for s, a in accs.items()
  }


# ------------------------------------------------------------------------------------------
# Registry for model ranking.
# ------------------------------------------------------------------------------------------

ScoreFn = Callable[..., float]


def _needs_probs(name: str, source_probs: Any) -> None:
  if source_probs is None:
    raise ValueError(
      f"score '{name}' needs source_probs [n, z]: the candidate must have a source "
      f"classifier head (e.g. ImageNet logits); candidates without one support only "
      f"{sorted(k for k in SCORES if k not in ('leep', 'nce'))}"
    )


def _leep_score(features: Any, labels: Any, *, source_probs: Any = None) -> float:
  _needs_probs("leep", source_probs)
  _check_pair(features, labels)
  return leep(source_probs, labels)


def _nce_score(features: Any, labels: Any, *, source_probs: Any = None) -> float:
  _needs_probs("nce", source_probs)
  _check_pair(features, labels)
  return nce(pseudo_labels(_check_probs(source_probs, np.shape(labels)[0])), labels)


def _features_only(fn: Callable[..., Any]) -> ScoreFn:
  """Wraps fn(features, labels) into the registry signature; source_probs is ignored."""

  @functools.wraps(fn)
  def score_fn(features: Any, labels: Any, *, source_probs: Any = None) -> float:
    del source_probs
    out = fn(features, labels)
    return float(out["accuracy"] if isinstance(out, dict) else out)

  return score_fn


# name -> score_fn(features [n, d], labels [n], *, source_probs [n, z] | None) -> float.
# Higher is better for every entry.
SCORES: dict[str, ScoreFn] = {
  "logme": _features_only(logme),
  "leep": _leep_score,
  "nce": _nce_score,
  "h_score": _features_only(h_score),
  "knn": _features_only(knn_accuracy),
  "linear_probe": _features_only(linear_probe),
}
