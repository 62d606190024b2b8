r"""Fine-tune a pretrained checkpoint (or train from scratch) on a classification dataset.

  python -m jaxpretrain.finetune --flagfile=experiments/minilm_tweets.flags
  python -m jaxpretrain.finetune --init_checkpoint=minilm --dataset=tweets_sentiment \
      --steps=300 --lr=5e-5 --max_len=64 --workdir=workdirs/minilm_tweets
  python -m jaxpretrain.finetune --helpfull      # every flag, by group

Rerunning the same command resumes from the workdir's checkpoint. The logic lives in
jaxpretrain/job (callable as `jaxpretrain.job.finetune(JobConfig(...))`).
"""

from absl import app

from jaxpretrain.job import cli
from jaxpretrain.job import flags as job_flags

job_flags.define_train_flags(pretrain=False)


def main(argv: list[str]) -> int:
  return cli.run_main(argv)


if __name__ == "__main__":
  app.run(main)
