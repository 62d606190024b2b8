"""Transferability scores and model ranking: which pretrained candidate to fine-tune."""

from jaxpretrain.select.scores import (
  SCORES,
  ScoreUnavailable,
  few_shot_linear_probe,
  gbc,
  h_score,
  knn_accuracy,
  leep,
  linear_probe,
  logme,
  nce,
  nleep,
  pseudo_labels,
  sfda,
  shrinkage_h_score,
  transrate,
  zero_shot_accuracy,
)

__all__ = [
  "SCORES",
  "ScoreUnavailable",
  "few_shot_linear_probe",
  "gbc",
  "h_score",
  "knn_accuracy",
  "leep",
  "linear_probe",
  "logme",
  "nce",
  "nleep",
  "pseudo_labels",
  "sfda",
  "shrinkage_h_score",
  "transrate",
  "zero_shot_accuracy",
]

# Model ranking: candidates, features and the selection report.
from jaxpretrain.select.features import (  # noqa: E402
  Candidate,
  Features,
  extract_features,
  load_candidate,
  stratified_subset,
)
from jaxpretrain.select.rank import kendall_tau, select_models, weighted_tau  # noqa: E402

__all__ += [
  "Candidate",
  "Features",
  "extract_features",
  "kendall_tau",
  "load_candidate",
  "select_models",
  "stratified_subset",
  "weighted_tau",
]
