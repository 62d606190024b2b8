"""Convert torchvision state dicts and Hugging Face folders into jaxpretrain checkpoints.

    python -m ports.convert resnet50.pth out/resnet50 --arch resnet50
    python -m ports.convert path/to/hf_model_folder out/minilm

A Hugging Face folder (config.json + model.safetensors, a sharded index, or pytorch_model.bin)
names its architecture in config.json; a torchvision file needs --arch. Safetensors never
needs torch; pickles load with torch.load(weights_only=True). DST is written atomically and
is never left half-written.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import sys

from absl import app, flags

from ports import readers
from ports.base import Converted, check
from ports.rules import PortError

# Files that travel from a Hugging Face folder into the checkpoint (tokenizers, processors).
TRAVELLING_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                    "special_tokens_map.json", "preprocessor_config.json", "merges.txt",
                    "vocab.json")


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
  for port in ports:
    if arch in port.ARCHS:
      return port
  known = [a for port in ports for a in port.ARCHS]
  raise PortError(f"unknown torchvision arch {arch!r}; known: {', '.join(known)}")


def read_source(src: str | os.PathLike, arch: str | None = None) -> tuple[Converted, dict]:
  """SRC (file or HF folder) -> (Converted, files to copy). Checks shapes; writes nothing."""
  src = pathlib.Path(src)
  if src.is_dir():
    hf_config, weights = readers.load_hf_folder(src)
    model_type, known = hf_config.get("model_type"), hf_ports()
    if model_type not in known:
      raise PortError(f"{src / 'config.json'}: unknown model_type {model_type!r}; "
                      f"known: {sorted(known)}")
    port = port_module(known[model_type])
    converted = port.to_jaxpretrain(weights, hf_config=hf_config, arch=arch)
    # Processor files the weights do not carry (ViT's preprocessor_config.json: mean, std, size).
    if hasattr(port, "folder_preprocessing"):
      converted.preprocessing.update(port.folder_preprocessing(src))
    files = {n: src / n for n in TRAVELLING_FILES if (src / n).is_file()}
  elif src.is_file():
    if not arch:
      raise PortError(f"{src}: a single weights file needs --arch (e.g. --arch resnet50)")
    port = torchvision_port(arch)  # before reading: an unknown arch loads nothing
    converted = port.to_jaxpretrain(readers.load_state_dict(src), arch=arch)
    files = {}
  else:
    raise PortError(f"{src}: no such file or folder")
  converted.source.setdefault("path", str(src.absolute()))
  check(converted)
  return converted, files


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, arch: str | None = None,
            overwrite: bool = False) -> pathlib.Path:
  """Converts SRC into a checkpoint folder DST; returns DST."""
  from jaxpretrain import params, pretrained  # noqa: PLC0415

  dst = pathlib.Path(dst)
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} already exists; pass --overwrite to replace it")
  converted, files = read_source(src, arch)
  return pretrained.save_pretrained(
      dst, converted.model, converted.model_kwargs, params.unflatten(converted.flat_variables),
      source=converted.source, preprocessing=converted.preprocessing, files=files,
      overwrite=overwrite)


_ARCH = flags.DEFINE_string("arch", None, "Architecture of a single weights file (resnet50...).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace DST if it exists.")


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: python -m ports.convert SRC DST [--arch NAME] [--overwrite]")
  try:
    dst = convert(argv[1], argv[2], arch=_ARCH.value, overwrite=_OVERWRITE.value)
  except (PortError, FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {dst}")
  return 0


if __name__ == "__main__":
  app.run(main)
