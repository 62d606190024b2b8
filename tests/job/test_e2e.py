"""End to end: a tiny fine-tune into a temp workdir, interrupted, resumed from its own
checkpoint to exactly the parameters of an uninterrupted run; evaluation; NaN handling;
masked-LM pretraining feeding fine-tuning."""

import csv
import json

import jax
import numpy as np
import pytest

from jaxpretrain import pretrained
from jaxpretrain.job import NonFiniteError, evaluate_checkpoint, finetune, pretrain
from jaxpretrain.job.loop import Hooks
from tests.crash import Crash, crash_after


def _variables(result):
  return pretrained.load_variables(f"{result.model_dir}/variables")


def test_resume_gives_the_uninterrupted_parameters(tiny, tmp_path, monkeypatch):
  """The straight run reads its metrics back lazily (issue 14): once for the compiling step,
  then once per log line (every 3), evaluation (6), checkpoint (4) or MAX_UNCHECKED_STEPS (2
  here); the crashed one, with an after_step hook, at every step. Both end the same."""
  from jaxpretrain.job import loop  # noqa: PLC0415

  checked = []
  check_steps = loop._Run.check_steps

  def counting(self):
    if self.unchecked:
      checked.append([step for step, _, _ in self.unchecked])
    return check_steps(self)

  monkeypatch.setattr(loop._Run, "check_steps", counting)
  monkeypatch.setattr(loop, "MAX_UNCHECKED_STEPS", 2)
  straight = finetune(tiny(workdir=str(tmp_path / "straight")))
  assert straight.steps == 12 and straight.resumed_from is None
  assert checked == [[1], [2, 3], [4], [5, 6], [7, 8], [9], [10, 11], [12]]
  assert 0.0 <= straight.metrics["accuracy"] <= 1.0

  config = tiny(workdir=str(tmp_path / "crashed"))
  with pytest.raises(Crash):
    finetune(config, hooks=Hooks(after_step=crash_after(6)))  # checkpoint of step 4 committed
  resumed = finetune(config)  # the same command again
  assert resumed.resumed_from == 4 and resumed.steps == 12
  jax.tree.map(np.testing.assert_array_equal, _variables(resumed), _variables(straight))
  assert resumed.metrics["accuracy"] == straight.metrics["accuracy"]

  records = [json.loads(x) for x in (tmp_path / "crashed/metrics.jsonl").read_text().split("\n")
             if x]
  train_steps = [r["step"] for r in records if r["kind"] == "train"]
  assert train_steps == [3, 6, 9, 12]  # the crashed run's step-6 record was dropped on resume
  wd = tmp_path / "crashed"
  for name in ("flags.txt", "flags.json", "git_revision.txt", "report.md", "curves.png",
               "final.json", "model/config.json"):
    assert (wd / name).exists(), name
  assert "| accuracy |" in (wd / "report.md").read_text()

  again = finetune(config)  # finished: returns the stored result, trains nothing
  assert again.metrics == resumed.metrics

  ev = evaluate_checkpoint(wd, "digits_local", data_dir=config.data_dir, batch_size=32,
                           output_dir=tmp_path / "eval")
  assert ev["accuracy"] == pytest.approx(resumed.metrics["accuracy"])
  md = (tmp_path / "eval/eval_digits_local_test.md").read_text()
  assert "| 7 |" in md and "Confusion matrix" in md


def _nan_at(position):
  def batch(pos, b):
    if pos == position:
      b = {**b, "image": np.full_like(b["image"], np.nan)}
    return b
  return batch


def test_nan_stops_naming_the_step(tiny):
  with pytest.raises(NonFiniteError, match=r"non-finite loss=nan.* at step 4 \(training batch 3\)"):
    finetune(tiny(steps=6, eval_every=0), hooks=Hooks(batch=_nan_at(3)))


def test_nan_skip_rolls_back_and_skips_the_batch(tiny, capsys):
  result = finetune(tiny(steps=6, eval_every=0, checkpoint_every=2, on_nan="skip"),
                    hooks=Hooks(batch=_nan_at(3)))
  assert result.steps == 6 and result.summary["skipped batches"] == [3]
  assert "rolling back to the last checkpoint" in capsys.readouterr().out
  leaves = jax.tree.leaves(_variables(result))
  assert all(np.isfinite(x).all() for x in leaves)


def _tiny_csv(path, n=64):
  words = ["good", "bad", "fine", "awful", "great", "poor", "happy", "sad"]
  rs = np.random.RandomState(0)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["text", "label"])
    for i in range(n):
      label = i % 2
      text = " ".join(rs.choice(words[label::2], 5)) + f" number {i}"
      w.writerow([text, ["neg", "pos"][label]])
  return f"csv:{path}"


def test_mlm_pretrain_then_finetune(tiny, tmp_path):
  dataset = _tiny_csv(tmp_path / "tiny.csv")
  bert = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "intermediate_size": 64, "max_position_embeddings": 32}
  pre = pretrain(tiny(task="mlm", model="bert", model_kwargs=bert, dataset=dataset, max_len=16,
                      steps=4, warmup=0, eval_every=0, checkpoint_every=0, image_size=None,
                      workdir=str(tmp_path / "mlm")))
  assert np.isfinite(pre.metrics["loss"]) and "perplexity" in pre.metrics
  cfg = pretrained.read_config(pre.model_dir)
  assert cfg["model_kwargs"]["head"] == "mlm" and "tokenizer.json" in cfg["files"]
  fine = finetune(tiny(init_checkpoint=pre.model_dir, model=None, dataset=dataset, max_len=16,
                       steps=4, warmup=0, eval_every=0, checkpoint_every=0, image_size=None,
                       workdir=str(tmp_path / "fine")))
  assert fine.summary["new head"] is True
  assert pretrained.read_config(fine.model_dir)["model_kwargs"]["num_labels"] == 2
  got = _variables(fine)["params"]["encoder"]
  assert "mlm_bias" not in _variables(fine)["params"] and got  # the MLM head was dropped


@pytest.mark.parametrize("kind", ["pmap"])  # fsdp == jit is tested in tests/train
def test_pmap_matches_jit(tiny, tmp_path, kind):
  """The same run over the 8 test devices, jit and pmap: the same parameters and metrics."""
  short = dict(steps=4, eval_every=0, checkpoint_every=0, warmup=1)
  ref = finetune(tiny(workdir=str(tmp_path / "jit"), **short))
  other = finetune(tiny(workdir=str(tmp_path / kind), parallel=kind, **short))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               _variables(other), _variables(ref))
  assert other.metrics["accuracy"] == pytest.approx(ref.metrics["accuracy"], abs=0.01)

