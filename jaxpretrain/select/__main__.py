r"""Ranks candidate models for a target dataset: python -m jaxpretrain.select --flagfile=F.

    python -m jaxpretrain.select --candidates=minilm,random:minilm_l6 \
        --dataset=tweets_sentiment --max_examples=2000 --workdir=/tmp/select

Writes ranking.md, ranking.csv, scores.png, pareto.png and results.json to --workdir (see
`jaxpretrain.select.rank`): each candidate's cost (parameters, FLOPs, latency, throughput,
peak memory on this device), its transferability scores, and the recommended candidate (the
best --recommend_by score within the --max_* budgets). A CLIPModel candidate (CLIP with its
text tower and tokenizer.json) also gets the zero_shot score, a baseline without training: its
accuracy classifying the examples from the prompts "a photo of a {label}" of the dataset's
class names, used as given (digit classes read "a photo of a 3"); other candidates show it as
n/a with why. With --finetune_check (or
--finetune_seeds > 1), every candidate is also fine-tuned --finetune_seeds times for
--finetune_steps on the train split (the project's fine-tuning job, a fresh head each), and
each score's ranking is compared with the ranking by mean test accuracy (Kendall's tau and
weighted tau with bootstrap intervals over seeds, and the score's regret).

Candidates are anything `finetune --init_checkpoint` takes (`jaxpretrain.api.resolve`): a
converted checkpoint folder, a run's workdir, a Hugging Face folder, a torchvision weights
file as FILE@ARCH (e.g. r18.pth@resnet18), 'minilm', plus 'random:MODEL'. Every candidate and
the dataset are checked (`features.check_candidates`, `loaders.check_spec`) before anything is
converted, extracted or compiled: a missing or unsupported one is one line, exit status 2.

The console shows select's own lines only: progress with an ETA on the feature extraction,
scoring and fine-tuning check, and at the end the ranking table (ranking.md) on stdout;
--verbosity=0 brings back the libraries' logs. --help lists these flags by purpose.

Exit status: 0 done; 1 no candidate could be scored (or one failed under --strict); 2 a bad
flag. Errors are one line.
"""

from __future__ import annotations

import pathlib
import sys

from jaxpretrain import console

console.quiet_logs()  # before TF/TFDS/orbax/JAX are imported

from absl import flags  # noqa: E402

from jaxpretrain.select import cost, features, rank  # noqa: E402
from jaxpretrain.select.rank import SCORE_NAMES  # noqa: E402

# Candidates and data.
_CANDIDATES = flags.DEFINE_list(
    "candidates", None, "Checkpoint folders, run workdirs, Hugging Face folders, FILE@ARCH "
    "torchvision files, 'minilm' or 'random:MODEL', each optionally NAME=...; the name is "
    "shown in tables.")
_DATASET = flags.DEFINE_string("dataset", None, "Target dataset (load_dataset spec).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR).")
_SPLIT = flags.DEFINE_string("split", "train", "Split the scores are computed on.")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", 2000, "Stratified, seeded subset of at most this many examples (0: all).",
    lower_bound=0)
_PER_CLASS = flags.DEFINE_integer(
    "train_per_class", 0, "The low-data regime: score and fine-tune on only this many "
    "labelled training examples per class, the draw finetune's --train_per_class makes "
    "(overrides --max_examples; needs --split=train). 0: off.", lower_bound=0)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (reports and caches).")
_SEED = flags.DEFINE_integer("seed", 0, "Subset draw, random-init, first fine-tuning and "
                             "bootstrap seed.")
_STRICT = flags.DEFINE_bool("strict", False, "Stop at the first candidate that fails to load, "
                            "measure, extract or fine-tune (default: report it, go on).")

# Features and scores.
_SCORES = flags.DEFINE_list("scores", [], f"Scores to compute (empty: all); known: "
                            f"{sorted(SCORE_NAMES)}.")
_RECOMMEND_BY = flags.DEFINE_string("recommend_by", None, "Score the recommendation maximizes "
                                    "(default: logme if computed, else the first score).")
_POOLING = flags.DEFINE_enum("pooling", "pooled", features.POOLINGS,
                             "'pooled': aux['pooled']; 'mean': mean of the last hidden state "
                             "over the attention mask (text).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Extraction batch size (also the batch "
                                   "the cost is measured at).", lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Image size (0: the checkpoint's).",
                                   lower_bound=0)
_MAX_LEN = flags.DEFINE_integer("max_len", 128, "Tokens per text (at most the checkpoint's).",
                                lower_bound=2)

# Cost and budgets.
_MEASURE_COST = flags.DEFINE_bool("measure_cost", True, "Measure parameters, FLOPs, latency, "
                                  "throughput and peak memory of each candidate.")
_COST_REPEATS = flags.DEFINE_integer("cost_repeats", cost.DEFAULT_REPEATS, "Timed calls per "
                                     "candidate (the median is reported).", lower_bound=1)
_COST_WARMUP = flags.DEFINE_integer("cost_warmup", cost.DEFAULT_WARMUP, "Untimed calls before "
                                    "them.", lower_bound=0)
_MAX_LATENCY_MS = flags.DEFINE_float("max_latency_ms", None, "Drop candidates slower than this "
                                     "per batch of --batch_size on this device.")
_MAX_PARAMS = flags.DEFINE_float("max_params", None, "Drop candidates with more parameters.")
_MAX_GFLOPS = flags.DEFINE_float("max_gflops", None, "Drop candidates with more GFLOPs per "
                                 "example.")

# Fine-tuning check.
_FINETUNE_CHECK = flags.DEFINE_bool("finetune_check", False,
                                    "Fine-tune every candidate and correlate scores with it.")
_FT_SEEDS = flags.DEFINE_integer("finetune_seeds", 1, "Fine-tuning runs per candidate (seeds "
                                 "--seed, --seed+1...); above 1 implies --finetune_check.",
                                 lower_bound=1)
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", rank.DEFAULT_BOOTSTRAP, "Bootstrap resamples "
                                  "over seeds for the tau intervals (0: none).", lower_bound=0)
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


# --help: the flags above, by purpose.
GROUPS = {
    "candidates and data": ["candidates", "dataset", "data_dir", "split", "max_examples",
                            "train_per_class", "workdir", "seed", "strict"],
    "features and scores": ["scores", "recommend_by", "pooling", "batch_size", "image_size",
                            "max_len"],
    "cost and budgets": ["measure_cost", "cost_repeats", "cost_warmup", "max_latency_ms",
                         "max_params", "max_gflops"],
    "fine-tuning check": ["finetune_check", "finetune_seeds", "bootstrap", "finetune_steps",
                          "finetune_lr", "finetune_batch_size", "finetune_optimizer",
                          "finetune_schedule", "finetune_warmup"],
}


def say(message: str) -> None:
  """select's own lines, on stderr (stdout is left to the results)."""
  print(message, file=sys.stderr, flush=True)


def main(argv) -> int:
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; everything is a flag", file=sys.stderr)
    return 2
  console.after_flags()  # orbax, TFDS and XLA stay quiet unless --verbosity is given
  if console.missing_flags(_CANDIDATES, _DATASET, _WORKDIR):
    return 2
  budgets = {"max_latency_ms": _MAX_LATENCY_MS.value, "max_params": _MAX_PARAMS.value,
             "max_gflops": _MAX_GFLOPS.value}
  try:  # flag values that absl cannot check alone: nothing runs or is written before this
    names = rank.check_scores(_SCORES.value)
    rank.check_recommend_by(_RECOMMEND_BY.value, names)
    if cost.check_budgets(budgets) and not _MEASURE_COST.value:
      raise ValueError("--max_latency_ms/--max_params/--max_gflops need --measure_cost")
    if _PER_CLASS.value and _SPLIT.value != "train":
      raise ValueError(f"--train_per_class={_PER_CLASS.value} scores the fine-tuning training "
                       f"examples; it needs --split=train, got --split={_SPLIT.value!r}")
    features.check_candidates(_CANDIDATES.value)
    from jaxpretrain.data import loaders  # noqa: PLC0415 -- TFDS import is slow

    try:
      loaders.check_spec(_DATASET.value, _DATA_DIR.value)
    except ValueError as e:
      raise ValueError(f"--dataset={_DATASET.value!r}: {e}") from None
  except ValueError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  finetune_fn, settings = None, None
  if _FINETUNE_CHECK.value or _FT_SEEDS.value > 1:
    recipe = dict(dataset=_DATASET.value, data_dir=_DATA_DIR.value, steps=_FT_STEPS.value,
                  learning_rate=_FT_LR.value, batch_size=_FT_BATCH.value,
                  optimizer=_FT_OPTIMIZER.value, schedule=_FT_SCHEDULE.value,
                  warmup=_FT_WARMUP.value, image_size=_IMAGE_SIZE.value or None,
                  max_len=_MAX_LEN.value, train_per_class=_PER_CLASS.value)
    finetune_fn = rank.make_finetune_fn(workdir=_WORKDIR.value, log=say, **recipe)
    settings = recipe
  try:
    report = rank.select_models(
        _CANDIDATES.value, dataset=_DATASET.value, workdir=_WORKDIR.value,
        data_dir=_DATA_DIR.value, split=_SPLIT.value, max_examples=_MAX_EXAMPLES.value or None,
        train_per_class=_PER_CLASS.value, scores=names, pooling=_POOLING.value,
        batch_size=_BATCH_SIZE.value,
        image_size=_IMAGE_SIZE.value or None, max_len=_MAX_LEN.value, seed=_SEED.value,
        finetune_fn=finetune_fn, finetune_settings=settings, finetune_seeds=_FT_SEEDS.value,
        bootstrap=_BOOTSTRAP.value, measure_cost=_MEASURE_COST.value,
        cost_repeats=_COST_REPEATS.value, cost_warmup=_COST_WARMUP.value, budgets=budgets,
        recommend_by=_RECOMMEND_BY.value, strict=_STRICT.value, log=say, progress=True)
  except rank.SelectionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:  # Ctrl-C outside a fine-tuning run (extraction, scoring)
    print("stopped by Ctrl-C; rerun the same command: features, costs and fine-tuning results "
          "already made are reused from --workdir", file=sys.stderr)
    return 130
  except RuntimeError as e:
    if not rank.is_stopped(e):
      raise
    print(f"stopped: {e}; rerun the same select command: what is finished is reused from "
          "--workdir", file=sys.stderr)
    return e.status
  except ValueError as e:  # the dataset or the candidate list, checked before anything runs
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  rec = report["recommendation"]
  if rec["candidate"] is None:
    print(f"no recommendation: {rec['reason']}")
  else:
    print(f"recommended: {rec['candidate']} ({rec['by']} {rec['value']:.4f})")
  failed = [r["name"] for r in report["results"] if r["status"] == "failed"]
  if failed:
    print(f"failed (left out): {', '.join(failed)}")
  print(f"report: {_WORKDIR.value}/ranking.md")
  print()
  print(pathlib.Path(_WORKDIR.value, "ranking.md").read_text(), end="")
  return 0


def run() -> None:
  """The console script (`jaxpretrain select`)."""
  console.run_app(main, __doc__, GROUPS)


if __name__ == "__main__":
  run()
