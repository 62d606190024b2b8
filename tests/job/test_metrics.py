"""job/metrics.py against scikit-learn (installed for tests only), and its TensorBoard event
file: read back, and on a disk that fills up (issue 17: the run never exited)."""

import errno
import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxpretrain.job import metrics
from jaxpretrain.job.loop import Hooks


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


# ----------------------------------------------------------------------------- TensorBoard

def _events(data: bytes) -> list:
  """The events of a TFRecord file (length u64, its crc u32, payload, its crc u32)."""
  from tensorboardX.proto.event_pb2 import Event  # noqa: PLC0415
  from tensorboardX.record_writer import masked_crc32c  # noqa: PLC0415

  out, pos = [], 0
  while pos < len(data):
    n = int.from_bytes(data[pos:pos + 8], "little")
    assert int.from_bytes(data[pos + 8:pos + 12], "little") == masked_crc32c(data[pos:pos + 8])
    payload = data[pos + 12:pos + 12 + n]
    assert int.from_bytes(data[pos + 12 + n:pos + 16 + n], "little") == masked_crc32c(payload)
    out.append(Event.FromString(payload))
    pos += 16 + n
  return out


def test_tensorboard_events_read_back(tmp_path):
  pytest.importorskip("tensorboardX")
  with metrics.TensorBoard(tmp_path) as tb:
    tb.write({"kind": "train", "step": 1, "loss": 0.5, "lr": 0.01, "time": 100.0})
    tb.resume(1)
    tb.write({"kind": "eval", "step": 2, "accuracy": 0.75, "split": "test", "time": 101.0})
    tb.write({"kind": "resume", "step": 1})  # not a scalar kind: nothing written
  events = _events(tb.path.read_bytes())
  assert tb.path.parent == tmp_path and tb.path.name.startswith("events.out.tfevents.")
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value, e.wall_time) for e in events
             for v in e.summary.value]
  assert scalars == [(1, "train/loss", 0.5, 100.0), (1, "train/lr", pytest.approx(0.01), 100.0),
                     (2, "eval/accuracy", 0.75, 101.0)]
  assert [e.step for e in events if e.HasField("session_log")] == [1]


def test_tensorboard_does_not_import_torch(tmp_path):
  """tensorboardX's package imports torch when it can (seconds at every job start); the event
  writer takes its protos without it, and a later `import torch` still works."""
  pytest.importorskip("tensorboardX")
  code = ("import sys; from jaxpretrain.job import metrics; "
          f"tb = metrics.TensorBoard({str(tmp_path)!r}); assert tb.path is not None; "
          "assert 'torch' not in sys.modules, 'torch imported'; tb.close(); "
          "import importlib.util; assert importlib.util.find_spec('torch') is None or "
          "__import__('torch')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]


class _FillsUp(io.RawIOBase):
  """A file on a disk with `room` bytes left: a write past it fails with ENOSPC."""

  def __init__(self, room: int):
    self.room = room

  def writable(self) -> bool:
    return True

  def write(self, b) -> int:
    if len(b) > self.room:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    self.room -= len(b)
    return len(b)


def test_tensorboard_on_a_full_disk_raises_at_once_and_never_blocks(tmp_path, monkeypatch):
  """The write that meets the full disk raises ENOSPC naming the event file, in the caller's
  thread (no writer thread, whose death left tensorboardX's queue to block the run forever),
  and closing on the failing path neither raises again nor blocks."""
  pytest.importorskip("tensorboardX")
  monkeypatch.setattr(metrics, "_open_events", lambda path: io.BufferedWriter(_FillsUp(600)))
  threads = threading.active_count()
  record = {"kind": "train", "step": 1, "loss": 0.5, "accuracy": 0.25, "lr": 0.01, "time": 1.0}
  with pytest.raises(OSError) as e, metrics.TensorBoard(tmp_path) as tb:
    assert threading.active_count() == threads
    for step in range(1, 100):
      tb.write({**record, "step": step})
  assert e.value.errno == errno.ENOSPC and e.value.filename == str(tb.path)
  assert 2 <= step < 10  # ~140 bytes a record: the first that does not fit raises
  tb.close()  # closed already: nothing to do

  tb = metrics.TensorBoard(tmp_path)  # a clean close whose final flush fails raises
  tb._file.raw.room = 0
  tb._file.write(b"x")
  with pytest.raises(OSError, match="No space left"):
    tb.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_tensorboard_on_a_disk_full_from_the_start(tmp_path, monkeypatch):
  """/dev/full: the kernel's ENOSPC, at the first event."""
  pytest.importorskip("tensorboardX")
  monkeypatch.setattr(metrics, "_open_events", lambda path: open("/dev/full", "ab"))  # noqa: SIM115
  with pytest.raises(OSError) as e:
    metrics.TensorBoard(tmp_path)
  assert e.value.errno == errno.ENOSPC and "events.out.tfevents." in e.value.filename


TB_ROOM = 700  # bytes the event file may take: the disk fills at step 2 or 3 of 12


def test_a_run_whose_event_file_fills_the_disk_stops_with_the_disk_full_line(tiny, monkeypatch):
  """The event file meets the full disk first (on a tmpfs, appending to metrics.jsonl's last
  page still succeeds): the run ends at once with ENOSPC, which the mains print as the one
  "no space left" line. (tests/reliability/test_workdir.py fills a real disk mid-run and
  resumes; this is its cheap in-process part.)"""
  from jaxpretrain.job import cli, finetune  # noqa: PLC0415

  monkeypatch.setattr(metrics, "_open_events",
                      lambda path: io.BufferedWriter(_FillsUp(TB_ROOM)))
  config = tiny(log_every=1, eval_every=0, checkpoint_every=0)
  steps = []
  with pytest.raises(OSError) as e:
    finetune(config, hooks=Hooks(after_step=steps.append))
  assert e.value.errno == errno.ENOSPC, e.value
  assert 1 <= steps[-1] < 6, steps
  assert cli._failure_mid_run(e.value, config) == (
      f"no space left on the device of --workdir={config.workdir!r}; free some space and rerun "
      "the same command: it resumes from the last complete checkpoint")
