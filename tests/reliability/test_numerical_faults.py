"""Numerical faults: a NaN or Inf loss or gradient stops the run naming the step, the batch
and the metric, with the poisoned state never saved; `--on_nan=skip` rolls back to the last
checkpoint, skips the batch and finishes, and the skip survives a restart; a diverging run is
stopped by `--max_skips`.
"""

import jax
import numpy as np
import pytest

from jaxpretrain import pretrained
from jaxpretrain.job import NonFiniteError, finetune
from jaxpretrain.job.loop import Hooks
from jaxpretrain.train import checkpoint as checkpoint_lib
from tests.crash import Crash
from tests.reliability.conftest import train_records

BAD_POSITION = 11  # the data position of the poisoned batch: between checkpoints 10 and 15


def _poison(position, value):
  """A batch hook: the batch at `position` gets images full of `value`."""
  def batch(pos, b):
    return {**b, "image": np.full_like(b["image"], value)} if pos == position else b
  return batch


def _variables(result):
  return pretrained.load_variables(f"{result.model_dir}/variables")


def test_huge_lr_stops_naming_step_and_metric(cli, tmp_path):
  wd = tmp_path / "run"
  out = cli.run(wd, "--lr=1e30", "--checkpoint_every=1", "--warmup=0", "--schedule=constant")
  assert out.returncode == 1, out.stderr[-3000:]
  assert ("error: non-finite loss=nan, grad_norm=nan at step 2 (training batch 1); stopped "
          "(--on_nan=stop), the bad state was not saved") in out.stderr, out.stderr[-3000:]
  assert "Lower --lr, set --clip_norm, or use --on_nan=skip" in out.stderr
  assert "Traceback" not in out.stderr
  assert [r["step"] for r in train_records(wd)] == [1]
  steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [1]  # step 2's state was not saved


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_batch_stops_naming_step_and_metric(tiny_config, value):
  config = tiny_config(steps=20)
  with pytest.raises(NonFiniteError) as e:
    finetune(config, hooks=Hooks(batch=_poison(BAD_POSITION, value)))
  message = str(e.value)
  assert f" at step {BAD_POSITION + 1} (training batch {BAD_POSITION})" in message, message
  assert message.startswith("non-finite loss=nan"), message  # BatchNorm turns inf into nan
  assert "the bad state was not saved" in message
  ckpt = checkpoint_lib.Checkpointer(config.workdir, max_to_keep=None)
  try:
    assert ckpt.all_steps() == [5, 10]  # nothing after the bad step
  finally:
    ckpt.close()


def test_skip_survives_a_restart(tiny_config, tmp_path):
  """--on_nan=skip: the run rolls back to checkpoint 10, replays step 11, skips batch 11 and
  finishes all its steps; a run killed after the skip and resumed on clean data skips the same
  batch (the skip is stored with the checkpoint) and ends with the same parameters."""
  skip = dict(steps=20, on_nan="skip")
  poison = Hooks(batch=_poison(BAD_POSITION, np.nan))
  straight = finetune(tiny_config(workdir=str(tmp_path / "straight"), **skip), hooks=poison)
  assert straight.steps == 20 and straight.summary["skipped batches"] == [BAD_POSITION]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_variables(straight)))
  records = train_records(tmp_path / "straight")
  assert [r["step"] for r in records] == list(range(1, 21))

  def crash(step):
    if step == 17:  # checkpoint 15, written after the skip, is committed
      raise Crash("simulated crash")
  config = tiny_config(workdir=str(tmp_path / "crashed"), **skip)
  with pytest.raises(Crash):
    finetune(config, hooks=Hooks(batch=poison.batch, after_step=crash))
  resumed = finetune(config)  # clean data: only the stored skip keeps batch 11 out
  assert resumed.resumed_from == 15 and resumed.summary["skipped batches"] == [BAD_POSITION]
  jax.tree.map(np.testing.assert_array_equal, _variables(resumed), _variables(straight))
  timing = ("steps_per_s", "time")  # wall-clock fields; a window of only the compiling step
  # has no steps_per_s
  strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]
  assert strip(train_records(tmp_path / "crashed")) == strip(records)


def test_diverging_run_stops_after_max_skips(cli, tmp_path):
  wd = tmp_path / "run"
  out = cli.run(wd, "--lr=1e30", "--on_nan=skip", "--max_skips=2", "--warmup=0",
                "--schedule=constant")
  assert out.returncode == 1, out.stderr[-3000:]
  assert out.stdout.count("rolling back to the last checkpoint and skipping that batch") == 2
  assert ("3 batches skipped so far, more than --max_skips=2: the run diverges"
          in out.stderr), out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  assert not (wd / "final.json").exists()
