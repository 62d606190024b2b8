"""Ranks candidate models for a target dataset: python -m jaxpretrain.select --flagfile=F.

    python -m jaxpretrain.select --candidates=minilm,random:minilm_l6 \
        --dataset=tweets_sentiment --max_examples=2000 --workdir=/tmp/select

Writes ranking.md, ranking.csv, scores.png and results.json to --workdir (see
`jaxpretrain.select.rank`). With --finetune_check, every candidate is also fine-tuned for
--finetune_steps on the train split (the project's fine-tuning job, a fresh head each), and
each score's ranking is compared with the ranking by test accuracy (Kendall's tau and
weighted tau).
"""

from __future__ import annotations

from absl import app, flags

from jaxpretrain.select import features, rank
from jaxpretrain.select.scores import SCORES

# Candidates and data.
_CANDIDATES = flags.DEFINE_list(
    "candidates", None, "Checkpoint folders, 'minilm' or 'random:MODEL', each optionally "
    "NAME=...; the name is shown in tables.", required=True)
_DATASET = flags.DEFINE_string("dataset", None, "Target dataset (load_dataset spec).",
                               required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR).")
_SPLIT = flags.DEFINE_string("split", "train", "Split the scores are computed on.")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", 2000, "Stratified, seeded subset of at most this many examples (0: all).",
    lower_bound=0)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (reports and caches).",
                               required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Subset draw and random-init seed.")

# Features and scores.
_SCORES = flags.DEFINE_list("scores", [], f"Scores to compute (empty: all); known: "
                            f"{sorted(SCORES)}.")
_POOLING = flags.DEFINE_enum("pooling", "pooled", features.POOLINGS,
                             "'pooled': aux['pooled']; 'mean': mean of the last hidden state "
                             "over the attention mask (text).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Extraction batch size.", lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Image size (0: the checkpoint's).",
                                   lower_bound=0)
_MAX_LEN = flags.DEFINE_integer("max_len", 128, "Tokens per text (at most the checkpoint's).",
                                lower_bound=2)

# Fine-tuning check.
_FINETUNE_CHECK = flags.DEFINE_bool("finetune_check", False,
                                    "Fine-tune every candidate and correlate scores with it.")
_FT_STEPS = flags.DEFINE_integer("finetune_steps", 200, "Fine-tuning steps per candidate.",
                                 lower_bound=1)
_FT_LR = flags.DEFINE_float("finetune_lr", 1e-3, "Fine-tuning peak learning rate.")
_FT_BATCH = flags.DEFINE_integer("finetune_batch_size", 64, "Fine-tuning batch size.",
                                 lower_bound=1)
_FT_OPTIMIZER = flags.DEFINE_enum("finetune_optimizer", "adamw", ["adamw", "sgd"],
                                   "Fine-tuning optimizer.")
_FT_SCHEDULE = flags.DEFINE_enum("finetune_schedule", "cosine", ["constant", "cosine", "linear"],
                                 "Fine-tuning learning-rate decay.")
_FT_WARMUP = flags.DEFINE_integer("finetune_warmup", 0, "Fine-tuning warmup steps.",
                                  lower_bound=0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; everything is a flag")
  rank.check_scores(_SCORES.value)
  rank.quiet_library_logs()
  finetune_fn, settings = None, None
  if _FINETUNE_CHECK.value:
    settings = dict(dataset=_DATASET.value, data_dir=_DATA_DIR.value, steps=_FT_STEPS.value,
                    learning_rate=_FT_LR.value, batch_size=_FT_BATCH.value,
                    optimizer=_FT_OPTIMIZER.value, schedule=_FT_SCHEDULE.value,
                    warmup=_FT_WARMUP.value, image_size=_IMAGE_SIZE.value or None,
                    max_len=_MAX_LEN.value, seed=_SEED.value)
    finetune_fn = rank.make_finetune_fn(workdir=_WORKDIR.value, **settings)
  rank.select_models(
      _CANDIDATES.value, dataset=_DATASET.value, workdir=_WORKDIR.value,
      data_dir=_DATA_DIR.value, split=_SPLIT.value, max_examples=_MAX_EXAMPLES.value or None,
      scores=_SCORES.value, pooling=_POOLING.value, batch_size=_BATCH_SIZE.value,
      image_size=_IMAGE_SIZE.value or None, max_len=_MAX_LEN.value, seed=_SEED.value,
      finetune_fn=finetune_fn, finetune_settings=settings)


if __name__ == "__main__":
  app.run(main)
