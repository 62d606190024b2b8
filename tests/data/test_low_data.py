"""The low-data regime's draw: N labelled examples per class, seeded, nested across N."""

import numpy as np
import pytest

from jaxpretrain.data import sources


def _labels(seed=0):
  rng = np.random.default_rng(seed)
  return rng.permutation(np.repeat(np.arange(7), rng.integers(120, 200, size=7)))


def test_per_class_subset_keeps_n_of_every_class_in_source_order():
  labels = _labels()
  idx = sources.per_class_subset(labels, 10, seed=3)
  assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), np.full(7, 10))
  np.testing.assert_array_equal(idx, sources.per_class_subset(labels, 10, seed=3))
  assert not np.array_equal(idx, sources.per_class_subset(labels, 10, seed=4))


def test_smaller_regime_is_inside_the_larger_one():
  labels = _labels(1)
  small, large = (sources.per_class_subset(labels, n, seed=0) for n in (10, 100))
  assert np.isin(small, large).all() and len(large) == 700


@pytest.mark.parametrize("n, match", [(0, "per_class=0"), (-1, "per_class=-1"),
                                      (2.5, "per_class=2.5"), (True, "per_class=True"),
                                      (500, "class 0 has 1\\d\\d training examples")])
def test_bad_per_class_names_the_value(n, match):
  with pytest.raises(ValueError, match=match):
    sources.per_class_subset(_labels(), n)


def _npz(tmp_path, per_class=(9, 14, 11)):
  rng = np.random.default_rng(0)
  labels = rng.permutation(np.repeat(np.arange(len(per_class)), per_class))
  images = rng.integers(0, 256, size=(len(labels), 8, 8), dtype=np.uint8)
  path = tmp_path / "small.npz"
  np.savez(path, image=images, label=labels)
  return f"npz:{path}", labels


def test_job_trains_on_n_per_class_of_its_training_part(tmp_path, capsys):
  from jaxpretrain.data import loaders
  from jaxpretrain.job import task

  spec, _ = _npz(tmp_path)
  full = task.load_data(task.DataOptions(dataset=spec, image_size=8, validation_fraction=0.2))
  low = task.load_data(task.DataOptions(dataset=spec, image_size=8, validation_fraction=0.2,
                                        train_per_class=3))
  assert "low-data regime: 3 labelled examples per class, 9 of" in capsys.readouterr().out
  labels = loaders.source_labels(low.train)
  np.testing.assert_array_equal(np.bincount(labels), [3, 3, 3])
  assert low.meta.num_examples == 9 and len(low.test) == len(full.test)
  # The rows are the full training part's own, at the draw's rows (no validation leak).
  rows = sources.per_class_subset(loaders.source_labels(full.train), 3, seed=task.LOW_DATA_SEED)
  for i, row in enumerate(rows):
    np.testing.assert_array_equal(low.train[i]["image"], full.train[int(row)]["image"])
  val = {full.validation[i]["image"].tobytes() for i in range(len(full.validation))}
  assert not any(low.train[i]["image"].tobytes() in val for i in range(len(low.train)))


def test_job_refuses_more_per_class_than_a_class_has(tmp_path):
  from jaxpretrain.job import task
  from jaxpretrain.job.config import ConfigError

  spec, _ = _npz(tmp_path)
  with pytest.raises(ConfigError, match=(r"^--train_per_class=9: class 0 has [1-8] training "
                                         "examples, fewer than the 9 ")):
    task.load_data(task.DataOptions(dataset=spec, image_size=8, validation_fraction=0.2,
                                    train_per_class=9))


def test_run_made_before_the_field_existed_still_resumes():
  """flags.json of an older run has no train_per_class: its default (all data) is assumed."""
  from jaxpretrain.job import config as config_lib

  config = config_lib.JobConfig(workdir="/tmp/w", dataset="digits_local", steps=3)
  saved = config_lib.resume_key(config, resolve=False)
  del saved["train_per_class"]
  assert config_lib.key_differences(saved, config, resolve=False) == {}
  low = config_lib.JobConfig(workdir="/tmp/w", dataset="digits_local", steps=3,
                             train_per_class=10)
  assert config_lib.key_differences(saved, low, resolve=False) == {
      "train_per_class": (0, 10)}
