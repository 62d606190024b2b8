"""absl flags of the training mains, and their translation into a `JobConfig`.

    define_train_flags(pretrain=False)   # in finetune.py / pretrain.py, at import
    config = config_from_flags()         # in main(): a validated JobConfig

Every flag is a `JobConfig` field (job/config.py): its name, default, help text, --help group
(model, data, optimization, run, distributed), allowed values and string form are read from
the field, so nothing here names a flag. Pretrain-only fields (--task, --mask_rate) are flags
of pretrain only.

Unknown flags are rejected by absl when parsing; bad values and combinations by
`config.validate` (both before any work).
"""

from __future__ import annotations

from absl import flags

from jaxpretrain.console import GROUP_PREFIX
from jaxpretrain.job import config as config_lib

FLAGS = flags.FLAGS


def define_train_flags(*, pretrain: bool = False,
                       flag_values: flags.FlagValues = FLAGS) -> None:
  """Registers the training flags (once per process; `pretrain` adds --task, --mask_rate)."""
  for name, spec, default in config_lib.flag_specs(pretrain=pretrain):
    kw = dict(module_name=GROUP_PREFIX + spec.group, flag_values=flag_values)
    if spec.kind == "enum":
      flags.DEFINE_enum(name, default, list(spec.choices), spec.help, **kw)
    else:
      getattr(flags, f"DEFINE_{spec.kind}")(name, default, spec.help, **kw)
    flags.declare_key_flag(name, flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = FLAGS, *,
                      validate: bool = True) -> config_lib.JobConfig:
  """The parsed flags as a JobConfig, validated unless told not to (ConfigError names a bad
  flag). A field without its flag (finetune's --task) keeps its default."""
  values = {}
  for name, spec, _ in config_lib.flag_specs(pretrain=True):
    if name in flag_values:
      value = flag_values[name].value
      values[name] = spec.parse(value) if spec.parse else value
  config = config_lib.JobConfig(**values)
  if validate:
    config_lib.validate(config)
  return config


def flagfile_text(config: config_lib.JobConfig) -> str:
  """The config as a flagfile (`--name=value` lines) that reproduces the run."""
  lines = []
  for name, spec, _ in config_lib.flag_specs(pretrain=True):
    value = getattr(config, name)
    if value is None or (spec.pretrain_only and config.task == "classification"):
      continue  # unset; and a classification run's flagfile serves finetune (no --task)
    text = spec.unparse(value) if spec.unparse else value
    if spec.kind == "multi_string":
      lines += [f"--{name}={v}" for v in text]
    elif spec.kind == "bool":
      lines.append(f"--{name}" if value else f"--no{name}")
    else:
      lines.append(f"--{name}={text}")
  return "\n".join(lines) + "\n"
