"""Training jobs: flags and their validation, the training loop, evaluation and reports.

Library entry points (what the absl mains call, and what other tools can call directly):

    from jaxpretrain.job import JobConfig, finetune, pretrain, evaluate_checkpoint
    result = finetune(JobConfig(workdir="workdirs/x", dataset="tweets_sentiment",
                                init_checkpoint="minilm", steps=300, lr=5e-5, max_len=64))
    result.metrics["accuracy"], result.metrics["macro_f1"], result.report, result.model_dir

`finetune` and `pretrain` are the same loop (`job.loop.run`); pretrain also allows
`task="mlm"`. Both resume from the workdir's checkpoint when called again with the same config.
"""

from jaxpretrain.job.config import ConfigError, JobConfig, validate
from jaxpretrain.job.evaluation import evaluate_checkpoint
from jaxpretrain.job.loop import Hooks, NonFiniteError, Result, Stopped, run
from jaxpretrain.job.workdir import WorkdirError


def finetune(config: JobConfig, **kwargs) -> Result:
  """Fine-tunes (or trains from scratch) a classifier; see `job.loop.run`."""
  if config.task != "classification":
    raise ConfigError(f"--task={config.task!r}; finetune allows: classification "
                      "(masked-LM is jaxpretrain.pretrain)")
  return run(config, **kwargs)


def pretrain(config: JobConfig, **kwargs) -> Result:
  """Supervised or masked-LM pretraining; exports a checkpoint folder finetune accepts."""
  return run(config, **kwargs)


__all__ = [
    "ConfigError", "Hooks", "JobConfig", "NonFiniteError", "Result", "Stopped", "WorkdirError",
    "evaluate_checkpoint", "finetune", "pretrain", "run", "validate",
]
