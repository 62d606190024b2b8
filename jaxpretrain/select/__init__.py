"""Transferability scores and model ranking: which pretrained candidate to fine-tune."""

from jaxpretrain.select.scores import (
  SCORES,
  few_shot_linear_probe,
  h_score,
  knn_accuracy,
  leep,
  linear_probe,
  logme,
  nce,
  pseudo_labels,
)

__all__ = [
  "SCORES",
  "few_shot_linear_probe",
  "h_score",
  "knn_accuracy",
  "leep",
  "linear_probe",
  "logme",
  "nce",
  "pseudo_labels",
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
