"""Flag validation: every bad value or combination fails before any work, naming the flag."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from jaxpretrain import console
from jaxpretrain.job import config as config_lib
from jaxpretrain.job import flags as flags_lib
from jaxpretrain.job import loop, task
from jaxpretrain.job.config import ConfigError, JobConfig

BASE = JobConfig(workdir="/tmp/unused", dataset="digits_local", model="resnet_tiny", steps=10)
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("overrides, flag", [
    (dict(epochs=1.0), "--epochs"),                       # with --steps
    (dict(steps=None), "--epochs or --steps"),             # neither
    (dict(steps=0), "--steps"),
    (dict(optimizer="lamb"), "--optimizer"),
    (dict(schedule="step"), "--schedule"),
    (dict(parallel="dp"), "--parallel"),
    (dict(dtype="float16"), "--dtype"),
    (dict(on_nan="ignore"), "--on_nan"),
    (dict(on_nan="skip"), "--checkpoint_every"),           # skip needs checkpoints
    (dict(lr=0.0), "--lr"),
    (dict(batch_size=0), "--batch_size"),
    (dict(warmup=10), "--warmup"),                         # not below --steps for cosine
    (dict(label_smoothing=1.0), "--label_smoothing"),
    (dict(num_classes=1), "--num_classes"),
    (dict(freeze=("conv1/(",)), "--freeze"),
    (dict(lr_mult=(("fc/.*", -1.0),)), "--lr_mult"),
    (dict(model=None), "--init_checkpoint"),               # neither model nor checkpoint
    (dict(init_checkpoint="minilm"), "--model"),           # both (not a weights file)
    (dict(workdir=""), "--workdir"),
    (dict(dataset=""), "--dataset"),
    (dict(process_id=0), "--coordinator_address"),         # partial distributed flags
])
def test_bad_values_name_the_flag(overrides, flag):
  with pytest.raises(ConfigError, match=flag.replace("-", r"\-")):
    config_lib.validate(dataclasses.replace(BASE, **overrides))


def test_lr_mult_format():
  assert config_lib.parse_lr_mults(["a/.*=0.1", "x=y=2"]) == (("a/.*", 0.1), ("x=y", 2.0))
  with pytest.raises(ConfigError, match="--lr_mult='encoder'"):
    config_lib.parse_lr_mults(["encoder"])


def test_batch_not_divisible_by_devices():
  with pytest.raises(ConfigError, match=r"--batch_size=12.*multiple of the device count 8"):
    config_lib.check_devices(dataclasses.replace(BASE, batch_size=12), 8, 8, 1)


def test_regexes_must_match_a_parameter():
  paths = ["conv1/kernel", "fc/kernel", "fc/bias"]
  with pytest.raises(ConfigError, match=r"--freeze regex 'encoder/\.\*' matches no parameter"):
    config_lib.check_param_regexes(dataclasses.replace(BASE, freeze=("encoder/.*",)), paths)
  with pytest.raises(ConfigError, match="--lr_mult regex 'head' matches no parameter"):
    config_lib.check_param_regexes(dataclasses.replace(BASE, lr_mult=(("head", 0.1),)), paths)
  with pytest.raises(ConfigError, match="--freeze.*leave some parameter trainable"):
    config_lib.check_param_regexes(dataclasses.replace(BASE, freeze=(".*",)), paths)


def test_freeze_typo_fails_before_the_dataset_is_built(tmp_path):
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  config = dataclasses.replace(BASE, workdir=str(tmp_path / "run"), data_dir=str(data_dir),
                               freeze=("layer9_0/.*",))
  with pytest.raises(ConfigError, match="--freeze regex 'layer9_0/.*' matches no parameter"):
    loop.run(config)
  assert not any(data_dir.iterdir())  # nothing built


def test_resume_with_other_flags_refused(tmp_path):
  wd = tmp_path / "run"
  wd.mkdir()
  (wd / "flags.json").write_text(
      __import__("json").dumps(dataclasses.replace(BASE, workdir=str(wd), lr=0.1).to_json()))
  config = dataclasses.replace(BASE, workdir=str(wd), lr=0.2, log_every=7)
  with pytest.raises(ConfigError, match=r"--lr: 0\.1 -> 0\.2"):
    loop._check_resume(loop.workdir_lib.Workdir(wd), config)


def test_unknown_init_checkpoint(tmp_path):
  with pytest.raises(ConfigError, match="--init_checkpoint='/nope'"):
    task.resolve_checkpoint("/nope", tmp_path, None)


def test_flagfile_round_trip():
  config = dataclasses.replace(BASE, freeze=("a/.*",), lr_mult=(("b/.*", 0.5),), flip=True,
                               model_kwargs={"width": 8})
  text = flags_lib.flagfile_text(config)
  assert "--freeze=a/.*\n" in text and "--lr_mult=b/.*=0.5\n" in text and "--flip\n" in text
  assert "--task" not in text  # finetune has no --task


# Every field away from its default (not a valid run: --epochs with --steps, --task=mlm with
# --num_classes); a field added to JobConfig gets a value here.
EVERY_FIELD = JobConfig(
    workdir="/w", dataset="csv:/d.csv", init_checkpoint="/ckpt", model="resnet18",
    model_kwargs={"width": 8, "names": ["a", "b"]}, num_classes=3, reset_head=True,
    data_dir="/data", max_len=64, image_size=48, crop_padding=4, flip=True,
    validation_fraction=0.2, train_per_class=10, task="mlm", mask_rate=0.2, batch_size=8,
    epochs=1.5, steps=7,
    optimizer="sgd", lr=0.05, schedule="linear", warmup=2, weight_decay=1e-4, momentum=0.8,
    clip_norm=1.0, freeze=("a/.*", "b"), lr_mult=(("c/.*", 0.5), ("x=y", 2.0)),
    label_smoothing=0.1, seed=3, dtype="bfloat16", parallel="fsdp", cpu_devices=2,
    eval_every=5, log_every=3, checkpoint_every=4, keep_checkpoints=3, on_nan="skip",
    max_skips=2, progress="log", export_dir="/out", coordinator_address="host:1234",
    num_processes=2, process_id=1)
DEFAULTS = JobConfig(workdir=None, dataset=None)  # the two fields without a default


def _flag_values(pretrain, argv=()):
  fv = flags.FlagValues()
  flags_lib.define_train_flags(pretrain=pretrain, flag_values=fv)
  fv(["prog", *argv])
  return fv


@pytest.mark.parametrize("pretrain", [False, True])
def test_every_field_is_a_flag_with_help_and_group(pretrain):
  fv = _flag_values(pretrain)
  by_module = fv.flags_by_module_dict()
  for field in dataclasses.fields(JobConfig):
    spec = field.metadata["flag"]
    assert spec.help and spec.group in config_lib.GROUPS, field.name
    if spec.pretrain_only and not pretrain:
      assert field.name not in fv
      continue
    assert fv[field.name] in by_module[console.GROUP_PREFIX + spec.group], field.name
    assert spec.help in fv[field.name].help  # absl adds an enum's <a|b>, a list's note
  # The defaults agree: no flag given is the dataclass's defaults.
  assert flags_lib.config_from_flags(fv, validate=False) == DEFAULTS


def test_allowed_values_written_once():
  from jaxpretrain.train import parallel, step  # noqa: PLC0415 -- JAX

  assert parallel.KINDS is config_lib.PARALLEL
  assert tuple(step.DTYPES) == config_lib.DTYPES
  choices = {f.name: f.metadata["flag"].choices for f in dataclasses.fields(JobConfig)}
  assert choices["progress"] is config_lib.PROGRESS and choices["dtype"] is config_lib.DTYPES
  with pytest.raises(ValueError, match="progress mode 'fancy'"):
    loop.report_lib.Progress(0, 1, "fancy")


def test_flagfile_round_trips_every_field():
  for field in dataclasses.fields(JobConfig):
    assert getattr(EVERY_FIELD, field.name) != getattr(DEFAULTS, field.name), field.name
  text = flags_lib.flagfile_text(EVERY_FIELD)
  fv = _flag_values(True, text.splitlines())
  assert flags_lib.config_from_flags(fv, validate=False) == EVERY_FIELD
  # A classification run's flagfile is finetune's: no --task, --mask_rate.
  classify = dataclasses.replace(EVERY_FIELD, task="classification", mask_rate=0.15)
  text = flags_lib.flagfile_text(classify)
  assert "--task" not in text and "--mask_rate" not in text
  fv = _flag_values(False, text.splitlines())
  assert flags_lib.config_from_flags(fv, validate=False) == classify


def _cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "jaxpretrain.finetune", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, env=env)


def test_cli_rejects_unknown_and_conflicting_flags(tmp_path):
  out = _cli("--bogus_flag=1", f"--workdir={tmp_path}")
  assert out.returncode != 0 and "bogus_flag" in out.stderr
  out = _cli("--model=resnet_tiny", "--dataset=digits_local", "--epochs=1", "--steps=5",
             f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 2, out.stderr
  assert "--epochs" in out.stderr and "--steps" in out.stderr
  assert not (tmp_path / "w").exists()  # failed before touching the workdir
  out = _cli("--model=resnet_tiny", "--dataset=digits_local", "--steps=5", "--optimizer=lamb",
             f"--workdir={tmp_path / 'w'}")
  assert out.returncode != 0 and "optimizer" in out.stderr and "adamw" in out.stderr


def test_epochs_to_steps():
  config = dataclasses.replace(BASE, steps=None, epochs=0.5, batch_size=16, warmup=0)
  assert config_lib.total_steps(config, 100) == 4  # ceil(0.5 * 100 / 16)


def _spec(family, kwargs):
  name = {"resnet": "resnet18", "bert": "bert", "vit": "vit"}[family]
  return task.ModelSpec(name, dict(kwargs), family, pathlib.Path("/ckpt"), [], False, {}, {})


@pytest.mark.parametrize("family, kwargs, overrides, new_head, dont_load", [
    # torchvision resnet18 (1000 classes) -> 10: a new fc.
    ("resnet", {"num_classes": 1000}, {}, True, ["params/fc/.*"]),
    # Same number of classes: the checkpoint's head is kept, unless --reset_head.
    ("resnet", {"num_classes": 10}, {}, False, []),
    ("resnet", {"num_classes": 10}, {"reset_head": True}, True, ["params/fc/.*"]),
    # A Hugging Face BertModel without pooler (sentence-transformers): head and pooler are new.
    ("bert", {"head": None, "pooler": False}, {}, True,
     ["params/classifier/.*", "params/mlm_.*", "params/pooler/.*"]),
    # A masked-LM checkpoint continued as masked-LM: its head is kept, no classifier loaded.
    ("bert", {"head": "mlm", "pooler": True}, {"task": "mlm", "num_classes": None}, False,
     ["params/classifier/.*"]),
    # A 10-way BERT classifier fine-tuned on 10 classes: keep it, ignore an MLM head.
    ("bert", {"head": "classification", "num_labels": 10, "pooler": True}, {}, False,
     ["params/mlm_.*"]),
])
def test_head_replacement(family, kwargs, overrides, new_head, dont_load):
  config = dataclasses.replace(BASE, **overrides)
  spec = task.with_head(_spec(family, kwargs), config, None if config.task == "mlm" else 10)
  assert (spec.new_head, spec.dont_load) == (new_head, dont_load)
