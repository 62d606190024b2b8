"""job/metrics.py against scikit-learn (installed for tests only)."""

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxpretrain.job import metrics


@pytest.mark.parametrize("seed, n, classes", [(0, 200, 3), (1, 50, 10), (2, 7, 5)])
def test_matches_sklearn(seed, n, classes):
  rs = np.random.RandomState(seed)
  labels = rs.randint(0, classes, n)
  logits = rs.randn(n, classes) + 2.0 * np.eye(classes)[labels] * rs.rand(n, 1)
  pred = logits.argmax(-1)
  m = metrics.classification_metrics(logits, labels)
  assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
  assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
  assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(labels, pred))
  assert m["top5"] == pytest.approx(
      skm.top_k_accuracy_score(labels, logits, k=min(5, classes), labels=range(classes))
      if classes > 2 else 1.0)
  assert m["loss"] == pytest.approx(skm.log_loss(labels, _softmax(logits),
                                                 labels=range(classes)))
  np.testing.assert_array_equal(m["confusion"],
                                skm.confusion_matrix(labels, pred, labels=range(classes)))
  p, r, f, s = skm.precision_recall_fscore_support(labels, pred, labels=range(classes),
                                                   zero_division=0)
  for i, row in enumerate(m["per_class"]):
    assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
        (p[i], r[i], f[i], s[i]))


def test_degenerate_cases_match_sklearn():
  labels = np.array([0, 0, 1, 1, 1])
  logits = np.eye(4)[[0, 0, 0, 0, 0]]  # always class 0; classes 2, 3 never seen
  pred = logits.argmax(-1)
  m = metrics.classification_metrics(logits, labels, ["a", "b", "c", "d"])
  assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
  assert m["mcc"] == skm.matthews_corrcoef(labels, pred) == 0.0
  assert m["majority_baseline"] == pytest.approx(0.6)
  assert [r["name"] for r in m["per_class"]] == ["a", "b", "c", "d"]
  assert m["per_class"][1]["precision"] == 0.0  # never predicted: 0, as zero_division=0


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)
