"""Transferability scores: how well a candidate's features (or source head) fit a target task.

Every score takes features already extracted from a candidate model, `[n, d]`, and integer
target labels `[n]`, and returns a number where higher means "transfers better":

  logme                 LogME, You et al., ICML 2021; fixed-point form of arXiv:2110.10545.
  leep                  LEEP, Nguyen et al., ICML 2020 (needs the source head's probabilities).
  nce                   NCE, Tran et al., ICCV 2019 (needs source pseudo-labels).
  h_score               H-score, Bao et al., ICIP 2019.
  shrinkage_h_score     H-score with a Ledoit-Wolf shrunk covariance, Ibrahim et al. 2022.
  nleep                 NLEEP, Li et al., CVPR 2021: LEEP over a Gaussian mixture (no head).
  gbc                   GBC, Pandy et al., CVPR 2022: Bhattacharyya overlap of class Gaussians.
  transrate             TransRate, Huang et al., ICML 2022: coding-rate difference.
  sfda                  SFDA, Shao et al., ECCV 2022: self-challenging Fisher discriminant.
  knn_accuracy          leave-one-out (or k-fold) kNN accuracy, batched in JAX.
  linear_probe          closed-form ridge probe, regularization chosen by k-fold CV.
  few_shot_linear_probe the same probe trained on `shots` examples per class.
  zero_shot_accuracy    accuracy of a zero-shot classifier's logits (CLIP's label prompts,
                        Radford et al. 2021): no features, no training; see ZERO_SHOT_SCORES.

LogME, H-score and the probes run in NumPy float64: LogME's evidence and the ridge solutions
subtract large, nearly equal terms. The kNN search, which ranks distances, runs in JAX
float32. The five later scores (shrinkage H-score, NLEEP, GBC, TransRate, SFDA) are
jit-compiled JAX functions run in float64 (`jax.enable_x64` around the call only): their
log-determinants, Cholesky solves and EM iterations need it as much as LogME does.

A score that cannot be computed on its inputs (a class with one example where a per-class
variance is needed, constant features, fewer examples than mixture components...) raises
`ScoreUnavailable`, a ValueError whose message says why; the ranking shows it as "n/a".
`SCORES` maps a name to a callable with one signature for the model-ranking CLI:
`score_fn(features, labels, *, source_probs=None, num_classes=None) -> float`.
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
# NLEEP (Li et al. 2021, Sec. 3.2): PCA keeping this fraction of the variance, then a
# Gaussian mixture with this many components per target class; EM as scikit-learn's
# GaussianMixture defaults (full covariances, reg_covar, tol on the mean log-likelihood).
NLEEP_VARIANCE = 0.8
NLEEP_COMPONENTS_PER_CLASS = 5
GMM_REG_COVAR = 1e-6
GMM_TOL = 1e-3
GMM_MAX_ITER = 100
KMEANS_MAX_ITER = 300
# The mixture is fitted on the PCA output zero-padded to a multiple of this many dimensions,
# so that candidates (and tests) whose 80% cut differs by a few components share one
# compilation. Exact: a padded dimension is 0 for every example, so each component's
# covariance is block-diagonal there (reg_covar I) and adds the same constant to every
# component's log-density, which cancels in the posteriors and the likelihood change.
GMM_DIM_MULTIPLE = 8
# GBC (Pandy et al. 2022): features reduced to this many principal components (their
# stable_transfer config, `gbc.pca_reduction = 64`); per-class variances floored here as in
# their gbc.py (a dimension constant within a class would otherwise give log 0).
GBC_PCA_DIM = 64
GBC_VAR_FLOOR = 1e-4
# TransRate (Huang et al. 2022): the distortion eps of the coding rate in their code.
TRANSRATE_EPS = 1e-4
# SFDA (Shao et al. 2022, eq. 5): lambda = exp(-a * largest eigenvalue of S_w), a = 5, found
# by 3 power iterations, floored at 1e-10, all as their metrics.py.
SFDA_A = 5.0
SFDA_POWER_ITERS = 3
SFDA_MIN_SHRINKAGE = 1e-10


class ScoreUnavailable(ValueError):
  """A score cannot be computed on these inputs; the message says why (shown as n/a)."""


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


def check_not_constant(f: np.ndarray, score: str) -> None:
  """Raises ScoreUnavailable when every feature is constant over the examples."""
  spread = f.max(0) - f.min(0)
  if not np.any(spread > STD_FLOOR * np.maximum(np.abs(f).max(0), 1.0)):
    raise ScoreUnavailable(
      f"{score}: features are constant (all {f.shape[0]} examples have the same "
      f"{f.shape[1]}-d vector), so they carry no information about the labels"
    )


def check_enough_examples(n: int, num_classes: int | None, score: str) -> None:
  """Raises ScoreUnavailable when there are fewer examples than target classes."""
  if num_classes is not None and n < num_classes:
    raise ScoreUnavailable(
      f"{score}: {n} examples for {num_classes} classes; need at least one per class"
    )


def check_min_per_class(y: np.ndarray, k: int, score: str, why: str) -> None:
  """Raises ScoreUnavailable when a present class has fewer than `k` examples."""
  present, counts = np.unique(y, return_counts=True)
  if counts.min() < k:
    c = int(present[counts.argmin()])
    raise ScoreUnavailable(
      f"{score}: class {c} has {int(counts.min())} example(s); {why} needs at least {k}"
    )


def _finite(value: Any, score: str) -> float:
  """float(value), or ScoreUnavailable when it is NaN or infinite (never reported as a score)."""
  v = float(value)
  if not np.isfinite(v):
    raise ScoreUnavailable(f"{score}: the computation gave {v} (numerically degenerate input)")
  return v


def _compact(y: np.ndarray) -> tuple[np.ndarray, int]:
  """Labels renumbered 0..C-1 over the classes present, and C."""
  present, yc = np.unique(y, return_inverse=True)
  return yc.astype(np.int64), int(present.size)


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
  p = _check_probs(source_probs, y.shape[0])  # float64
  with jax.enable_x64(True):  # the one LEEP, shared with NLEEP
    return float(_leep_from_posteriors(jnp.asarray(p), jnp.asarray(y), c=c))


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
# JAX float64 scores: shared pieces (PCA, LEEP over arbitrary posteriors).
# ------------------------------------------------------------------------------------------


def _prepare(features: Any, labels: Any, score: str) -> tuple[np.ndarray, np.ndarray, int]:
  """Checked float64 features, compact labels 0..C-1 and C; ScoreUnavailable if constant."""
  f, y, _ = _check_pair(features, labels)
  check_not_constant(f, score)
  yc, c = _compact(y)
  return f, yc, c


@jax.jit
def _pca_svd(f: jax.Array) -> tuple[jax.Array, jax.Array]:
  """f [n, d] -> (centred f on its principal axes [n, r], variances [r]); r = min(n, d)."""
  fc = f - f.mean(0)
  u, s, _ = jnp.linalg.svd(fc, full_matrices=False)
  return u * s, s * s / f.shape[0]


def pca_reduce(features: Any, n_components: float | int) -> jax.Array:
  """Principal-component projections, as scikit-learn's `PCA(n_components).fit_transform`.

  A float in (0, 1) keeps the fewest leading components whose cumulative explained variance
  exceeds that fraction (scikit-learn: `searchsorted(cumulative ratio, fraction, "right") + 1`);
  an int keeps min(n_components, n, d). Component signs are arbitrary; no score here depends
  on them. Call under `jax.enable_x64(True)` for float64.

  Args:
    features: [n, d] features.
    n_components: variance fraction (float) or component count (int).

  Returns:
    [n, k] projections of the centred features, by decreasing variance.
  """
  proj, var = _pca_svd(jnp.asarray(features))
  var = np.asarray(var)
  if isinstance(n_components, float):
    if not 0.0 < n_components < 1.0:
      raise ValueError(f"a variance fraction must be in (0, 1); got {n_components}")
    ratio = np.cumsum(var) / max(float(var.sum()), _TINY)
    k = int(np.searchsorted(ratio, n_components, side="right")) + 1
  else:
    k = int(n_components)
    if k < 1:
      raise ValueError(f"n_components must be >= 1; got {k}")
  return proj[:, : min(k, proj.shape[1])]


def _one_hot_jax(y: jax.Array, c: int, dtype) -> jax.Array:
  return jax.nn.one_hot(y, c, dtype=dtype)  # [n, c]


@functools.partial(jax.jit, static_argnames=("c",))
def _leep_from_posteriors(p: jax.Array, y: jax.Array, c: int) -> jax.Array:
  """LEEP (Nguyen et al. 2020, eqs. 1-2) of posteriors p [n, z] over any source variable z:
  `leep`'s source-head probabilities or NLEEP's mixture posteriors."""
  n = p.shape[0]
  joint = _one_hot_jax(y, c, p.dtype).T @ p / n  # [c, z], P(y, z)
  p_z = joint.sum(0)
  # A source class that no example puts mass on never enters the sum; avoid 0 / 0.
  cond = jnp.where(p_z > 0, joint / jnp.where(p_z > 0, p_z, 1.0), 0.0)  # P(y | z)
  # A convex combination of probabilities is <= 1; rounding can make it 1 + an ulp, and the
  # documented range (<= 0) must hold exactly.
  eep = jnp.minimum(jnp.sum(p * cond[y], axis=1), 1.0)  # [n]
  return jnp.mean(jnp.log(eep))


# ------------------------------------------------------------------------------------------
# NLEEP: LEEP over a Gaussian mixture fitted to PCA-reduced features.
# ------------------------------------------------------------------------------------------


def _sq_dists(x: jax.Array, c: jax.Array) -> jax.Array:
  """Squared Euclidean distances [n, k] between rows of x [n, d] and c [k, d]."""
  return jnp.maximum(
    jnp.sum(x * x, 1)[:, None] - 2.0 * x @ c.T + jnp.sum(c * c, 1)[None, :], 0.0
  )


def _kmeans_labels(x: jax.Array, u: jax.Array, k: int, max_iter: int) -> jax.Array:
  """Lloyd's k-means from a seeded k-means++ start (Arthur & Vassilvitskii 2007); labels [n].

  The start draws each further centre with probability proportional to the squared distance
  to the nearest chosen one (no greedy trials), by inverse CDF of the uniforms u [k] (drawn
  on the host: a seeded NumPy draw costs nothing to compile). A cluster that empties keeps
  its centre.
  """
  n, d = x.shape
  first = jnp.minimum((u[0] * n).astype(jnp.int32), n - 1)
  centers = jnp.zeros((k, d), x.dtype).at[0].set(x[first])
  d2 = jnp.sum((x - x[first]) ** 2, 1)

  def add_center(i, carry):
    centers, d2 = carry
    cdf = jnp.cumsum(d2)
    # All points on chosen centres (duplicates): draw uniformly instead of from 0 / 0.
    cdf = jnp.where(cdf[-1] > 0, cdf, jnp.arange(1, n + 1, dtype=x.dtype))
    idx = jnp.minimum(jnp.sum(cdf <= u[i] * cdf[-1]), n - 1)  # searchsorted, side="right"
    d2 = jnp.minimum(d2, jnp.sum((x - x[idx]) ** 2, 1))
    return centers.at[i].set(x[idx]), d2

  centers, _ = jax.lax.fori_loop(1, k, add_center, (centers, d2))
  labels = jnp.argmin(_sq_dists(x, centers), 1)

  def cond(state):
    it, changed, _, _ = state
    return (it < max_iter) & changed

  def step(state):
    it, _, centers, labels = state
    onehot = _one_hot_jax(labels, k, x.dtype)
    counts = onehot.sum(0)[:, None]
    centers = jnp.where(counts > 0, onehot.T @ x / jnp.maximum(counts, 1.0), centers)
    new = jnp.argmin(_sq_dists(x, centers), 1)
    return it + 1, jnp.any(new != labels), centers, new

  _, _, _, labels = jax.lax.while_loop(cond, step, (0, jnp.array(True), centers, labels))
  return labels


def _gmm_m_step(x: jax.Array, resp: jax.Array, reg_covar: float):
  """scikit-learn's M-step for full covariances: weights [k], means [k, d], precision
  Cholesky factors [k, d, d] (P with P P^T = cov^-1, upper triangular)."""
  n, d = x.shape
  nk = resp.sum(0) + 10 * jnp.finfo(x.dtype).eps  # [k], as sklearn (no empty component)
  means = resp.T @ x / nk[:, None]
  diff = x[None] - means[:, None]  # [k, n, d]
  covs = jnp.einsum("nk,knd,kne->kde", resp, diff, diff) / nk[:, None, None]
  covs = covs + reg_covar * jnp.eye(d, dtype=x.dtype)
  chol = jnp.linalg.cholesky(covs)  # [k, d, d] lower
  eye = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), covs.shape)
  prec_chol = jnp.swapaxes(jax.scipy.linalg.solve_triangular(chol, eye, lower=True), 1, 2)
  return nk / nk.sum(), means, prec_chol


def _gmm_e_step(x: jax.Array, weights: jax.Array, means: jax.Array, prec_chol: jax.Array):
  """Mean-free E-step: (log p(x_i) [n], log responsibilities [n, k])."""
  d = x.shape[1]
  y = jnp.einsum("nd,kde->kne", x, prec_chol) - jnp.einsum("kd,kde->ke", means, prec_chol)[:, None]
  m = jnp.sum(y * y, -1).T  # [n, k], squared Mahalanobis distances
  log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=1, axis2=2)), 1)  # [k]
  log_prob = -0.5 * (d * np.log(2 * np.pi) + m) + log_det + jnp.log(weights)
  log_norm = jax.scipy.special.logsumexp(log_prob, axis=1)
  return log_norm, log_prob - log_norm[:, None]


@functools.partial(jax.jit, static_argnames=("k", "max_iter", "kmeans_iter"))
def _gmm_fit(x, u, *, k, reg_covar, tol, max_iter, kmeans_iter):
  """EM for a k-component full-covariance Gaussian mixture, initialized from k-means.

  The loop is scikit-learn's `GaussianMixture.fit` (init_params="kmeans", n_init=1): initial
  parameters from the k-means partition, then E-step, M-step, stop when the mean
  log-likelihood changes by less than `tol`; the posteriors use the last parameters.

  Returns:
    (posteriors [n, k], k-means labels [n], iterations, converged).
  """
  init = _kmeans_labels(x, u, k, kmeans_iter)

  # sklearn: M(init); repeat {E; M; stop if |lower bound change| < tol}; final E. Here one
  # M-then-E body (compiled once) runs until the pass after convergence, which is the final E.
  def step(state):
    it, lb, converged, _, resp = state
    log_norm, log_resp = _gmm_e_step(x, *_gmm_m_step(x, resp, reg_covar))
    new_lb = jnp.mean(log_norm)
    stop = converged | (it + 1 > max_iter)
    return it + 1, new_lb, converged | (jnp.abs(new_lb - lb) < tol), stop, jnp.exp(log_resp)

  start = (0, jnp.array(-jnp.inf, x.dtype), jnp.array(False), jnp.array(False),
           _one_hot_jax(init, k, x.dtype))
  it, _, converged, _, post = jax.lax.while_loop(lambda s: ~s[3], step, start)
  return post, init, it - 1, converged


def nleep(
  features: Any,
  labels: Any,
  *,
  variance: float = NLEEP_VARIANCE,
  components_per_class: int = NLEEP_COMPONENTS_PER_CLASS,
  seed: int = 0,
  return_details: bool = False,
) -> float | dict[str, Any]:
  """NLEEP: LEEP with a Gaussian mixture's posteriors in place of a source head.

  Li, Wei, Sun, Xu, Li, Zhang, Xia, "Ranking Neural Checkpoints", CVPR 2021, Sec. 3.2
  ("N-LEEP"): reduce the features by PCA keeping `variance` of the variance (80% there),
  fit a Gaussian mixture with `components_per_class` x (number of target classes) components
  (5x there, and in google-research stable_transfer's nleep.py), and compute LEEP
  (Nguyen et al. 2020, eqs. 1-2) with each example's component posteriors as theta_i.
  It needs no source classification head.

  The mixture is fitted by EM in JAX, jit-compiled, float64: the same loop as scikit-learn's
  `GaussianMixture` defaults (full covariances, reg_covar 1e-6, tol 1e-3 on the mean
  log-likelihood, at most 100 iterations, k-means initialization), with a seeded k-means++
  start. Why not scikit-learn itself: the project's scores run in JAX (on an accelerator when
  there is one); why not a NumPy EM: the E-step over n x k x d is the whole cost, and XLA
  fuses it. A fixed `seed` makes the value deterministic for given inputs.

  Args:
    features: [n, d] features.
    labels: [n] integer labels.
    variance: fraction of the variance the PCA keeps.
    components_per_class: mixture components per target class.
    seed: seed of the k-means++ start.
    return_details: also return the reduced features, the k-means start and the posteriors
      (for tests and diagnostics).

  Returns:
    NLEEP (<= 0, higher is better), or a dict with "score", "reduced" [n, k'],
    "init_labels" [n], "posteriors" [n, components], "n_iter" and "converged".
  """
  f, y, c = _prepare(features, labels, "nleep")
  n = f.shape[0]
  k = components_per_class * c
  if components_per_class < 1:
    raise ValueError(f"components_per_class must be >= 1; got {components_per_class}")
  if n < k:
    raise ScoreUnavailable(
      f"nleep: {n} examples for a mixture of {k} components "
      f"({components_per_class} per class x {c} classes); need at least {k}"
    )
  with jax.enable_x64(True):
    z = pca_reduce(f, float(variance))
    padded = jnp.pad(z, ((0, 0), (0, -z.shape[1] % GMM_DIM_MULTIPLE)))
    u = jnp.asarray(np.random.default_rng(seed).uniform(size=k))  # the k-means++ draws
    post, init, it, converged = _gmm_fit(
      padded, u, k=k, reg_covar=GMM_REG_COVAR, tol=GMM_TOL, max_iter=GMM_MAX_ITER,
      kmeans_iter=KMEANS_MAX_ITER,
    )
    score = _finite(_leep_from_posteriors(post, jnp.asarray(y), c=c), "nleep")
  if not return_details:
    return score
  return {
    "score": score, "reduced": np.asarray(z), "init_labels": np.asarray(init),
    "posteriors": np.asarray(post), "n_iter": int(it), "converged": bool(converged),
  }


# ------------------------------------------------------------------------------------------
# GBC: Bhattacharyya overlap of per-class Gaussians.
# ------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("c",))
def _gbc_core(z: jax.Array, y: jax.Array, *, c: int, var_floor: float) -> jax.Array:
  onehot = _one_hot_jax(y, c, z.dtype)
  counts = onehot.sum(0)[:, None]
  means = onehot.T @ z / counts  # [c, k]
  var = jnp.maximum(onehot.T @ (z - means[y]) ** 2 / counts, var_floor)  # [c, k], ddof 0
  avg = 0.5 * (var[:, None] + var[None])  # [c, c, k]
  log_var = jnp.sum(jnp.log(var), 1)  # [c]
  dist = 0.125 * jnp.sum((means[:, None] - means[None]) ** 2 / avg, -1) + 0.5 * (
    jnp.sum(jnp.log(avg), -1) - 0.5 * log_var[:, None] - 0.5 * log_var[None]
  )  # [c, c], Bhattacharyya distances
  coeff = jnp.exp(-dist) * (1.0 - jnp.eye(c, dtype=z.dtype))
  return -jnp.sum(coeff)


def gbc(features: Any, labels: Any, *, pca_dim: int = GBC_PCA_DIM) -> float:
  """GBC: minus the summed Bhattacharyya coefficients between per-class Gaussians.

  Pandy, Agostinelli, Uijlings, Ferrari, Mensink, "Transferability Estimation using
  Bhattacharyya Class Separability", CVPR 2022, Sec. 3 and their gbc.py: each class c is a Gaussian
  N(mu_c, Sigma_c) with diagonal Sigma_c (their default for target selection) fitted to the
  features reduced by PCA to `pca_dim` dimensions (their stable_transfer config: 64);
    D_B(c_i, c_j) = 1/8 (mu_i - mu_j)^T S^-1 (mu_i - mu_j) + 1/2 log(|S| / sqrt(|S_i| |S_j|)),
    S = (S_i + S_j) / 2,   BC = exp(-D_B),   GBC = -sum_{i != j} BC(c_i, c_j)
  (ordered pairs, as their code). Variances are the population ones, floored at 1e-4 as in
  their gbc.py. GBC lies in [-C (C - 1), 0]: 0 for perfectly separated classes, the minimum
  for identical class distributions.

  Args:
    features: [n, d] features; every class needs at least 2 examples (a variance).
    labels: [n] integer labels.
    pca_dim: principal components kept (at most min(n, d)).

  Returns:
    The GBC score (<= 0, higher is better).
  """
  f, y, c = _prepare(features, labels, "gbc")
  check_min_per_class(y, 2, "gbc", "a per-class variance")
  with jax.enable_x64(True):
    z = pca_reduce(f, int(pca_dim))
    return _finite(_gbc_core(z, jnp.asarray(y), c=c, var_floor=GBC_VAR_FLOOR), "gbc")


# ------------------------------------------------------------------------------------------
# TransRate: coding rate of the features minus their class-conditional coding rate.
# ------------------------------------------------------------------------------------------


def _logdet_identity_plus(a: jax.Array) -> jax.Array:
  """log det(I + a) for a symmetric PSD a, by Cholesky."""
  chol = jnp.linalg.cholesky(jnp.eye(a.shape[0], dtype=a.dtype) + a)
  return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


@functools.partial(jax.jit, static_argnames=("c",))
def _transrate_core(z: jax.Array, y: jax.Array, *, c: int, eps: float) -> jax.Array:
  n, d = z.shape
  z = z - z.mean(0)
  onehot = _one_hot_jax(y, c, z.dtype)
  counts = onehot.sum(0)
  if d > n:  # det(I_d + Z^T Z s) = det(I_n + Z Z^T s): the n x n Gram is smaller
    gram = z @ z.T
    rate = 0.5 * _logdet_identity_plus(gram / (n * eps))

    def class_rate(args):
      m, nc = args  # masking rows and columns leaves the class block and I elsewhere
      return 0.5 * _logdet_identity_plus(gram * jnp.outer(m, m) / (nc * eps))
  else:
    rate = 0.5 * _logdet_identity_plus(z.T @ z / (n * eps))

    def class_rate(args):
      m, nc = args
      zc = z * m[:, None]
      return 0.5 * _logdet_identity_plus(zc.T @ zc / (nc * eps))

  return rate - jnp.mean(jax.lax.map(class_rate, (onehot.T, counts)))


def transrate(features: Any, labels: Any, *, eps: float = TRANSRATE_EPS) -> float:
  """TransRate: R(Z, eps) - R(Z, eps | Y), the coding-rate gain of knowing the labels.

  Huang, Huang, Rong, Yang, Wei, "Frustratingly Easy Transferability Estimation", ICML 2022,
  TransRate = R(Z, eps) - R(Z, eps | Y) as the paper's own code computes it (its appendix; also
  TLlib's transrate.py):
  Z is centred once over all examples, R(Z, eps) = 1/2 logdet(I + Z^T Z / (n eps)), each class
  Z_c (not re-centred) gets R(Z_c, eps) with its own n_c, and the conditional rate is their
  unweighted mean over the C classes present. eps = 1e-4 as there. The value depends on the
  feature scale through eps. Classes with identical features give exactly 0.

  Args:
    features: [n, d] features.
    labels: [n] integer labels.
    eps: distortion of the coding rate.

  Returns:
    The TransRate score (higher is better).
  """
  f, y, c = _prepare(features, labels, "transrate")
  if eps <= 0:
    raise ValueError(f"eps must be > 0; got {eps}")
  with jax.enable_x64(True):
    value = _transrate_core(jnp.asarray(f), jnp.asarray(y), c=c, eps=float(eps))
  return _finite(value, "transrate")


# ------------------------------------------------------------------------------------------
# SFDA: self-challenging Fisher discriminant analysis.
# ------------------------------------------------------------------------------------------


def _sfda_probs(x: jax.Array, y: jax.Array, c: int, lam: jax.Array) -> jax.Array:
  """Class posteriors [n, c] of the regularized Fisher discriminant fitted to (x, y)."""
  n, d = x.shape
  onehot = _one_hot_jax(y, c, x.dtype)
  counts = onehot.sum(0)
  means = onehot.T @ x / counts[:, None]  # [c, d]
  diff = x - means[y]
  sw = diff.T @ diff / n  # sum_c P(c) cov_c, population covariances
  sw = (1.0 - lam) * sw + lam * jnp.trace(sw) / d * jnp.eye(d, dtype=x.dtype)
  # Their coef_ = means V V^T with V the generalized eigenvectors of (S_b, S_w): V^T S_w V = I,
  # so V V^T = S_w^-1 whatever S_b is; a Cholesky solve gives the same classifier.
  coef = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(sw), means.T).T  # [c, d]
  intercept = -0.5 * jnp.sum(means * coef, 1) + jnp.log(counts / n)
  return jax.nn.softmax(x @ coef.T + intercept, axis=1)


@functools.partial(jax.jit, static_argnames=("c",))
def _sfda_core(x: jax.Array, y: jax.Array, *, c: int) -> tuple[jax.Array, jax.Array]:
  n, d = x.shape
  onehot = _one_hot_jax(y, c, x.dtype)
  means = onehot.T @ x / onehot.sum(0)[:, None]
  diff = x - means[y]
  sw = diff.T @ diff / n
  # Largest eigenvalue of S_w by their `iterative_A`: power iteration from the row sums.
  v = sw.sum(1)
  for _ in range(SFDA_POWER_ITERS):
    u = sw @ v
    u = u / jnp.linalg.norm(u)
    v = sw @ u
    v = v / jnp.linalg.norm(v)
  lam = jnp.maximum(jnp.exp(-SFDA_A * (v @ sw @ u)), SFDA_MIN_SHRINKAGE)
  probs = jax.nn.softmax(_sfda_probs(x, y, c, lam), axis=1)  # their "softened" posteriors
  outer = (means.sum(0) - means) / (c - 1)  # [c, d], mean of the other classes' means
  p = probs[jnp.arange(n), y][:, None]
  mixed = p * x + (1.0 - p) * outer[y]  # ConfMix: hard examples move toward other classes
  second = _sfda_probs(mixed, y, c, lam)
  return jnp.mean(second[jnp.arange(n), y]), lam


def sfda(features: Any, labels: Any, *, return_shrinkage: bool = False) -> float | tuple:
  """SFDA: accuracy-like fit of a self-challenging regularized Fisher discriminant.

  Shao, Zhao, Ge, Zhang, Liu, Wang, Zhang, "Not All Models Are Equal: Predicting Model
  Transferability in a Self-challenging Fisher Space", ECCV 2022, as their metrics.py:
  1. Fisher discriminant (LDA) with regularized within-class scatter
       S_w^lam = (1 - lam) S_w + lam (tr(S_w) / d) I,  lam = max(exp(-a sigma_max(S_w)), 1e-10),
     a = 5, sigma_max by 3 power iterations; posteriors p(y | x) = softmax(x W_c + b_c) with
     W_c = S_w^lam^-1 mu_c, b_c = -mu_c^T W_c / 2 + log P(c).
  2. ConfMix (the self-challenging step): with q_i = softmax(p(. | x_i))[y_i] (their second
     softmax), x_i <- q_i x_i + (1 - q_i) mean of the other classes' means.
  3. The same discriminant, same lam, refitted on the mixed features; the score is the mean
     posterior of the true class, (1/n) sum_i p(y_i | x_i) (no log, as theirs).
  Between 1/C (identical class distributions) and 1 (separable classes).

  Args:
    features: [n, d] features.
    labels: [n] integer labels.
    return_shrinkage: also return lam.

  Returns:
    The SFDA score, or (score, lam).
  """
  f, y, c = _prepare(features, labels, "sfda")
  with jax.enable_x64(True):
    score, lam = _sfda_core(jnp.asarray(f), jnp.asarray(y), c=c)
    score, lam = _finite(score, "sfda"), float(lam)
  return (score, lam) if return_shrinkage else score


# ------------------------------------------------------------------------------------------
# Shrinkage H-score.
# ------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("c",))
def _shrinkage_h_core(f: jax.Array, y: jax.Array, *, c: int, rcond: float):
  n, p = f.shape
  x = f - f.mean(0)
  emp = x.T @ x / n
  if p == 1:  # scikit-learn's ledoit_wolf_shrinkage: no shrinkage for one feature
    alpha = jnp.array(0.0, f.dtype)
    mu = emp[0, 0]
  else:  # Ledoit & Wolf 2004, in scikit-learn's ledoit_wolf_shrinkage arrangement
    x2 = x * x
    diag = x2.sum(0) / n
    mu = diag.sum() / p
    beta_ = jnp.sum(x2.T @ x2)
    delta_ = jnp.sum(emp**2)
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * diag.sum() + p * mu**2) / p
    beta = jnp.minimum(beta, delta)
    alpha = jnp.where(delta > 0, beta / jnp.where(delta > 0, delta, 1.0), 0.0)
  cov = (1.0 - alpha) * emp + alpha * mu * jnp.eye(p, dtype=f.dtype)
  onehot = _one_hot_jax(y, c, f.dtype)
  counts = onehot.sum(0)
  b = onehot.T @ x / counts[:, None] * jnp.sqrt(counts / n)[:, None]  # between = b^T b
  e, v = jnp.linalg.eigh(cov)
  keep = e > rcond * e.max()
  proj = b @ v
  score = (1.0 - alpha) * jnp.sum(jnp.where(keep, proj**2 / jnp.where(keep, e, 1.0), 0.0))
  return score, alpha


def shrinkage_h_score(features: Any, labels: Any, *, return_shrinkage: bool = False
                      ) -> float | tuple[float, float]:
  """H-score with a Ledoit-Wolf shrunk feature covariance.

  Ibrahim, Ponomareva, Mazumder, "Newer is not always better: Rethinking transferability
  metrics, their peculiarities, stability and performance", ECML-PKDD 2022, Sec. 4:
    H_alpha = tr(cov_alpha(f)^-1 (1 - alpha) cov(E[f | y])),
    cov_alpha(f) = (1 - alpha) cov(f) + alpha (tr(cov(f)) / d) I,
  alpha the Ledoit-Wolf optimal shrinkage (as scikit-learn's LedoitWolf). Both covariances
  are population (1 / n) estimates. (TLlib's regularized_h_score takes cov(E[f | y]) with
  1 / (n - 1), a factor n / (n - 1) larger.) Where the plain H-score saturates at C - 1 once
  d >= n - 1 (any labels are then linearly separable in the whitened space), the shrunk
  inverse keeps informative features apart from noise.

  Args:
    features: [n, d] features.
    labels: [n] integer labels.
    return_shrinkage: also return alpha.

  Returns:
    The score, or (score, alpha).
  """
  f, y, c = _prepare(features, labels, "shrinkage_h_score")
  with jax.enable_x64(True):
    score, alpha = _shrinkage_h_core(jnp.asarray(f), jnp.asarray(y), c=c, rcond=H_SCORE_RCOND)
    score, alpha = _finite(score, "shrinkage_h_score"), float(alpha)
  return (score, alpha) if return_shrinkage else score


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

def zero_shot_accuracy(logits: Any, labels: Any) -> float:
  """Accuracy of a zero-shot classifier: argmax of its logits against the labels.

  Args:
    logits: [n, classes], column j the score of target class j (CLIP: cosine similarity to
      the prompt of class j's name, `select.features.zero_shot_weights`).
    labels: int [n] in [0, classes).
  Returns:
    The fraction of rows whose largest logit is their label's (the first among ties).
  Raises:
    ScoreUnavailable: non-finite logits; ValueError: shapes or labels that do not fit.
  """
  z = np.asarray(logits)
  if z.ndim != 2 or not np.issubdtype(z.dtype, np.floating):
    raise ValueError(f"zero-shot logits must be float [n, classes]; got {z.dtype} {z.shape}")
  y, _ = _check_labels(labels, z.shape[0], z.shape[1], min_classes=1)
  bad = ~np.isfinite(z)
  if bad.any():
    raise ScoreUnavailable(f"zero_shot: {int(bad.sum())} non-finite logit(s), first in row "
                           f"{int(np.argwhere(bad)[0, 0])}")
  return float(np.mean(np.argmax(z, axis=1) == y))


ScoreFn = Callable[..., float]
# Neighbours of the registry's kNN score and folds of its linear probe (the functions' defaults).
KNN_K = 20
PROBE_FOLDS = 5


def _needs_probs(name: str, source_probs: Any) -> None:
  if source_probs is None:
    raise ScoreUnavailable(
      f"score '{name}' needs source_probs [n, z]: the candidate must have a source "
      f"classifier head (e.g. ImageNet logits); candidates without one support only "
      f"{sorted(k for k in SCORES if k not in HEAD_SCORES)}"
    )


def _head_score(name: str, fn: Callable[[np.ndarray, np.ndarray], float]) -> ScoreFn:
  """A score of the source head's probabilities in the registry signature."""

  def score_fn(features: Any, labels: Any, *, source_probs: Any = None,
               num_classes: int | None = None) -> float:
    _needs_probs(name, source_probs)
    f, y, _ = _check_pair(features, labels, num_classes)
    check_enough_examples(f.shape[0], num_classes, name)
    return float(fn(_check_probs(source_probs, f.shape[0]), y))

  score_fn.__name__ = name
  return score_fn


def _features_only(name: str, fn: Callable[..., Any], min_examples: int = 0) -> ScoreFn:
  """Wraps fn(features, labels) into the registry signature; source_probs is ignored.

  Before `fn` runs, the inputs every feature score needs are checked, each failure a
  ScoreUnavailable naming the score: at least `num_classes` examples (one per class), more
  than `min_examples`, and features that are not all constant.
  """

  def score_fn(features: Any, labels: Any, *, source_probs: Any = None,
               num_classes: int | None = None) -> float:
    del source_probs
    f, y, _ = _check_pair(features, labels, num_classes)
    check_enough_examples(f.shape[0], num_classes, name)
    if f.shape[0] <= min_examples:
      raise ScoreUnavailable(f"{name}: {f.shape[0]} examples; needs more than {min_examples}")
    check_not_constant(f, name)
    out = fn(f, y)
    return float(out["accuracy"] if isinstance(out, dict) else out)

  score_fn.__name__ = name
  score_fn.__doc__ = fn.__doc__
  return score_fn


# Scores that read the source head's probabilities; the others need only features.
HEAD_SCORES = ("leep", "nce")
# Scores of a candidate's zero-shot classifier over the target's class names (a CLIPModel's
# text tower), not of its features: not in SCORES, whose entries all take features; the
# ranking computes them from `Features.zero_shot_logits` (`zero_shot_accuracy`).
ZERO_SHOT_SCORES = ("zero_shot",)

# name -> score_fn(features [n, d], labels [n], *, source_probs [n, z] | None,
#                  num_classes: int | None) -> float.  Higher is better for every entry.
SCORES: dict[str, ScoreFn] = {
  "logme": _features_only("logme", logme),
  "leep": _head_score("leep", lambda p, y: leep(p, y)),
  "nce": _head_score("nce", lambda p, y: nce(pseudo_labels(p), y)),
  "h_score": _features_only("h_score", h_score),
  "shrinkage_h_score": _features_only("shrinkage_h_score", shrinkage_h_score),
  "nleep": _features_only("nleep", nleep),
  "gbc": _features_only("gbc", gbc),
  "transrate": _features_only("transrate", transrate),
  "sfda": _features_only("sfda", sfda),
  "knn": _features_only("knn", knn_accuracy, min_examples=KNN_K),
  "linear_probe": _features_only("linear_probe", linear_probe, min_examples=PROBE_FOLDS - 1),
}
