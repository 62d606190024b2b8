r"""Evaluate a classifier checkpoint on a dataset split.

  python -m jaxpretrain.evaluate --checkpoint=workdirs/minilm_tweets
  python -m jaxpretrain.evaluate --checkpoint=out/model --dataset=csv:my.csv --split=all

A run's workdir (or its model/) is evaluated on the run's own dataset and --data_dir (its
flags.json) unless --dataset / --data_dir say otherwise; preprocessing is always the
checkpoint's unless --image_size / --max_len override it. An offline dataset that is not built
yet is built into the data dir after a line naming the folder. --split=all evaluates on every
example of a csv:/folder:/npz: dataset, unsplit (e.g. a file held out by hand).

Prints accuracy, top-5, macro-F1 and MCC; writes eval_<dataset>_<split>.md (metrics, per-class
precision/recall/F1/support with class names, confusion matrix) and .json next to the
checkpoint (or into --output_dir).

The dataset's label names are mapped onto the class names the checkpoint records, so a file
holding only some of the model's classes is scored correctly, with a row for every class of
the model; a label the model does not know stops with a one-line error naming it (exit 2).

Library logs (orbax, XLA, TFDS) stay off the console unless --verbosity is given; --help lists
these flags by purpose.
"""

import sys

from jaxpretrain import console

console.quiet_logs()  # before TF/TFDS/orbax are imported

from absl import flags  # noqa: E402

from jaxpretrain.job import evaluation  # noqa: E402
from jaxpretrain.job.config import ConfigError  # noqa: E402

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A checkpoint folder (finetune's <workdir>/model, ports.convert output) "
    "or a run's workdir.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Dataset name or folder:/csv:/npz: spec (csv:TRAIN.csv?test=TEST.csv&"
    "text=COLUMN&label=COLUMN); default: the run's, when --checkpoint is a run's.")
_SPLIT = flags.DEFINE_string(
    "split", "test", "Split to evaluate: train | validation | test | all (every example of a "
    "csv:/folder:/npz: dataset, unsplit); TFDS slices like test[:50%] for TFDS names.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir; default the run's, else "
                                "$TFDS_DATA_DIR or ~/tensorflow_datasets.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Evaluation batch size.", lower_bound=1)
_MAX_LEN = flags.DEFINE_integer("max_len", None, "Text: tokens per example; default the "
                                "checkpoint's.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Images: size; default the checkpoint's.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the markdown and JSON; "
                                  "default the checkpoint folder.")
# --help: the flags above, by purpose.
GROUPS = {
    "what to evaluate": ["checkpoint", "output_dir"],
    "data": ["dataset", "split", "data_dir", "batch_size", "max_len", "image_size"],
}


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    return 2
  console.after_flags()  # orbax, TFDS and XLA stay quiet unless --verbosity is given
  if console.missing_flags(_CHECKPOINT):
    return 2
  try:
    evaluation.evaluate_checkpoint(
        _CHECKPOINT.value, _DATASET.value, split=_SPLIT.value, data_dir=_DATA_DIR.value,
        batch_size=_BATCH_SIZE.value, max_len=_MAX_LEN.value, image_size=_IMAGE_SIZE.value,
        output_dir=_OUTPUT_DIR.value, progress=True)
  except (ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def run() -> None:
  """The console script (`jaxpretrain evaluate`)."""
  console.run_app(main, __doc__, GROUPS)


if __name__ == "__main__":
  run()
