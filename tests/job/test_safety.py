"""Crash safety: the workdir lock, SIGTERM writing a checkpoint, unwritable or full workdirs."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jaxpretrain.job import WorkdirError, finetune
from jaxpretrain.job import workdir as workdir_lib
from tests.reliability.conftest import cli_env

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_second_run_in_a_locked_workdir_is_refused(tiny, tmp_path):
  config = tiny(workdir=str(tmp_path / "run"))
  wd = workdir_lib.Workdir(config.workdir)
  wd.check_writable()
  # Another run holds it (flock conflicts between open files, even in the same process).
  with wd.lock(), pytest.raises(WorkdirError, match=f"in use by pid {os.getpid()}"):
    finetune(config)
  assert (tmp_path / "run/.lock").read_text() == ""  # released cleanly


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  wd = workdir_lib.Workdir(tmp_path)
  (tmp_path / ".lock").write_text(f'{{"pid": {dead.pid}, "host": "h"}}')
  with wd.lock():
    assert str(os.getpid()) in (tmp_path / ".lock").read_text()
  assert f"taking over the stale lock of pid {dead.pid}" in capsys.readouterr().out


def test_lock_held_by_another_process_names_its_pid(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from jaxpretrain.job.workdir import Workdir\n"
       f"with Workdir({str(tmp_path)!r}).lock():\n  print('held', flush=True); time.sleep(60)"],
      stdout=subprocess.PIPE, text=True, cwd=REPO)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirError, match=f"in use by pid {holder.pid}"), \
        workdir_lib.Workdir(tmp_path).lock():
      pass
  finally:
    holder.kill()
    holder.wait()


def test_unwritable_workdir_fails_clearly(tiny, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(WorkdirError, match="--workdir=.*a_file/run.* is not a writable folder"):
    finetune(tiny(workdir=str(blocker / "run")))


def test_too_little_disk_space_fails_clearly(tmp_path, monkeypatch):
  usage = workdir_lib.shutil.disk_usage(tmp_path)._replace(free=10 << 20)
  monkeypatch.setattr(workdir_lib.shutil, "disk_usage", lambda _: usage)
  with pytest.raises(WorkdirError, match="10 MiB free, but the checkpoints"):
    workdir_lib.Workdir(tmp_path).check_free_space(1 << 20)


def test_sigterm_writes_a_checkpoint(digits_dir, tmp_path):
  wd = tmp_path / "run"
  args = [sys.executable, "-m", "jaxpretrain.finetune", "--model=resnet_tiny",
          "--dataset=digits_local", f"--data_dir={digits_dir}", "--image_size=16",
          "--batch_size=16", "--steps=100000", "--log_every=1", "--checkpoint_every=0",
          f"--workdir={wd}", "--progress=log"]
  # One CPU device (not the test process's 8 fake ones) and the shared compilation cache.
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=cli_env())
  try:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      log = wd / "metrics.jsonl"
      if log.exists() and log.read_text().count("\n") >= 3:
        break
      time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 143, err[-2000:]
  assert "SIGTERM at step" in err and "rerun the same command to resume" in err
  steps = [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps and min(steps) >= 3  # committed, at the step where it stopped
  assert (wd / ".lock").read_text() == ""
