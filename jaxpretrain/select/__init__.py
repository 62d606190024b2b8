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
