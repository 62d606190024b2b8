r"""Fine-tune a pretrained checkpoint (or train from scratch) on a classification dataset.

  python -m jaxpretrain.finetune --flagfile=experiments/minilm_tweets.flags
  python -m jaxpretrain.finetune --init_checkpoint=minilm --dataset=tweets_sentiment \
      --steps=300 --lr=5e-5 --max_len=64 --workdir=workdirs/minilm_tweets
  python -m jaxpretrain.finetune --help          # its flags, by group

Rerunning the same command resumes from the workdir's checkpoint. The logic lives in
jaxpretrain/job (callable as `jaxpretrain.job.finetune(JobConfig(...))`).
"""

from jaxpretrain import console

console.quiet_logs()  # before TF/TFDS/orbax are imported

from jaxpretrain.job import cli  # noqa: E402
from jaxpretrain.job import flags as job_flags  # noqa: E402

job_flags.define_train_flags(pretrain=False)


def main(argv: list[str]) -> int:
  return cli.run_main(argv)


def run() -> None:
  """The console script (`jaxpretrain finetune`)."""
  console.run_app(main, __doc__)


if __name__ == "__main__":
  run()
