"""Convert torchvision state dicts and Hugging Face folders into jaxpretrain checkpoints.

    python -m ports.convert resnet50.pth out/resnet50 --arch resnet50
    python -m ports.convert path/to/hf_model_folder out/minilm
    python -m ports.convert model.onnx out/dinov2 --family dinov2   # ports/onnx_in.py

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

# Hugging Face model_type -> port module.
HF_PORTS = {"bert": "ports.hf_bert", "roberta": "ports.hf_bert", "vit": "ports.hf_vit"}
HF_PORTS.update({"dinov2": "ports.hf_dinov2", "dinov2_with_registers": "ports.hf_dinov2",
                 "distilbert": "ports.hf_distilbert", "clip": "ports.hf_clip"})
# Files that travel from a Hugging Face folder into the checkpoint (tokenizers, processors).
TRAVELLING_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                    "special_tokens_map.json", "preprocessor_config.json", "merges.txt",
                    "vocab.json")


def port_module(name: str):
  return importlib.import_module(name)


def read_source(src: str | os.PathLike, arch: str | None = None,
                family: str | None = None) -> tuple[Converted, dict]:
  """SRC (file or HF folder) -> (Converted, files to copy). Checks shapes; writes nothing."""
  src = pathlib.Path(src)
  if src.suffix == ".onnx" and not src.is_dir():  # ONNX in: ports/onnx_in.py, --family names it
    converted, files = port_module("ports.onnx_in").to_converted(src, family), {}
  elif src.is_dir():
    hf_config, weights = readers.load_hf_folder(src)
    model_type = hf_config.get("model_type")
    if model_type not in HF_PORTS:
      raise PortError(f"{src / 'config.json'}: unknown model_type {model_type!r}; "
                      f"known: {sorted(HF_PORTS)}")
    port = port_module(HF_PORTS[model_type])
    converted = port.to_jaxpretrain(weights, hf_config=hf_config, arch=arch)
    # Processor files the weights do not carry (ViT's preprocessor_config.json: mean, std, size).
    if hasattr(port, "folder_preprocessing"):
      converted.preprocessing.update(port.folder_preprocessing(src))
    files = {n: src / n for n in TRAVELLING_FILES if (src / n).is_file()}
  elif src.is_file():
    if not arch:
      raise PortError(f"{src}: a single weights file needs --arch (e.g. --arch resnet50)")
    converted = port_module("ports.torchvision_resnet").to_jaxpretrain(
        readers.load_state_dict(src), arch=arch)
    files = {}
  else:
    raise PortError(f"{src}: no such file or folder")
  converted.source.setdefault("path", str(src.absolute()))
  check(converted)
  return converted, files


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, arch: str | None = None,
            overwrite: bool = False, family: str | None = None) -> pathlib.Path:
  """Converts SRC into a checkpoint folder DST; returns DST."""
  from jaxpretrain import params, pretrained  # noqa: PLC0415

  dst = pathlib.Path(dst)
  if dst.exists() and not overwrite:
    raise FileExistsError(f"{dst} already exists; pass --overwrite to replace it")
  converted, files = read_source(src, arch, family)
  return pretrained.save_pretrained(
      dst, converted.model, converted.model_kwargs, params.unflatten(converted.flat_variables),
      source=converted.source, preprocessing=converted.preprocessing, files=files,
      overwrite=overwrite)


_ARCH = flags.DEFINE_string("arch", None, "Architecture of a single weights file (resnet50...).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace DST if it exists.")
_FAMILY = flags.DEFINE_string("family", None, "Family of an .onnx SRC (bert, distilbert, dinov2).")


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: python -m ports.convert SRC DST [--arch NAME] [--overwrite]")
  try:
    dst = convert(argv[1], argv[2], arch=_ARCH.value, overwrite=_OVERWRITE.value,
                  family=_FAMILY.value)
  except (PortError, FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {dst}")
  return 0


if __name__ == "__main__":
  app.run(main)
