"""The console and the files of a default run (issue 14, points 7, 8 and 10): only
jaxpretrain's own lines, a grouped --help, TensorBoard events, curves.png and the report."""

import json
import os
import stat
import sys

import numpy as np
import pytest

from jaxpretrain import pretrained
from jaxpretrain.job import metrics, report
from tests.reliability.conftest import make_images, run_bounded

RUN = ("--model=resnet_tiny", "--image_size=8", "--batch_size=8", "--steps=6", "--log_every=2",
       "--checkpoint_every=3", "--lr=0.01")
FOREIGN = ("INFO", "WARNING", "orbax", "Downloading", "Traceback", "absl")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A short default run of resnet_tiny on a 4-class npz dataset in a subprocess."""
  root = tmp_path_factory.mktemp("console")
  images, labels = make_images(80)
  np.savez(root / "tiny.npz", image=images, label=labels)
  wd = root / "run"
  out = run_bounded([sys.executable, "-m", "jaxpretrain", "finetune",
                     f"--dataset=npz:{root / 'tiny.npz'}", *RUN, f"--workdir={wd}"])
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  return wd, out


def test_default_console_shows_only_jaxpretrain_lines(finished):
  _, out = finished
  text = out.stdout + out.stderr
  for word in FOREIGN:
    assert word not in text, f"{word!r} in the console:\n{text}"
  assert "test accuracy" in out.stdout and "top-5" not in out.stdout  # 4 classes
  assert "final evaluation: " in out.stderr  # progress of the final evaluation (not a TTY)


def test_tensorboard_events_hold_the_logged_metrics(finished):
  from tensorboardX.proto.event_pb2 import Event  # noqa: PLC0415

  wd, _ = finished
  files = [f for f in os.listdir(wd) if f.startswith("events.out.tfevents")]
  assert len(files) == 1, files
  scalars = {}
  data = (wd / files[0]).read_bytes()
  pos = 0
  while pos < len(data):  # TFRecord framing: length u64, crc u32, payload, crc u32
    n = int.from_bytes(data[pos:pos + 8], "little")
    event = Event.FromString(data[pos + 12:pos + 12 + n])
    pos += 12 + n + 4
    for v in event.summary.value:
      scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
  logged = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  train = [(r["step"], r["loss"]) for r in logged if r["kind"] == "train"]
  assert [s for s, _ in scalars["train/loss"]] == [s for s, _ in train]
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [v for _, v in train],
                             rtol=1e-6)  # float32 in the event file
  assert "eval/accuracy" in scalars and "train/lr" in scalars


def test_report_names_wall_time_and_leaves_out_top5(finished):
  wd, _ = finished
  text = (wd / "report.md").read_text()
  assert "| wall time (all invocations) |" in text
  assert "top-5" not in text  # 4 classes
  assert (wd / "curves.png").stat().st_size > 10_000


def test_curves_mark_resumes_and_baseline(tmp_path):
  records = [{"kind": "train", "step": s, "loss": 1 / s, "accuracy": 0.5, "lr": 0.1}
             for s in range(1, 9)]
  records += [{"kind": "resume", "step": 4}, {"kind": "eval", "step": 8, "accuracy": 0.6}]
  path = report.plot_curves(records, tmp_path / "c.png", "Fine-tuning: x", baseline=0.25,
                            log_every=2)
  assert path.stat().st_size > 10_000


def test_top5_only_past_five_classes():
  six = metrics.classification_metrics(np.eye(6), np.arange(6))
  four = metrics.classification_metrics(np.eye(4), np.arange(4))
  assert "top-5" in report.metrics_table(six)
  assert "top-5" not in report.metrics_table(four)


def test_help_lists_the_mains_flags_by_group():
  out = run_bounded([sys.executable, "-m", "jaxpretrain", "finetune", "--help"])
  assert out.returncode == 0, out.stderr
  for group in ("model:", "data:", "optimization:", "run:"):
    assert f"\n{group}\n" in out.stdout, out.stdout
  assert "--init_checkpoint:" in out.stdout and "--task" not in out.stdout
  out = run_bounded([sys.executable, "-m", "jaxpretrain", "nonsense"])
  assert out.returncode == 2 and "allowed: finetune, pretrain" in out.stderr


def test_atomic_folder_follows_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    with pretrained.atomic_folder(tmp_path / "out") as tmp:
      (tmp / "x").write_text("x")
  finally:
    os.umask(old)
  assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
