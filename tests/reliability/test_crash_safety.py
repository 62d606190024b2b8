"""Crash safety of `python -m jaxpretrain.finetune`: killed anywhere, it finishes as if never
interrupted.

One run of 40 steps (a checkpoint every 5) is interrupted ten times at seeded random points:
SIGKILL after a random step, SIGKILL while a checkpoint is being written (its orbax tmp
directory exists), SIGKILL during start-up, SIGTERM (preemption) after a random step, and
SIGKILL during the final evaluation and export. After each interruption the same command is
run again. The test proves that every restart resumes from the newest complete checkpoint
(never a partial one, and after SIGTERM from the very step it stopped at), that a killed run's
lock is taken over while a live run's lock refuses a second process, and that the run ends with
the parameters, per-step losses and test metrics of an uninterrupted run, bit for bit.
"""

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from jaxpretrain import pretrained
from tests.crash import Crash, crash_after
from tests.reliability.conftest import run_bounded, stop, train_records, wait_for

SEED = 7
STEPS, EVERY = 40, 5  # RUN_FLAGS
# The order of interruptions; the points where they land are drawn from SEED. "export" comes
# last: after it only evaluation and export are left.
PLAN = ("step", "write", "sigterm", "step", "startup", "write", "step", "sigterm", "write",
        "export")
KILL_LOOP_BUDGET_S = 240  # ~70 s on two shared cores; past this the test fails, never hangs
TMP_MARK = ".orbax-checkpoint-tmp"


def _checkpoints(wd):
  """(committed steps, names of partial step directories) in the run's checkpoints folder."""
  folder = wd / "checkpoints"
  names = os.listdir(folder) if folder.exists() else []
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if TMP_MARK in n)


def _last_step(log):
  """The last training step this process logged (0 if none)."""
  steps = re.findall(rf"^step (\d+)/{STEPS} ", log.read_text(), re.M)
  return int(steps[-1]) if steps else 0


def _writing(wd, after):
  """A checkpoint directory being written for a step past `after`, or None."""
  _, partial = _checkpoints(wd)
  return next((n for n in partial if int(n.split(".")[0]) > after), None)


def _interrupt(kind, proc, log, wd, resume, rng, deadline):
  """Waits for the point `kind` aims at and interrupts `proc` there.

  Returns:
    (where, in words; the exit status; the step aimed at, or None).
  """
  if kind == "startup":  # imports, restore, compilation: before the first step
    time.sleep(rng.uniform(0.3, 3.0))
    return "during start-up", stop(proc), None
  if kind == "export":  # the final checkpoint is committed: evaluation, export, report
    wait_for(lambda: STEPS in _checkpoints(wd)[0], proc, deadline, "the last checkpoint")
    time.sleep(rng.uniform(0.0, 1.0))
    return "during the final evaluation / export", stop(proc), None
  if kind == "write":  # kill while the next checkpoint is in its tmp directory
    wait_for(lambda: _last_step(log) > resume, proc, deadline, "a training step")
    name = wait_for(lambda: _writing(wd, resume), proc, deadline, "a checkpoint write")
    time.sleep(rng.uniform(0.0, 0.04))
    return f"while writing {name}", stop(proc), None
  target = rng.randint(resume + 1, resume + 9)
  wait_for(lambda: _last_step(log) >= target, proc, deadline, f"step {target}", poll_s=0.005)
  if kind == "sigterm":
    return f"SIGTERM after step {target}", stop(proc, signal.SIGTERM), target
  return f"after step {target}", stop(proc), target


def _check_lock_refuses(cli, wd, holder):
  """With `holder` paused, a second process in the same workdir must refuse, naming it."""
  os.kill(holder.pid, signal.SIGSTOP)
  try:
    out = run_bounded(cli.args(wd), timeout=60)
  finally:
    os.kill(holder.pid, signal.SIGCONT)
  assert out.returncode == 1, out.stderr[-2000:]
  assert f"is in use by pid {holder.pid} on " in out.stderr, out.stderr[-2000:]
  assert "choose another --workdir" in out.stderr


def _variables(wd):
  return pretrained.load_variables(wd / "model" / "variables")


@pytest.mark.slow
@pytest.mark.timeout_s(KILL_LOOP_BUDGET_S + 60)
def test_killed_anywhere_ends_with_the_uninterrupted_parameters(cli, reference, tmp_path):
  rng = random.Random(SEED)
  wd = tmp_path / "run"
  deadline = time.monotonic() + KILL_LOOP_BUDGET_S
  attempts = []  # (kind, where, exit status, committed after, partial after, held the lock)
  for i, kind in enumerate(PLAN):
    committed, _ = _checkpoints(wd)
    resume = max(committed, default=0)
    if kind in ("step", "write", "sigterm") and resume > STEPS - 2 * EVERY:
      kind = "startup"  # too few steps left to aim at
    log = tmp_path / f"attempt{i}.log"
    proc = cli.start(wd, log)
    try:
      if i == 0:
        wait_for(lambda log=log: _last_step(log) >= 1, proc, deadline, "the first step")
        _check_lock_refuses(cli, wd, proc)
      where, status, target = _interrupt(kind, proc, log, wd, resume, rng, deadline)
    finally:
      stop(proc)
    text = log.read_text()
    attempts.append(dict(kind=kind, where=where, status=status, target=target, pid=proc.pid,
                         checkpoints=_checkpoints(wd), locked="model resnet_tiny (" in text,
                         finished=(wd / "final.json").exists(), log=log))
  final_log = tmp_path / "final.log"
  proc = cli.start(wd, final_log)
  try:
    assert proc.wait(timeout=max(deadline - time.monotonic(), 1)) == 0, final_log.read_text()
  except subprocess.TimeoutExpired:
    pytest.fail(f"the final run did not finish within {KILL_LOOP_BUDGET_S} s in all")
  finally:
    stop(proc)
  shown = "\n".join(f"{a['kind']:8} {a['where']:45} exit {a['status']:4}  checkpoints "
                    f"{a['checkpoints']}" for a in attempts)
  print(f"interruptions:\n{shown}")

  # Each run after an interruption; one killed in its start-up may not have got to resuming.
  after = [(a["log"], a["kind"] == "startup") for a in attempts[1:]] + [(final_log, False)]
  for before, (log, cut_short) in zip(attempts, after, strict=True):
    _check_restart(before, log.read_text(), cut_short, shown)
  kinds = [a["kind"] for a in attempts]
  assert kinds.count("step") + kinds.count("write") + kinds.count("startup") >= 5, shown
  assert sum(bool(a["checkpoints"][1]) for a in attempts if a["kind"] == "write") >= 2, (
      f"fewer than two kills landed inside a checkpoint write:\n{shown}")
  assert kinds.count("sigterm") >= 1, shown

  jax.tree.map(np.testing.assert_array_equal, _variables(wd), _variables(reference))
  got, want = train_records(wd), train_records(reference)
  assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # each step logged once
  for key in ("loss", "accuracy", "grad_norm", "lr"):
    assert [r[key] for r in got] == [r[key] for r in want], key
  final = json.loads((wd / "final.json").read_text())["metrics"]
  assert final == json.loads((reference / "final.json").read_text())["metrics"]
  assert _checkpoints(wd)[1] == []  # partial writes were cleaned up


def _check_restart(before, text, cut_short, shown):
  """The run after `before` resumed from its newest complete checkpoint and took its lock.

  `cut_short`: that run was itself killed during start-up, so it may have got to neither.
  """
  committed, partial = before["checkpoints"]
  newest = max(committed, default=None)
  context = f"after the interruption {before['kind']} {before['where']}:\n{text[-1500:]}\n{shown}"
  if cut_short and "model resnet_tiny (" not in text:
    return  # killed before it took the lock and looked at the checkpoints
  if before["finished"]:
    assert "already holds a finished run" in text, context
    return
  resumed = re.findall(r"resuming from the checkpoint of step (\d+)", text)
  assert resumed == ([str(newest)] if newest is not None else []) or (
      cut_short and not resumed), context
  for name in partial:  # the partial write was never the one restored
    assert int(name.split(".")[0]) > (newest or 0), context
  if before["kind"] == "sigterm":
    assert before["status"] == 143, context
    stopped = before["log"].read_text()
    assert f"SIGTERM at step {newest}: checkpoint written" in stopped, context
    assert "rerun the same command to resume" in stopped
    assert newest >= before["target"], context  # the step it was at, not an earlier one
    assert "taking over the stale lock" not in text, context  # released on the way out
  elif before["locked"]:
    assert f"taking over the stale lock of pid {before['pid']} " in text, context


# ----------------------------------------------------------------- damage after the fact
# In-process runs of 12 steps (checkpoints 5 and 10, then 12): the failure is placed
# exactly, so no kill timing is involved.


def _largest_file(folder):
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _damage(step_dir, how):
  if how == "state file removed":
    _largest_file(step_dir / "state").unlink()
  elif how == "state file cut short":
    big = _largest_file(step_dir / "state")
    big.write_bytes(big.read_bytes()[:big.stat().st_size // 2])
  else:  # "data file cut short": the iterator position and the run record
    meta = step_dir / "data" / "metadata"
    text = meta.read_text()
    meta.write_text(text[:len(text) // 2])


DAMAGE = ["state file removed", "state file cut short", "data file cut short"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_newest_checkpoint_is_skipped_naming_why(tmp_path, how):
  """Checkpointer level (no training): steps 1 and 2 saved, a file of step 2 removed or cut
  short afterwards. restore_latest returns step 1, logs one line naming step 2 and the
  error, and removes step 2; when step 1 is damaged too, one CheckpointError names both."""
  from jaxpretrain.train import checkpoint
  from tests.train.test_checkpoint import _setup

  par, fresh, _ = _setup("cnn", "jit")
  state = par.put_state(fresh())
  with checkpoint.Checkpointer(tmp_path, max_to_keep=None) as ckpt:
    for step in (1, 2):
      ckpt.save(step, state, data_state={"step": step})
  _damage(tmp_path / "checkpoints" / "2", how)
  lines = []
  with checkpoint.Checkpointer(tmp_path, max_to_keep=None) as ckpt:
    _, data_state = ckpt.restore_latest(state, log=lines.append)
    assert data_state == {"step": 1} and ckpt.all_steps() == [1]
  assert len(lines) == 1 and lines[0].startswith("skipping checkpoint 2 in "), lines
  assert re.search(r": it does not restore \(\w+: .+\); removed, resuming from step 1$",
                   lines[0]), lines[0]
  _damage(tmp_path / "checkpoints" / "1", how)
  with checkpoint.Checkpointer(tmp_path, max_to_keep=None) as ckpt, pytest.raises(
      checkpoint.CheckpointError, match=r"no checkpoint in .*checkpoints restores \(step 1: "
      r"\w+: .+\); move the folder away to start over, or choose another --workdir") as e:
    ckpt.restore_latest(state)
  assert "\n" not in str(e.value) and len(str(e.value)) < 1000


def test_damaged_newest_checkpoint_resumes_from_the_previous_one(tiny_config):
  """The same through the training loop: checkpoint 10 cut short after a crash at step 11;
  the rerun resumes from 5, writes 10 again and logs each step once."""
  from jaxpretrain.job import finetune
  from jaxpretrain.job.loop import Hooks

  config = tiny_config(steps=12, checkpoint_every=5)
  wd = pathlib.Path(config.workdir)
  with pytest.raises(Crash):
    finetune(config, hooks=Hooks(after_step=crash_after(11)))
  assert _checkpoints(wd)[0] == [5, 10]
  _damage(wd / "checkpoints" / "10", "state file cut short")
  lines = []
  result = finetune(config, log=lines.append)
  assert any(x.startswith("skipping checkpoint 10 ") for x in lines), lines
  assert result.resumed_from == 5 and result.steps == 12
  assert [r["step"] for r in train_records(wd)] == list(range(1, 13))
  assert _checkpoints(wd) == ([10, 12], [])  # 10 written again, then 12 (keep 2)


def test_final_evaluation_logged_once_and_a_cut_final_json_reruns(tiny_config, monkeypatch):
  """A crash during the export (after the final evaluation was logged) and a final.json cut
  short: each rerun finishes, and metrics.jsonl holds the final evaluation exactly once."""
  from jaxpretrain.job import finetune, loop

  config = tiny_config(steps=12, checkpoint_every=5)
  wd = pathlib.Path(config.workdir)

  def crash(*args, **kwargs):
    raise Crash("simulated crash during the export")
  with monkeypatch.context() as m:
    m.setattr(loop, "_export", crash)
    with pytest.raises(Crash):
      finetune(config)
  evals = lambda: [r for r in map(json.loads, (wd / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                   if r["kind"] == "eval"]
  assert [r["step"] for r in evals()] == [12] and not (wd / "final.json").exists()
  first = finetune(config)
  assert first.resumed_from == 12 and [r["step"] for r in evals()] == [12]
  (wd / "final.json").write_text((wd / "final.json").read_text()[:40])  # a cut write
  lines = []
  again = finetune(config, log=lines.append)
  assert any("final.json is unreadable (cut short?)" in x for x in lines), lines
  assert again.resumed_from == 12 and [r["step"] for r in evals()] == [12]
  assert json.loads((wd / "final.json").read_text())["metrics"] == first.metrics
