"""Export a jaxpretrain checkpoint back to torchvision or Hugging Face naming.

    python -m ports.export out/resnet50 resnet50.safetensors      # torchvision state dict
    python -m ports.export out/minilm exported_folder/            # HF folder transformers loads
    python -m ports.export workdirs/run hf_out/                   # a fine-tuned run (run_export)

The same rule table that converted the weights is read backwards, so the round trip is
bit-exact.

A checkpoint folder is untrusted too: its config.json is read by pretrained.read_config
(bounded, every field checked), and the names it lists under "files" are data: only plain
names of regular files inside the folder are copied, each read (size-capped) before OUT is
written. Any failure is one `error: ...` line, exit status 2, and no OUT.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

from jaxpretrain import safe_io
from ports import readers, run_export
from ports.convert import EXIT_BAD_INPUT, hf_ports, port_module, torchvision_port
from ports.rules import PortError

# ports.convert (imported above) defines --overwrite too; allow_override lets both modules load
# in one process (absl raises DuplicateFlagError otherwise).
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace OUT if it exists.", allow_override=True)


def _port_for(config: dict, where: str):
  source = config.get("source", {})
  fmt = source.get("format")
  if fmt == "torchvision":
    arch = source.get("arch")
    if not isinstance(arch, str):
      raise PortError(f"{where}: source arch={safe_io.short(arch)}; allowed: a torchvision "
                      "architecture name")
    return torchvision_port(arch)
  if fmt == "efficientnet_pytorch":
    return port_module("ports.efficientnet_pytorch")
  if fmt == "huggingface":
    model_type, known = source.get("model_type"), hf_ports()
    if not isinstance(model_type, str) or model_type not in known:
      raise PortError(f"{where}: source model_type {safe_io.short(model_type)} has no "
                      f"exporter; known: {sorted(known)}")
    return port_module(known[model_type])
  raise PortError(f"{where}: source format {safe_io.short(fmt)} has no exporter; known: "
                  f"torchvision, efficientnet_pytorch, huggingface, {run_export.RUN_FORMAT} "
                  "(a fine-tuned run)")


def read_files(ckpt: pathlib.Path, names: list[str]) -> dict[str, bytes]:
  """The files a checkpoint lists, read before anything is written.

  Each name is data from the checkpoint: a plain name (no '/', '..', absolute, NUL) of a
  regular file inside CKPT, at most MAX_TOKENIZER_BYTES.
  """
  out = {}
  for name in names:
    real = safe_io.resolve_inside(ckpt, name, readers.CheckpointError)
    out[name] = safe_io.read_bytes(real, safe_io.MAX_TOKENIZER_BYTES, readers.CheckpointError,
                                   str(ckpt / name))
  return out


def _load_variables(ckpt: pathlib.Path):
  """The checkpoint's orbax variables as NumPy; a missing or corrupt folder is one PortError."""
  from jaxpretrain import pretrained  # noqa: PLC0415

  path = ckpt / pretrained.VARIABLES
  if not path.is_dir():
    raise readers.CheckpointError(f"{path}: no variables folder; not a converted checkpoint")
  try:
    return pretrained.load_variables(path)
  except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many types on a bad folder
    raise readers.CheckpointError(f"{path}: cannot restore the variables: "
                                  f"{safe_io.short(str(e), 200)}") from None


def export(ckpt: str, out: str, *, overwrite: bool = False) -> pathlib.Path:
  """Writes OUT (.safetensors file for torchvision, a folder for Hugging Face)."""
  from jaxpretrain import params, pretrained  # noqa: PLC0415

  ckpt, out = pathlib.Path(ckpt), pathlib.Path(out)
  if run_export.find_run(ckpt) is not None:  # a run's workdir or model/: its base's format
    return run_export.export_run(ckpt, out, overwrite=overwrite)
  config = pretrained.read_config(ckpt)
  port = _port_for(config, str(ckpt / pretrained.CONFIG))
  files = read_files(ckpt, config.get("files", []))
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
  flat = params.flatten(_load_variables(ckpt))
  try:
    exported = port.from_jaxpretrain(config, flat)
  except TypeError as e:  # model_kwargs naming no field of the model
    raise PortError(f"{ckpt / pretrained.CONFIG}: model_kwargs do not fit model "
                    f"{safe_io.short(config['model'])}: {safe_io.short(str(e), 200)}") from None
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
    for name, data in files.items():
      (tmp / safe_io.plain_name(name, str(out))).write_bytes(data)
  return out


def main(argv):
  from jaxpretrain import console  # noqa: PLC0415

  console.after_flags(tfds=False)  # orbax's and JAX's INFO lines stay quiet (--verbosity: shown)
  if len(argv) != 3:
    raise app.UsageError("usage: python -m ports.export CHECKPOINT OUT [--overwrite]",
                         exitcode=EXIT_BAD_INPUT)
  try:
    out = export(argv[1], argv[2], overwrite=_OVERWRITE.value)
  except (PortError, FileExistsError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  app.run(main)
