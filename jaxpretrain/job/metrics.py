"""Classification metrics in NumPy, with scikit-learn's definitions (tests compare them).

    report = classification_metrics(logits, labels, class_names)
    report["accuracy"], report["top5"], report["macro_f1"], report["mcc"]
    report["confusion"]        # [true, predicted] counts
    report["per_class"]        # [{"name", "precision", "recall", "f1", "support"}, ...]

Conventions (sklearn's defaults): a ratio with a zero denominator is 0; macro-F1 averages over
the classes that occur in the labels or the predictions; MCC is the multiclass Matthews
correlation (Gorodkin 2004, as `sklearn.metrics.matthews_corrcoef`).
"""

from __future__ import annotations

import pathlib
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [num_classes, num_classes]: entry [t, p] counts examples of class t predicted p."""
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  out = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(out, (labels, predictions), 1)
  return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support per class, float64 [num_classes] (support int64)."""
  tp = np.diag(confusion).astype(np.float64)
  predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
  precision, recall = _ratio(tp, predicted), _ratio(tp, support)
  f1 = _ratio(2 * precision * recall, precision + recall)
  return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(confusion: np.ndarray) -> float:
  """Mean F1 over classes present in the labels or the predictions."""
  present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
  if not present.any():
    return 0.0
  return float(per_class(confusion)["f1"][present].mean())


def matthews_corrcoef(confusion: np.ndarray) -> float:
  """Multiclass MCC: (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)); 0 when undefined."""
  c = confusion.astype(np.float64)
  t, p = c.sum(axis=1), c.sum(axis=0)  # true and predicted counts per class
  s, correct = c.sum(), np.trace(c)
  den = np.sqrt((s**2 - p @ p) * (s**2 - t @ t))
  return float((correct * s - t @ p) / den) if den > 0 else 0.0


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Share of examples whose label is among the k largest logits (k capped at the classes)."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  k = min(k, logits.shape[-1])
  top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=-1))) if len(labels) else 0.0


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean softmax cross-entropy in float64."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  return float(-np.mean(logp[np.arange(len(labels)), labels])) if len(labels) else float("nan")


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """Every metric of a set of predictions.

  Args:
    logits: [n, num_classes] scores (any monotone transform of probabilities).
    labels: [n] int class indices.
    class_names: num_classes names for the per-class table (default "0", "1", ...).
  Returns:
    JSON-ready dict: loss, accuracy, top5, macro_f1, mcc, majority_baseline (accuracy of
    always answering the most frequent label), num_examples, class_names, confusion
    (lists, [true][predicted]) and per_class rows.
  """
  logits, labels = np.asarray(logits), np.asarray(labels, np.int64)
  num_classes = logits.shape[-1]
  names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes")
  predictions = np.argmax(logits, axis=-1)
  cm = confusion_matrix(labels, predictions, num_classes)
  rows = per_class(cm)
  n = len(labels)
  return {
      "num_examples": int(n),
      "loss": cross_entropy(logits, labels),
      "accuracy": float(np.mean(predictions == labels)) if n else 0.0,
      "top5": top_k_accuracy(logits, labels, 5),
      "macro_f1": macro_f1(cm),
      "mcc": matthews_corrcoef(cm),
      "majority_baseline": float(cm.sum(axis=1).max() / n) if n else 0.0,
      "class_names": names,
      "confusion": cm.tolist(),
      "per_class": [
          {"name": names[i], "precision": float(rows["precision"][i]),
           "recall": float(rows["recall"][i]), "f1": float(rows["f1"][i]),
           "support": int(rows["support"][i])} for i in range(num_classes)],
  }


def _tensorboardx_protos() -> tuple[Any, Any, Any]:
  """tensorboardX's event_pb2, summary_pb2 and masked_crc32c, without importing torch.

  The package's __init__ imports its SummaryWriter, which tries `import torch` (to accept torch
  tensors): with torch installed that costs seconds at every job start, and jaxpretrain never
  imports torch. While these imports run, `import torch` raises ImportError (a `None` entry in
  sys.modules), which tensorboardX catches. Raises ImportError without tensorboardX.
  """
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None  # type: ignore[assignment]
  try:
    from tensorboardX.proto import event_pb2, summary_pb2  # noqa: PLC0415
    from tensorboardX.record_writer import masked_crc32c  # noqa: PLC0415
  finally:
    if block and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return event_pb2, summary_pb2, masked_crc32c


def _open_events(path: pathlib.Path) -> BinaryIO:
  """The event file, opened for appending (tests replace it with a file that fills up)."""
  return path.open("ab")


class TensorBoard:
  """TensorBoard event files in the workdir, so that `tensorboard --logdir workdirs/` shows
  every run. Scalars are tagged `train/loss`, `eval/accuracy`, ...; a resumed run first writes
  TensorBoard's "restart at step N" marker, which drops the points the stopped run wrote past
  its checkpoint. Without tensorboardX (its protos and CRC) it does nothing (metrics.jsonl
  holds the same numbers).

  Events are written and flushed in the caller's thread, like metrics.jsonl, not through
  tensorboardX's SummaryWriter: its writer thread dies on a full disk, and its bounded queue
  then blocks the next `add_scalar` (and `close`) forever, so the run never exited. Here a
  failed write raises an OSError naming the event file (ENOSPC: cli.py's "no space left"
  line), and `close` on a failing path neither blocks nor replaces the first error.
  """

  KINDS = ("train", "eval")

  def __init__(self, logdir, enabled: bool = True):
    self._file: BinaryIO | None = None
    self.path: pathlib.Path | None = None
    if not enabled:
      return
    try:
      self._event_pb2, self._summary_pb2, self._crc = _tensorboardx_protos()
    except ImportError:
      return
    # tensorboardX's file name: TensorBoard reads every events.out.tfevents.* in the folder.
    self.path = pathlib.Path(logdir) / (f"events.out.tfevents.{str(time.time())[:10]}."
                                        f"{socket.gethostname()}")
    try:
      self._file = _open_events(self.path)
    except OSError as e:
      raise OSError(e.errno, e.strerror, str(self.path)) from None
    try:
      self._write([self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")])
    except OSError:
      self.close(raise_errors=False)
      raise

  def _write(self, events: list[Any]) -> None:
    """Appends TFRecord-framed events and flushes them (an error surfaces here, at once)."""
    if self._file is None:
      return
    out = bytearray()
    for event in events:
      data = event.SerializeToString()
      header = struct.pack("<Q", len(data))
      out += header + struct.pack("<I", self._crc(header)) + data
      out += struct.pack("<I", self._crc(data))
    try:
      self._file.write(out)
      self._file.flush()
    except OSError as e:
      raise OSError(e.errno, e.strerror, str(self.path)) from None

  def resume(self, step: int) -> None:
    if self._file is not None:
      pb = self._event_pb2
      self._write([pb.Event(wall_time=time.time(), step=step,
                            session_log=pb.SessionLog(status=pb.SessionLog.START))])

  def write(self, record: dict[str, Any]) -> None:
    kind = record.get("kind")
    if self._file is None or kind not in self.KINDS:
      return
    wall = record.get("time") or time.time()
    summary = self._summary_pb2.Summary
    self._write([self._event_pb2.Event(
        wall_time=wall, step=record["step"],
        summary=summary(value=[summary.Value(tag=f"{kind}/{key}", simple_value=float(value))]))
        for key, value in record.items()
        if key not in ("kind", "step", "time") and isinstance(value, (int, float))])

  def close(self, *, raise_errors: bool = True) -> None:
    """Closes the file; `raise_errors=False` on a path that is already failing."""
    f, self._file = self._file, None
    if f is None:
      return
    try:
      f.close()  # closes the descriptor even when the final flush fails
    except OSError as e:
      if raise_errors:
        raise OSError(e.errno, e.strerror, str(self.path)) from None

  def __enter__(self) -> TensorBoard:
    return self

  def __exit__(self, exc_type, *exc) -> None:
    self.close(raise_errors=exc_type is None)
