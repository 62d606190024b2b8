"""Export a jaxpretrain checkpoint back to torchvision or Hugging Face naming.

    python -m ports.export out/resnet50 resnet50.safetensors      # torchvision state dict
    python -m ports.export out/minilm exported_folder/            # HF folder transformers loads

The same rule table that converted the weights is read backwards, so the round trip is
bit-exact.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

from absl import app, flags

from ports import readers
from ports.convert import hf_ports, port_module, torchvision_port
from ports.rules import PortError

# ports.convert (imported above) defines --overwrite too; allow_override lets both modules load
# in one process (absl raises DuplicateFlagError otherwise).
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace OUT if it exists.", allow_override=True)


def _port_for(config: dict):
  fmt = config.get("source", {}).get("format")
  if fmt == "torchvision":
    return torchvision_port(config.get("source", {}).get("arch", config.get("model")))
  if fmt == "huggingface":
    known = hf_ports()
    model_type = config["source"].get("model_type")
    if model_type not in known:
      raise PortError(f"checkpoint source model_type {model_type!r} has no exporter; known: "
                      f"{sorted(known)}")
    return port_module(known[model_type])
  raise PortError(f"checkpoint source format {fmt!r} has no exporter; known: torchvision, "
                  "huggingface")


def export(ckpt: str, out: str, *, overwrite: bool = False) -> pathlib.Path:
  """Writes OUT (.safetensors file for torchvision, a folder for Hugging Face)."""
  from jaxpretrain import params, pretrained  # noqa: PLC0415

  ckpt, out = pathlib.Path(ckpt), pathlib.Path(out)
  config = pretrained.read_config(ckpt)
  flat = params.flatten(pretrained.load_variables(ckpt / pretrained.VARIABLES))
  exported = _port_for(config).from_jaxpretrain(config, flat)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
  if exported.hf_config is None:
    if out.suffix != ".safetensors":
      raise PortError(f"{out}: a torchvision export is a .safetensors file")
    tmp = out.with_name(f".{out.name}.partial")
    readers.save_safetensors(exported.state_dict, tmp)
    tmp.replace(out)
    return out
  with pretrained.atomic_folder(out, overwrite) as tmp:
    (tmp / "config.json").write_text(json.dumps(exported.hf_config, indent=2) + "\n")
    readers.save_safetensors(exported.state_dict, tmp / "model.safetensors")
    for name in config.get("files", []):
      shutil.copyfile(ckpt / name, tmp / name)
  return out


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: python -m ports.export CHECKPOINT OUT [--overwrite]")
  try:
    out = export(argv[1], argv[2], overwrite=_OVERWRITE.value)
  except (PortError, FileExistsError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  app.run(main)
