"""Every flag of `python -m jaxpretrain.finetune` is validated at start-up: a table of bad
values, each rejected before any training (no checkpoint, no metrics) with a one-line error
that names the flag and the bad value. The table must cover every flag the main defines.

The cases go through the real main body (`job.cli.train_main` after absl parses argv), in this
process: a subprocess per case would cost ~3 s of imports each. absl itself rejects values of
the wrong type or outside an enum (IllegalFlagValueError naming `--flag=value`); everything
else is a ConfigError printed as `error: --flag=...` with exit status 2.
"""

import jax
import pytest
from absl import flags

from jaxpretrain.job import cli
from jaxpretrain.job import flags as flags_lib

FLAGS = flags.FLAGS
if "workdir" not in FLAGS:  # as jaxpretrain/finetune.py does at import
  flags_lib.define_train_flags(pretrain=False)

NOT_A_DIR = "/etc/hostname/sub"  # a path under a regular file: no folder can be made there
DEVICES = jax.device_count()  # 8 fake CPU devices under tests/conftest.py
ON_CPU = jax.devices()[0].platform == "cpu"

# (flags changed from the valid base command (None removes one), what the error must say)
CASES = [
    # Rejected by absl while parsing: wrong type or not one of an enum's values.
    ({"steps": "ten"}, "--steps=ten"),
    ({"batch_size": "1.5"}, "--batch_size=1.5"),
    ({"lr": "fast"}, "--lr=fast"),
    ({"epochs": "x", "steps": None}, "--epochs=x"),
    ({"image_size": "big"}, "--image_size=big"),
    ({"num_classes": "two"}, "--num_classes=two"),
    ({"seed": "s"}, "--seed=s"),
    ({"flip": "maybe"}, "--flip=maybe"),
    ({"reset_head": "2"}, "--reset_head=2"),
    ({"optimizer": "lamb"}, "--optimizer=lamb"),
    ({"schedule": "step"}, "--schedule=step"),
    ({"dtype": "float16"}, "--dtype=float16"),
    ({"parallel": "dp"}, "--parallel=dp"),
    ({"on_nan": "ignore"}, "--on_nan=ignore"),
    ({"progress": "fancy"}, "--progress=fancy"),
    ({"num_processes": "many"}, "--num_processes=many"),
    ({"process_id": "first"}, "--process_id=first"),
    # Rejected by config.validate before the workdir is touched.
    ({"workdir": ""}, "--workdir=''"),
    ({"dataset": ""}, "--dataset=''"),
    ({"model_kwargs": "{"}, "--model_kwargs='{'"),
    ({"model_kwargs": "[1]"}, "--model_kwargs=[1]"),
    ({"num_classes": "1"}, "--num_classes=1"),
    ({"batch_size": "0"}, "--batch_size=0"),
    ({"batch_size": "-8"}, "--batch_size=-8"),
    ({"max_len": "1"}, "--max_len=1"),
    ({"image_size": "4"}, "--image_size=4"),
    ({"crop_padding": "-1"}, "--crop_padding=-1"),
    ({"epochs": "1"}, "--epochs or --steps"),  # both
    ({"steps": None}, "--epochs or --steps"),  # neither
    ({"epochs": "0", "steps": None}, "--epochs=0"),
    ({"epochs": "-2", "steps": None}, "--epochs=-2"),
    ({"epochs": "nan", "steps": None}, "--epochs=nan"),
    ({"epochs": "inf", "steps": None}, "--epochs=inf"),
    ({"steps": "0"}, "--steps=0"),
    ({"steps": "-3"}, "--steps=-3"),
    ({"lr": "0"}, "--lr=0.0"),
    ({"lr": "-0.1"}, "--lr=-0.1"),
    ({"lr": "nan"}, "--lr=nan"),
    ({"lr": "inf"}, "--lr=inf"),
    ({"warmup": "-1"}, "--warmup=-1"),
    ({"warmup": "10"}, "--warmup=10"),  # not below --steps=10 with a decaying schedule
    ({"weight_decay": "-0.1"}, "--weight_decay=-0.1"),
    ({"weight_decay": "nan"}, "--weight_decay=nan"),
    ({"momentum": "1"}, "--momentum=1.0"),
    ({"momentum": "-0.5"}, "--momentum=-0.5"),
    ({"clip_norm": "0"}, "--clip_norm=0.0"),
    ({"clip_norm": "-1"}, "--clip_norm=-1.0"),
    ({"label_smoothing": "1"}, "--label_smoothing=1.0"),
    ({"label_smoothing": "-0.1"}, "--label_smoothing=-0.1"),
    ({"validation_fraction": "1"}, "--validation_fraction=1.0"),
    ({"validation_fraction": "-0.1"}, "--validation_fraction=-0.1"),
    ({"train_per_class": "-1"}, "--train_per_class=-1"),
    ({"freeze": "conv1/("}, "--freeze='conv1/('"),
    ({"lr_mult": "fc"}, "--lr_mult='fc'"),
    ({"lr_mult": "fc/.*=abc"}, "--lr_mult='fc/.*=abc'"),
    ({"lr_mult": "fc/.*=-1"}, "--lr_mult='fc/.*=-1.0'"),
    ({"lr_mult": "fc/(=0.1"}, "--lr_mult='fc/('"),
    ({"seed": "-1"}, "--seed=-1"),
    ({"log_every": "0"}, "--log_every=0"),
    ({"eval_every": "-1"}, "--eval_every=-1"),
    ({"checkpoint_every": "-1"}, "--checkpoint_every=-1"),
    ({"keep_checkpoints": "0"}, "--keep_checkpoints=0"),
    ({"max_skips": "-1"}, "--max_skips=-1"),
    ({"cpu_devices": "-1"}, "--cpu_devices=-1"),
    ({"on_nan": "skip", "checkpoint_every": "0"}, "--checkpoint_every > 0"),
    ({"model": None}, "give --init_checkpoint"),
    ({"init_checkpoint": "minilm"}, "--model='resnet_tiny' with --init_checkpoint='minilm'"),
    ({"coordinator_address": "localhost:1234"}, "--coordinator_address"),
    ({"num_processes": "2"}, "--num_processes"),
    ({"coordinator_address": "h:1", "num_processes": "2", "process_id": "2"},
     "--process_id=2"),
    # Rejected at start-up, once the devices, the model or the data are known (still before
    # any step is compiled or any checkpoint written).
    pytest.param({"cpu_devices": str(DEVICES + 1)}, f"--cpu_devices={DEVICES + 1}",
                 marks=pytest.mark.skipif(not ON_CPU, reason="CPU device count"),
                 id="cpu_devices after JAX started"),
    pytest.param({"batch_size": str(DEVICES + 1)}, f"--batch_size={DEVICES + 1}",
                 marks=pytest.mark.skipif(DEVICES == 1, reason="one device divides any batch"),
                 id="batch_size not a multiple of the device count"),
    ({"model": "resnet999"}, "--model='resnet999'"),
    ({"model_kwargs": '{"bogus": 1}'}, "--model_kwargs"),
    ({"init_checkpoint": "/nonexistent/ckpt", "model": None},
     "--init_checkpoint='/nonexistent/ckpt'"),
    ({"dataset": "xyz:data"}, "--dataset='xyz:data'"),
    ({"dataset": "npz:/nonexistent.npz"}, "--dataset='npz:/nonexistent.npz'"),
    ({"dataset": "digits_local", "data_dir": NOT_A_DIR}, NOT_A_DIR),
    ({"num_classes": "3"}, "--num_classes=3"),  # fewer than the dataset's 4 classes
    ({"freeze": "encoder/.*"}, "--freeze regex 'encoder/.*'"),
    ({"freeze": ".*"}, "--freeze=['.*']"),
    ({"lr_mult": "head/.*=0.1"}, "--lr_mult regex 'head/.*'"),
    ({"export_dir": NOT_A_DIR}, f"--export_dir='{NOT_A_DIR}'"),
]


@pytest.fixture(autouse=True)
def _fresh_flags():
  """Each case parses its own argv; other tests find FLAGS as they left it."""
  was_parsed = FLAGS.is_parsed()
  FLAGS.unparse_flags()
  yield
  FLAGS.unparse_flags()
  if was_parsed:
    FLAGS.mark_as_parsed()


def _argv(npz_dataset, tmp_path, changes):
  base = {"model": "resnet_tiny", "dataset": npz_dataset, "image_size": "8", "steps": "10",
          "batch_size": "8", "workdir": str(tmp_path / "run"), "progress": "log"}
  base.update(changes)
  return ["finetune"] + [f"--{k}={v}" for k, v in base.items() if v is not None]


@pytest.mark.parametrize("changes, expected", CASES, ids=lambda c: (
    ",".join(f"{k}={v}" for k, v in c.items()) if isinstance(c, dict) else ""))
def test_bad_value_fails_at_start_up_naming_the_flag(changes, expected, npz_dataset, tmp_path,
                                                     capsys):
  argv = _argv(npz_dataset, tmp_path, changes)
  try:
    FLAGS(argv)
  except flags.IllegalFlagValueError as e:
    assert expected in str(e), str(e)
    return
  status = cli.train_main(["finetune"])
  err = capsys.readouterr().err
  assert status == 2, err[-2000:]
  assert err.startswith("error: ") and err.count("\n") == 1, err[-2000:]  # one line
  assert expected in err, err
  run = tmp_path / "run"
  assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_the_table_covers_every_flag():
  defined = {f.name for module, fl in FLAGS.flags_by_module_dict().items()
             if module.startswith("jaxpretrain.job:") for f in fl}
  cases = [c.values if hasattr(c, "values") else c for c in CASES]
  covered = {k for changes, _ in cases for k, v in changes.items() if v is not None}
  assert defined - covered == set(), f"flags without a bad-value case: {defined - covered}"
