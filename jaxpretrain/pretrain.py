r"""Pretrain: supervised classification (ResNet, ViT, BERT) or masked-LM (BERT, --task=mlm).

  python -m jaxpretrain.pretrain --flagfile=experiments/resnet_fmnist_pretrain.flags
  python -m jaxpretrain.pretrain --task=mlm --model=minilm_l6 --dataset=tweets_sentiment \
      --steps=1000 --workdir=workdirs/mlm

From scratch (--model) or continued from a checkpoint (--init_checkpoint). The final model is
written as a checkpoint folder (<workdir>/model, or --export_dir) that
`python -m jaxpretrain.finetune --init_checkpoint=...` accepts.
"""

from jaxpretrain import console

console.quiet_logs()  # before TF/TFDS/orbax are imported

from jaxpretrain.job import cli  # noqa: E402
from jaxpretrain.job import flags as job_flags  # noqa: E402

job_flags.define_train_flags(pretrain=True)


def main(argv: list[str]) -> int:
  return cli.run_main(argv)


def run() -> None:
  """The console script (`jaxpretrain pretrain`)."""
  console.run_app(main, __doc__)


if __name__ == "__main__":
  run()
