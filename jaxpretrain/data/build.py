r"""Builds the offline TFDS datasets (array_record, no TensorFlow, no network).

  python -m jaxpretrain.data.build all
  python -m jaxpretrain.data.build mnist_local tweets_sentiment --data_dir=/tmp/tfds

A dataset that is already built is left alone, and the command says so.
"""

import time

from absl import app, flags, logging

from jaxpretrain.data import builders

_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.")


def main(argv: list[str]) -> None:
  names = argv[1:]
  if not names:
    raise app.UsageError(f"name a dataset or 'all'; known: {sorted(builders.BUILDERS)}")
  if names == ["all"]:
    names = list(builders.BUILDERS)
  unknown = [n for n in names if n not in builders.BUILDERS]
  if unknown:
    raise app.UsageError(f"unknown dataset(s) {unknown}; known: {sorted(builders.BUILDERS)}")
  data_dir = _DATA_DIR.value or builders.default_data_dir()
  logging.set_verbosity(logging.WARNING)  # TFDS logs every file it touches at INFO.
  for name in names:
    start = time.perf_counter()
    built = builders.build(name, data_dir)
    splits = builders.get_builder(name, data_dir).info.splits
    counts = ", ".join(f"{s} {splits[s].num_examples}" for s in sorted(splits))
    verb = f"built in {time.perf_counter() - start:.1f}s" if built else "already built, no-op"
    print(f"{name}: {verb} ({counts}) in {data_dir}", flush=True)


if __name__ == "__main__":
  app.run(main)
