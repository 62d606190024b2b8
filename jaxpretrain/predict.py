r"""Top-k predictions of a classifier on images or texts.

  python -m jaxpretrain.predict --checkpoint=out/resnet18 photo.jpg more_photos/
  python -m jaxpretrain.predict --checkpoint=resnet18-f37072fd.pth --arch=resnet18 photo.jpg
  python -m jaxpretrain.predict --checkpoint=workdirs/minilm_tweets --json tweets.txt "great day"
  python -m jaxpretrain.predict --checkpoint=out/clip --labels=cat,dog,fish photo.jpg

--checkpoint takes what `jaxpretrain.load` takes (a checkpoint folder, a run's workdir, a
Hugging Face folder, a torchvision file with --arch). Image models take image files and folders
of them (walked recursively, hidden files skipped). Text models take text files (one example
per non-empty line; `-` reads standard input) and folders of them; any other argument is a
text. Prints a table (or, with --json, one JSON object per input) of the top-k class names with
softmax probabilities.

A CLIPModel checkpoint (image and text towers, no head) classifies images zero-shot with
--labels=cat,dog,fish: each image against the prompt --prompt (default CLIP's "a photo of a
{label}") of each label; class_ids then index into --labels.

An input that cannot be used (an image that does not decode, a non-image file in a folder, a
text file that is not UTF-8, a missing path) is one line on stderr naming it; the others are
still predicted and the exit status is 1. With --strict the first such input stops everything
(exit 2, nothing printed on stdout). A bad checkpoint, one without a classification head
(and no --labels), or bad --labels/--prompt, is one line and exit 2.

Library logs (orbax, XLA) stay off the console unless --verbosity is given; --help lists these
flags by purpose.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import flags

from jaxpretrain import console

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A checkpoint folder, a run's workdir, a Hugging Face folder, a "
    "torchvision weights file (with --arch) or 'minilm'. Required; checked in main, not by "
    "absl, whose check would run for every main that shares the process's flags.")
# allow_override: converting a source imports ports.convert, whose CLI defines --arch too
# (main reads every value before that import).
_ARCH = flags.DEFINE_string("arch", None, "Architecture of a torchvision weights file.",
                            allow_override=True)
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes per input.", lower_bound=1)
_JSON = flags.DEFINE_bool("json", False, "One JSON object per input instead of a table.")
_STRICT = flags.DEFINE_bool("strict", False, "Stop at the first unusable input (exit 2).",
                            allow_override=True)  # select defines one too
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Inputs per compiled call.", lower_bound=1,
                                   allow_override=True)  # the job defines one too
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Where converted sources are kept (default "
                                 "$JAXPRETRAIN_CACHE or ~/.cache/jaxpretrain/converted).")
_LABELS = flags.DEFINE_string(
    "labels", None, "Comma-separated class names, e.g. cat,dog,fish: a CLIPModel checkpoint "
    "classifies images zero-shot against them (one prompt per label, see --prompt).")
_PROMPT = flags.DEFINE_string(
    "prompt", None, "With --labels: the prompt, with {label} (default CLIP's \"a photo of a "
    "{label}\").")

# --help: the flags above, by purpose.
GROUPS = {
    "model": ["checkpoint", "arch", "cache_dir"],
    "output": ["top_k", "json", "strict"],
    "zero-shot": ["labels", "prompt"],
    "speed": ["batch_size"],
}

NAME_WIDTH = 48  # widest input name shown in the table; longer ones are shortened


class Unusable(Exception):
  """--strict: an input could not be used."""


@dataclasses.dataclass(frozen=True)
class Item:
  name: str  # shown in the output: a file, or file:line, or the text itself
  value: Any  # an image path, or a text


def gather(args: Sequence[str], modality: str, skip: Callable[[str, str], None]) -> list[Item]:
  """Command-line arguments -> the inputs to predict; `skip(name, why)` for unusable ones."""
  items = []
  for arg in args:
    path = pathlib.Path(arg)
    if modality == "image":
      if path.is_dir():
        items += [Item(str(f), f) for f in _walk(path)]
      elif path.is_file():
        items.append(Item(arg, path))
      else:
        skip(arg, "no such file or folder")
    elif arg == "-":
      items += _lines("<stdin>", sys.stdin.buffer.read(), skip)
    elif path.is_dir():
      for f in _walk(path):
        items += _lines(str(f), f.read_bytes(), skip)
    elif path.is_file():
      items += _lines(arg, path.read_bytes(), skip)
    else:
      items.append(Item(arg, arg))
  return items


def _walk(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(f for f in folder.rglob("*") if f.is_file()
                and not any(p.startswith(".") for p in f.relative_to(folder).parts))


def _lines(name: str, raw: bytes, skip: Callable[[str, str], None]) -> list[Item]:
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    skip(name, f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})")
    return []
  return [Item(f"{name}:{i}", line.strip()) for i, line in enumerate(text.splitlines(), 1)
          if line.strip()]


def parse_labels(text: str) -> list[str]:
  """--labels "cat, dog,fish" -> ["cat", "dog", "fish"] (ValueError: an empty or repeated one)."""
  labels = [label.strip() for label in text.split(",")]
  for i, label in enumerate(labels):
    if not label:
      raise ValueError(f"--labels={text!r}: label {i + 1} is empty; give comma-separated "
                       "names, e.g. --labels=cat,dog")
    if label in labels[:i]:
      raise ValueError(f"--labels={text!r}: {label!r} appears twice; labels must be distinct")
  return labels


def predictions(model, items: Sequence[Item], top_k: int, skip: Callable[[str, str], None],
                labels: Sequence[str] | None = None, template: str | None = None
                ) -> Iterator[tuple[Item, list[str], list[float], list[int]]]:
  """(item, labels, probabilities, class ids) per usable item, batch by batch; with `labels`,
  zero-shot (`Pretrained.zero_shot`) and class ids index into them."""
  from jaxpretrain import api, preprocess  # noqa: PLC0415

  for start in range(0, len(items), model.batch_size):
    chunk, inputs = [], []
    for item in items[start:start + model.batch_size]:
      value = item.value
      if model.modality == "image":
        try:
          value = preprocess.open_image(value)
        except preprocess.ImageError as e:
          skip(item.name, str(e).removeprefix(f"{item.value}: "))
          continue
      chunk.append(item)
      inputs.append(value)
    if not chunk:
      continue
    if labels is None:
      probs, names = model.probabilities(inputs), model.class_names
    else:
      probs, names = model.zero_shot(inputs, labels, template), labels
    for item, row, ids in zip(chunk, probs, api.top_indices(probs, top_k), strict=True):
      yield item, [names[i] for i in ids], [float(row[i]) for i in ids], [int(i) for i in ids]


def table_lines(item: Item, labels: list[str], scores: list[float], width: int) -> list[str]:
  # Paths differ at their ends, texts at their starts: shorten each where it says least.
  name = item.name
  if len(name) > width:
    name = name[:width - 1] + "…" if isinstance(item.value, str) else "…" + name[1 - width:]
  return [f"{name if r == 0 else '':<{width}}  {r + 1:>4}  {s:>7.4f}  {label}"
          for r, (label, s) in enumerate(zip(labels, scores, strict=True))]


def json_line(item: Item, labels: list[str], scores: list[float], ids: list[int],
              modality: str) -> str:
  record = {"input": item.name, "labels": labels, "scores": scores, "class_ids": ids}
  if modality == "text":
    record["text"] = item.value
  return json.dumps(record, ensure_ascii=False)


def run(checkpoint: str, inputs: Sequence[str], *, arch: str | None = None, top_k: int = 5,
        as_json: bool = False, strict: bool = False, batch_size: int = 32,
        cache_dir: str | None = None, labels: str | Sequence[str] | None = None,
        prompt: str | None = None, out=None, err=None) -> int:
  """The command: prints predictions to `out`, problems to `err`; returns the exit status.

  labels: zero-shot class names (a list, or --labels' comma-separated text); prompt: their
  template (None: CLIP's "a photo of a {label}").
  """
  from jaxpretrain import api  # noqa: PLC0415

  out, err = out or sys.stdout, err or sys.stderr
  if not inputs:
    print("error: no inputs; give image files or folders, text files, or texts", file=err)
    return 2
  if prompt is not None and labels is None:
    print(f"error: --prompt={prompt!r} is for zero-shot classification; give --labels too",
          file=err)
    return 2
  try:
    if isinstance(labels, str):
      labels = parse_labels(labels)
    model = api.load(checkpoint, arch=arch, cache_dir=cache_dir, batch_size=batch_size,
                     log=lambda msg: print(msg, file=err))
    if labels is None:  # fail before reading any input
      model.require_head()
    else:
      labels, prompt = model.check_zero_shot(labels, prompt)
  except (ValueError, OSError) as e:  # LoadError, PortError, unreadable files
    print(f"error: {e}", file=err)
    return 2
  skipped = []

  def skip(name: str, why: str) -> None:
    skipped.append(name)
    print(f"skipped {name}: {why}", file=err)
    if strict:
      raise Unusable(name)

  rows = []
  try:
    items = gather(inputs, model.modality, skip)
    width = min(max([len("input"), *(len(i.name) for i in items)]), NAME_WIDTH)
    emit = (lambda line: rows.append(line)) if strict else (lambda line: print(line, file=out))
    if not as_json and items:
      emit(f"{'input':<{width}}  rank  {'prob':>7}  label")
    for item, names, scores, ids in predictions(model, items, top_k, skip, labels, prompt):
      if as_json:
        emit(json_line(item, names, scores, ids, model.modality))
      else:
        for line in table_lines(item, names, scores, width):
          emit(line)
  except Unusable:
    return 2
  for line in rows:
    print(line, file=out)
  return 1 if skipped else 0


def main(argv: list[str]) -> int:
  console.after_flags(tfds=False)  # orbax and XLA quiet unless --verbosity is given
  if console.missing_flags(_CHECKPOINT, hint="a checkpoint folder, a run's workdir, a Hugging "
                          "Face folder, a torchvision weights file (with --arch) or 'minilm'"):
    return 2
  return run(_CHECKPOINT.value, argv[1:], arch=_ARCH.value, top_k=_TOP_K.value,
             as_json=_JSON.value, strict=_STRICT.value, batch_size=_BATCH_SIZE.value,
             cache_dir=_CACHE_DIR.value, labels=_LABELS.value, prompt=_PROMPT.value)


def run_cli() -> None:
  """The console script (`jaxpretrain predict`)."""
  console.quiet_logs()  # here, not at import (tests import this module): JAX/orbax load lazily
  console.run_app(main, __doc__, GROUPS)


if __name__ == "__main__":
  run_cli()
