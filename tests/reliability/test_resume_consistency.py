"""Resuming only what was started: the flags that change the result and the dataset's
contents are stored inside every checkpoint, so a deleted flags.json, a changed --lr or
--model, or a replaced dataset file is refused in one line naming them, before anything is
written. A relative, symlinked or moved --workdir (and a relative dataset path to the same
file) is the same run and resumes; --parallel may change, with a message saying the result
then agrees only to float tolerance.

In-process: one run crashed after step 8 (checkpoint 5), copied for each case.
"""

import dataclasses
import json
import pathlib
import re
import shutil

import numpy as np
import pytest

from jaxpretrain.job import ConfigError, finetune
from jaxpretrain.job.loop import Hooks
from tests.crash import Crash, crash_after
from tests.reliability.conftest import make_images, train_records


@pytest.fixture
def crashed(tiny_config, tmp_path):
  """(config, workdir) of a run on its own dataset file, crashed after step 8."""
  data = tmp_path / "data" / "tiny.npz"
  data.parent.mkdir()
  images, labels = make_images(160)
  np.savez(data, image=images, label=labels)
  config = tiny_config(dataset=f"npz:{data}", steps=12, checkpoint_every=5)
  with pytest.raises(Crash):
    finetune(config, hooks=Hooks(after_step=crash_after(8)))
  return config, pathlib.Path(config.workdir)


def test_changed_flags_are_refused_without_flags_json(crashed):
  config, wd = crashed
  (wd / "flags.json").unlink()
  before = sorted(p.name for p in wd.iterdir())
  for change, shown in ((dict(lr=0.02), r"--lr: 0\.01 -> 0\.02"),
                        (dict(model="resnet18"), r"--model: 'resnet_tiny' -> 'resnet18'"),
                        (dict(seed=3, label_smoothing=0.1),
                         r"--label_smoothing: 0\.0 -> 0\.1, --seed: 0 -> 3")):
    with pytest.raises(ConfigError) as e:
      finetune(dataclasses.replace(config, **change))
    message = str(e.value)
    assert message.startswith(f"--workdir={str(wd)!r} holds a run with other flags ("), message
    assert re.search(shown + "; stored in checkpoint 5\\); rerun with the same flags", message)
    assert "\n" not in message
  assert sorted(p.name for p in wd.iterdir()) == before  # nothing written, flags.json too


def test_replaced_dataset_file_is_refused(crashed):
  config, wd = crashed
  data = pathlib.Path(config.dataset.partition(":")[2])
  original = data.read_bytes()
  images, labels = make_images(160, seed=1)  # same shape and size, other contents
  np.savez(data, image=images, label=labels)
  with pytest.raises(ConfigError) as e:
    finetune(config)
  message = str(e.value)
  assert message.startswith(f"--dataset={config.dataset!r}: the data changed since checkpoint"
                            " 5 was written (sha256: '"), message
  assert message.endswith("restore the original data to resume, or choose another --workdir")
  assert "\n" not in message and json.loads((wd / "flags.json").read_text())["steps"] == 12
  data.write_bytes(original)  # the same bytes again (a new mtime): resumes
  assert finetune(config).resumed_from == 5


def test_moved_symlinked_relative_workdir_resumes(crashed, monkeypatch):
  """The workdir moved and reached through a relative symlink, and the dataset given by a
  relative path: the same run, resumed from checkpoint 5."""
  config, wd = crashed
  root = wd.parent
  moved = root / "moved" / "run"
  moved.parent.mkdir()
  shutil.move(wd, moved)
  (root / "link").symlink_to(moved)
  monkeypatch.chdir(root)
  data = pathlib.Path(config.dataset.partition(":")[2]).relative_to(root)
  result = finetune(dataclasses.replace(config, workdir="link", dataset=f"npz:{data}"))
  assert result.resumed_from == 5 and result.steps == 12
  assert [r["step"] for r in train_records(moved)] == list(range(1, 13))


def test_device_flags_are_allowed_and_said_to_change_results(tmp_path):
  """--parallel and --cpu_devices change the reduction order (a resume with other
  --cpu_devices moved parameters by 1.4e-6): allowed on resume, with a message; no other
  flag is treated so."""
  from jaxpretrain.job import config as config_lib
  from jaxpretrain.job import loop, workdir

  base = config_lib.JobConfig(workdir=str(tmp_path), dataset="npz:x.npz", model="resnet_tiny",
                              steps=5)
  (tmp_path / "flags.json").write_text(json.dumps(base.to_json()))
  lines = []
  loop._check_resume(workdir.Workdir(tmp_path),
                     dataclasses.replace(base, parallel="pmap", cpu_devices=8, log_every=3),
                     lines.append)
  assert lines == ["resuming with --cpu_devices: 0 -> 8, --parallel: 'jit' -> 'pmap': allowed, "
                   "but from here the result agrees with an uninterrupted run to float "
                   "tolerance (~1e-6), not bit for bit"]
  assert config_lib.FLOAT_TOLERANCE == ("parallel", "cpu_devices", "coordinator_address",
                                        "num_processes", "process_id")
