"""`jaxpretrain COMMAND [--flags]`: one console script for every main, beside `python -m`.

    jaxpretrain finetune --init_checkpoint=minilm --dataset=tweets_sentiment --steps=300 ...
    jaxpretrain evaluate --checkpoint=workdirs/minilm_tweets/model ...
    jaxpretrain COMMAND --help        # that command's own flags

`jaxpretrain X ...` runs exactly what `python -m MODULE ...` runs (MODULE from COMMANDS).
"""

from __future__ import annotations

import runpy
import sys

COMMANDS = {  # command -> (module, what it does)
    "finetune": ("jaxpretrain.finetune", "fine-tune a checkpoint (or train from scratch)"),
    "pretrain": ("jaxpretrain.pretrain", "supervised or masked-LM pretraining"),
    "evaluate": ("jaxpretrain.evaluate", "evaluate a checkpoint or a run's workdir"),
    "select": ("jaxpretrain.select", "rank candidate checkpoints for a dataset"),
    "predict": ("jaxpretrain.predict", "classify images or texts with a checkpoint"),
    "convert": ("ports.convert", "convert torchvision / Hugging Face weights"),
    "export": ("ports.export", "export a checkpoint back to torch / Hugging Face files"),
}


def usage() -> str:
  width = max(map(len, COMMANDS))
  return ("usage: jaxpretrain COMMAND [--flags]   (jaxpretrain COMMAND --help: its flags)\n\n"
          + "".join(f"  {c:{width}}  {what}\n" for c, (_, what) in COMMANDS.items()))


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv if argv is None else argv
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    sys.stdout.write(usage())
    return 0 if len(argv) >= 2 else 2
  command = argv[1]
  if command not in COMMANDS:
    print(f"error: unknown command {command!r}; allowed: {', '.join(COMMANDS)}",
          file=sys.stderr)
    return 2
  module = COMMANDS[command][0]
  sys.argv = [f"jaxpretrain {command}", *argv[2:]]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
