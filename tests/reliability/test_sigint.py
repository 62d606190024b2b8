"""Ctrl-C behaves like SIGTERM (issue 14, point 5): the step finishes, a checkpoint is
committed, one line says how to resume, exit status 130; the rerun resumes bit-exactly."""

import re
import signal
import time

import jax
import numpy as np
import pytest

from jaxpretrain import pretrained
from tests.reliability.conftest import stop, train_records, wait_for

STEPS = 40  # RUN_FLAGS
START_BUDGET_S = 90  # start-up to the third step; a hang fails the test


def _last_step(log):
  steps = re.findall(rf"^step (\d+)/{STEPS} ", log.read_text(), re.M)
  return int(steps[-1]) if steps else 0


@pytest.mark.slow
def test_ctrl_c_checkpoints_exits_130_and_the_rerun_resumes_bit_exactly(cli, reference,
                                                                        tmp_path):
  wd, log = tmp_path / "run", tmp_path / "interrupted.log"
  proc = cli.start(wd, log)
  try:
    wait_for(lambda: _last_step(log) >= 3, proc, time.monotonic() + START_BUDGET_S,
             "the third step", poll_s=0.005)
    status = stop(proc, signal.SIGINT)
  finally:
    stop(proc)
  text = log.read_text()
  assert status == 130, text[-2000:]
  assert "Traceback" not in text, text[-2000:]
  got = re.findall(r"SIGINT at step (\d+): checkpoint written to .*; rerun the same command "
                   r"to resume", text)
  assert len(got) == 1, text[-2000:]
  at = int(got[0])
  assert at >= 3 and (wd / "checkpoints" / str(at)).is_dir(), text[-2000:]
  assert not (wd / "final.json").exists()

  out = cli.run(wd)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert f"resuming from the checkpoint of step {at}" in out.stdout + out.stderr
  jax.tree.map(np.testing.assert_array_equal,
               pretrained.load_variables(wd / "model" / "variables"),
               pretrained.load_variables(reference / "model" / "variables"))
  assert [r["loss"] for r in train_records(wd)] == [r["loss"] for r in train_records(reference)]
