"""`evaluate` on a run's workdir uses the run's dataset and --data_dir (its flags.json), says
where it builds a dataset, refuses a headless checkpoint before reading any data, and warns
when the evaluated split holds a single class.

The "run" is a workdir made by hand (flags.json plus model/ holding an untrained resnet_tiny
with a 10-way head): what is checked is which data is read, not how well the model does.
"""

import json

import jax
import numpy as np
import pytest

from jaxpretrain import models, pretrained
from jaxpretrain.data import sources
from jaxpretrain.job import evaluate_checkpoint
from jaxpretrain.job.config import ConfigError

PREPROCESSING = {"image_size": 16, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _checkpoint(folder, num_classes=10):
  kwargs = {"num_classes": num_classes}
  model = models.build_model("resnet_tiny", **kwargs)
  variables = jax.jit(lambda: models.init_variables("resnet_tiny", model, jax.random.key(0)))()
  return pretrained.save_pretrained(
      folder, "resnet_tiny", kwargs, jax.tree.map(np.asarray, dict(variables)),
      preprocessing=PREPROCESSING,
      class_names=list(sources.DIGIT_CLASSES) if num_classes else None)


@pytest.fixture
def empty_default_dir(tmp_path, monkeypatch):
  """$TFDS_DATA_DIR points at an empty folder: a fallback to the default would build there."""
  default = tmp_path / "default_tfds"
  default.mkdir()
  monkeypatch.setenv("TFDS_DATA_DIR", str(default))
  return default


def test_evaluate_on_a_workdir_uses_its_dataset_and_data_dir(digits_dir, tmp_path,
                                                            empty_default_dir, capsys):
  workdir = tmp_path / "run"
  _checkpoint(workdir / "model")
  (workdir / "flags.json").write_text(json.dumps(
      {"dataset": "digits_local", "data_dir": digits_dir, "validation_fraction": 0.1}))
  lines = []
  for checkpoint in (workdir, workdir / "model"):  # the workdir, or its model/
    result = evaluate_checkpoint(checkpoint, split="test[:20%]", batch_size=16,
                                 output_dir=tmp_path / "out", log=lines.append,
                                 progress=checkpoint == workdir)
    assert result["dataset"] == "digits_local" and result["num_examples"] == 72
  err = capsys.readouterr().err.splitlines()  # the CLI's progress: 72 examples, 5 batches of 16
  assert err[-1].startswith("evaluating test[:20%]: 5/5 (100%)"), err
  assert len([e for e in err if e.startswith("evaluating test[:20%]: ")]) == 5, err
  assert lines[0] == f"evaluating on the run's dataset 'digits_local' (--data_dir={digits_dir})"
  assert list(empty_default_dir.iterdir()) == []  # nothing built behind the user's back
  assert not any("only one class" in line for line in lines)  # shuffled: every class


def test_evaluate_says_where_it_builds(tmp_path, capsys):
  _checkpoint(tmp_path / "model")
  data_dir = tmp_path / "fresh"
  evaluate_checkpoint(tmp_path / "model", "digits_local", data_dir=str(data_dir),
                      split="validation", batch_size=256, log=lambda m: None)
  out = capsys.readouterr().out
  assert f"digits_local: not built in {data_dir}; building it there" in out
  assert (data_dir / "digits_local").is_dir()


def test_headless_checkpoint_is_refused_before_any_data(tmp_path, empty_default_dir):
  _checkpoint(tmp_path / "model", num_classes=None)
  with pytest.raises(ConfigError, match="the model has no classification head"):
    evaluate_checkpoint(tmp_path / "model", "digits_local", log=lambda m: None)
  assert list(empty_default_dir.iterdir()) == []


def test_single_class_split_warns(tmp_path):
  _checkpoint(tmp_path / "model")
  np.savez(tmp_path / "sevens.npz", x=np.zeros((6, 8, 8), np.uint8), y=np.full(6, 7),
           class_names=list(sources.DIGIT_CLASSES))
  lines = []
  evaluate_checkpoint(tmp_path / "model", f"npz:{tmp_path / 'sevens.npz'}", split="all",
                      log=lines.append)
  assert any("holds only one class" in line for line in lines), lines


def test_workdir_without_flags_needs_a_dataset(tmp_path):
  _checkpoint(tmp_path / "model")
  with pytest.raises(ConfigError, match="not a run's workdir .*give --dataset"):
    evaluate_checkpoint(tmp_path / "model", log=lambda m: None)
  (tmp_path / "flags.json").write_text('{"dataset": 7}')
  with pytest.raises(ConfigError, match="dataset is 7; expected a string"):
    evaluate_checkpoint(tmp_path, log=lambda m: None)
