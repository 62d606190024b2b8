r"""Input pipeline throughput, to set against train-step speed.

  python -m benchmarks.data_pipeline --data_dir=/tmp/tfds --worker_counts=0,4

Image: fashion_mnist_local train, 28x28 gray -> 32x32 RGB, pad-crop + flip, normalized,
global batch 128 (what ResNet-18 gets). Text: tweets_sentiment train, MiniLM tokenizer.json,
max_len 128, global batch 32. Both as one process with one device; datasets are built first
if missing (offline). Prints batches/s and examples/s after a warm-up.
"""

import time

from absl import app, flags, logging

from jaxpretrain import data

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default ~/tensorflow_datasets).")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed batches per configuration.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed batches first (thread/worker start-up).")
_THREADS = flags.DEFINE_integer("num_threads", 4, "grain ReadOptions threads per process.")
_WORKERS = flags.DEFINE_list("worker_counts", ["0"], "grain worker processes to try.")
_WHICH = flags.DEFINE_enum("which", "both", ["both", "image", "text"], "Pipelines to time.")


def measure(iterator, steps: int, warmup: int) -> float:
  """Seconds per batch over `steps` batches, after `warmup` untimed ones."""
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return (time.perf_counter() - start) / steps


def pipelines(data_dir: str):
  """(label, source, preprocess, global batch) for the two pipelines."""
  out = []
  if _WHICH.value in ("both", "image"):
    src, _ = data.load_dataset("fashion_mnist_local", data_dir, "train")
    out.append(("image fashion_mnist_local 32x32x3", src,
                data.ImagePreprocess(image_size=32, channels=3), 128))
  if _WHICH.value in ("both", "text"):
    src, _ = data.load_dataset("tweets_sentiment", data_dir, "train")
    out.append(("text tweets_sentiment seq 128", src,
                data.TextPreprocess(data.minilm_tokenizer_path(), max_len=128), 32))
  return out


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  data_dir = _DATA_DIR.value or data.default_data_dir()
  for label, src, preprocess, batch in pipelines(data_dir):
    for workers in map(int, _WORKERS.value):
      it = data.train_iterator(src, preprocess, global_batch_size=batch, seed=0,
                               process_index=0, process_count=1, local_device_count=1,
                               num_threads=_THREADS.value, worker_count=workers)
      sec = measure(it, _STEPS.value, _WARMUP.value)
      it.close()
      print(f"{label} batch {batch} threads {_THREADS.value} workers {workers}: "
            f"{1 / sec:8.1f} batches/s {batch / sec:9.0f} examples/s", flush=True)


if __name__ == "__main__":
  app.run(main)
