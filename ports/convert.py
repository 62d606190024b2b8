"""Convert torchvision state dicts and Hugging Face folders into jaxpretrain checkpoints.

    python -m ports.convert resnet50.pth out/resnet50 --arch resnet50 [--resize_size 232]
    python -m ports.convert path/to/hf_model_folder out/minilm
    python -m ports.convert model.onnx out/dinov2 --family dinov2   # ports/onnx_in.py
    python -m ports.convert model.onnx out/l3 --family bert --tokenizer path/to/hf_folder

A Hugging Face folder (config.json + model.safetensors, a sharded index, or pytorch_model.bin)
names its architecture in config.json; a torchvision file needs --arch. Safetensors never
needs torch; pickles load with torch.load(weights_only=True). DST is written atomically and
is never left half-written.

Everything read from SRC goes through ports.readers and jaxpretrain.safe_io: files resolve to
regular files inside SRC (or its Hugging Face cache's blob store), side files are size-capped,
config values are range-checked, and the files that travel into DST are read and validated
(tokenizer.json must load with `tokenizers`) before anything is written. Any failure is one
`error: ...` line naming the file and field, exit status 2, and no DST.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import sys

from absl import app, flags

from jaxpretrain import safe_io
from ports import hf_common, readers
from ports.base import Converted, check
from ports.rules import PortError

# Files that travel from a Hugging Face folder into the checkpoint (tokenizers, processors).
TRAVELLING_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                    "special_tokens_map.json", "preprocessor_config.json", "merges.txt",
                    "vocab.json")
# Exit status of the CLIs on a refused input (absl's usage errors use it too).
EXIT_BAD_INPUT = 2


def port_module(name: str):
  return importlib.import_module(name)


def hf_ports() -> dict[str, str]:
  """Hugging Face model_type -> port module, from the model families (models/registry.py)."""
  from jaxpretrain.models import registry  # noqa: PLC0415

  return {t: f.ports["huggingface"] for f in registry.families() for t in f.hf_model_types}


def torchvision_port(arch: str | None):
  """The port module reading torchvision architecture `arch` (its family's "torchvision")."""
  from jaxpretrain.models import registry  # noqa: PLC0415

  ports = [port_module(f.ports["torchvision"]) for f in registry.families()
           if "torchvision" in f.ports]
  base = (arch or "").split(":")[0]  # "vgg16_bn:39": a backbone cut after features[:39]
  for port in ports:
    if arch in port.ARCHS or base in port.ARCHS:
      return port
  known = [a for port in ports for a in port.ARCHS]
  raise PortError(f"unknown torchvision arch {arch!r}; known: {', '.join(known)}")


def read_source(src: str | os.PathLike, arch: str | None = None, family: str | None = None,
                *, resize_size: int | None = None, crop_size: int | None = None
                ) -> tuple[Converted, dict]:
  """SRC (file or HF folder) -> (Converted, files to copy). Checks shapes; writes nothing.

  resize_size, crop_size: a torchvision file's eval transforms, when its weights were not
  made with torchvision's defaults for the arch (resize 256, crop 224).
  """
  src = pathlib.Path(src)
  if src.is_dir() and (resize_size or crop_size):
    raise PortError("--resize_size/--crop_size are for torchvision files; a Hugging Face "
                    "folder's preprocessor_config.json says how its images are made")
  if src.suffix == ".onnx" and not src.is_dir():  # ONNX in: ports/onnx_in.py, --family names it
    converted, files = port_module("ports.onnx_in").to_converted(src, family), {}
  elif src.is_dir():
    hf_config, weights = readers.load_hf_folder(src)
    model_type, known = hf_config.get("model_type"), hf_ports()
    if model_type not in known:
      raise PortError(f"{src / 'config.json'}: unknown model_type {model_type!r}; "
                      f"known: {sorted(known)}")
    port = port_module(known[model_type])
    converted = port.to_jaxpretrain(weights, hf_config=hf_config, arch=arch)
    # What the weights do not carry: preprocessor_config.json, sentence-transformers modules.
    if hasattr(port, "folder_preprocessing"):
      converted.preprocessing.update(port.folder_preprocessing(src))
    if converted.class_names is None and converted.model_kwargs.get("head") == "classification":
      converted.class_names = hf_common.class_names(hf_config,
                                                    converted.model_kwargs["num_labels"])
    files = {n: read_travelling_file(src, n) for n in TRAVELLING_FILES
             if readers.side_file(src, n) is not None}
  elif os.path.lexists(src):  # a weights file (load_state_dict refuses FIFOs, devices...)
    if not arch:
      raise PortError(f"{src}: a single weights file needs --arch (e.g. --arch resnet50)")
    port = torchvision_port(arch)  # before reading: an unknown arch loads nothing
    converted = port.to_jaxpretrain(readers.load_state_dict(src), arch=arch)
    if hasattr(port, "eval_preprocessing"):  # the transforms of this very weights file
      converted.preprocessing = port.eval_preprocessing(arch, src.name)
    if resize_size or crop_size:
      converted.preprocessing = _eval_sizes(converted.preprocessing, resize_size, crop_size)
    files = {}
  else:
    raise PortError(f"{src}: no such file or folder")
  converted.source.setdefault("path", str(src.absolute()))
  check(converted)
  return converted, files


def read_travelling_file(folder: str | os.PathLike, name: str) -> bytes:
  """A tokenizer or processor file's bytes, read once and validated before DST is written.

  JSON files must parse (tokenizer.json must also load with `tokenizers`, or fine-tuning would
  fail on it much later), text files must be UTF-8; each is capped at MAX_TOKENIZER_BYTES.
  """
  real = readers.side_file(folder, name)
  where = str(pathlib.Path(folder) / name)
  data = safe_io.read_bytes(real, safe_io.MAX_TOKENIZER_BYTES, readers.CheckpointError, where)
  if name.endswith(".json"):
    safe_io.parse_json(data, where, readers.CheckpointError)
  else:
    safe_io.decode_utf8(data, where, readers.CheckpointError)
  if name == "tokenizer.json":
    from tokenizers import Tokenizer  # noqa: PLC0415

    try:
      Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 -- the tokenizers library raises its own types
      raise readers.CheckpointError(
          f"{where}: not a tokenizer the tokenizers library loads: {safe_io.short(str(e), 160)}"
      ) from None
  return data


def _eval_sizes(record: dict, resize_size: int | None, crop_size: int | None) -> dict:
  """An image record with --resize_size (shorter side) and --crop_size (center crop) applied."""
  from jaxpretrain import preprocess  # noqa: PLC0415

  try:
    return preprocess.with_eval_sizes(record, resize_size=resize_size, crop_size=crop_size)
  except ValueError as e:
    raise PortError(f"--resize_size={resize_size}, --crop_size={crop_size}: {e}") from None


def tokenizer_files(folder: str | os.PathLike, model: str) -> dict[str, bytes]:
  """--tokenizer: the tokenizer files of `folder` (tokenizer.json required), validated.

  For text models (`model`: a registry variant) whose SRC carries no tokenizer (an ONNX
  file) or the wrong one.
  """
  from jaxpretrain.job import model_record  # noqa: PLC0415 -- the tokenizer files' names
  from jaxpretrain.models import registry  # noqa: PLC0415

  folder = pathlib.Path(folder)
  modality = registry.family_of(model).modality
  if modality != "text":
    raise PortError(f"--tokenizer={folder}: {model} is not a text model (an {modality} model)")
  if not folder.is_dir():
    raise PortError(f"--tokenizer={folder}: not a folder (give the folder holding "
                    "tokenizer.json)")
  if readers.side_file(folder, "tokenizer.json") is None:
    raise PortError(f"--tokenizer={folder}: no tokenizer.json in it")
  return {n: read_travelling_file(folder, n) for n in model_record.TOKENIZER_FILES
          if readers.side_file(folder, n) is not None}


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, arch: str | None = None,
            overwrite: bool = False, family: str | None = None, resize_size: int | None = None,
            crop_size: int | None = None, tokenizer: str | os.PathLike | None = None
            ) -> pathlib.Path:
  """Converts SRC into a checkpoint folder DST; returns DST.

  tokenizer: a folder whose tokenizer files replace SRC's (`tokenizer_files`).
  """
  from jaxpretrain import params, pretrained  # noqa: PLC0415

  dst = pathlib.Path(dst)
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} already exists; pass --overwrite to replace it")
  converted, files = read_source(src, arch, family, resize_size=resize_size,
                                 crop_size=crop_size)
  if tokenizer is not None:
    from jaxpretrain.job import model_record  # noqa: PLC0415

    files = {n: b for n, b in files.items() if n not in model_record.TOKENIZER_FILES}
    files.update(tokenizer_files(tokenizer, converted.model))
    converted.preprocessing["tokenizer"] = "tokenizer.json"
    converted.source["tokenizer"] = str(pathlib.Path(tokenizer).absolute())
  return pretrained.save_pretrained(
      dst, converted.model, converted.model_kwargs, params.unflatten(converted.flat_variables),
      source=converted.source, preprocessing=converted.preprocessing, files=files,
      overwrite=overwrite, class_names=converted.class_names)


_ARCH = flags.DEFINE_string("arch", None, "Architecture of a single weights file (resnet50...).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace DST if it exists.")
_RESIZE_SIZE = flags.DEFINE_integer(
    "resize_size", None, "torchvision file: eval resize of the shorter side (default: "
    "torchvision's for the arch's weights, 256 for the classic ones).", lower_bound=1)
_CROP_SIZE = flags.DEFINE_integer("crop_size", None, "torchvision file: eval center crop "
                                  "(default 224).", lower_bound=1)
_FAMILY = flags.DEFINE_string("family", None, "Family of an .onnx SRC (bert, distilbert, dinov2).")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "Text models: a folder whose tokenizer files (tokenizer.json, vocab...) "
    "go into DST, for an .onnx SRC (it carries none) or to replace SRC's.")


def main(argv):
  from jaxpretrain import console  # noqa: PLC0415

  console.after_flags(tfds=False)  # orbax's and JAX's INFO lines stay quiet (--verbosity: shown)
  if len(argv) != 3:
    raise app.UsageError("usage: python -m ports.convert SRC DST [--arch NAME] [--overwrite]",
                         exitcode=EXIT_BAD_INPUT)
  try:
    dst = convert(argv[1], argv[2], arch=_ARCH.value, overwrite=_OVERWRITE.value,
                  family=_FAMILY.value, resize_size=_RESIZE_SIZE.value,
                  crop_size=_CROP_SIZE.value, tokenizer=_TOKENIZER.value)
  except (PortError, safe_io.UntrustedInputError, FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  print(f"wrote {dst}")
  return 0


if __name__ == "__main__":
  app.run(main)
