"""Export a fine-tuned run (its workdir or its `model/` folder) as what its base came from.

    python -m ports.export workdirs/minilm_tweets hf_out/        # a Hugging Face folder
    python -m ports.export workdirs/resnet_run/model resnet.pth  # a torchvision state dict

A run records its base checkpoint's `source` (job/model_record.py); the base's format chooses
the exporter:
  - huggingface: BertForSequenceClassification, RobertaForSequenceClassification,
    XLMRobertaForSequenceClassification, ViTForImageClassification (or the bare / masked-LM
    model the run has) with id2label/label2id from the run's class names, the tokenizer files
    the run carries, a preprocessor_config.json for image models and a README.md model card
    (base checkpoint, dataset, steps, hyperparameters, test metrics);
  - torchvision: the state dict with the run's new head (ResNet's `fc`, VGG's `classifier.6`
    or a cut backbone's `head`, ConvNeXt's `classifier.2`, EfficientNet's `classifier.1`),
    as .safetensors or .pth/.pt, which `torchvision.models.<arch>(num_classes=N)
    .load_state_dict(..., strict=True)` accepts; the family's torchvision port writes it
    (`ports.convert.torchvision_port`), or ports.efficientnet_pytorch for a base in that
    layout (EfficientNet-Lite0's file), which writes that layout back.
A run trained from scratch exports as its family's format when one fits (a variant its
family's torchvision port reads, or the family's Hugging Face model type). Everything read
from the run is untrusted: files are copied only under known names, as regular files inside
the model folder.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from ports import readers
from ports.convert import hf_ports, port_module, torchvision_port
from ports.rules import PortError

RUN_FORMAT = "jaxpretrain-run"
# Formats with an exporter; efficientnet_pytorch is a torchvision-style state dict whose keys
# follow lukemelas/EfficientNet-PyTorch (ports/efficientnet_pytorch.py).
FORMATS = ("huggingface", "torchvision", "efficientnet_pytorch")
MAX_BASE_DEPTH = 16  # runs fine-tuned from runs: a longer chain is a loop or a forgery
TORCHVISION_SUFFIXES = (".safetensors", ".pth", ".pt")
# PIL resampling codes, as Hugging Face image processors store them.
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
MAX_IMAGE_SIDE = 16384


def find_run(path: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None, dict] | None:
  """(model folder, workdir or None, config) when `path` is a run's workdir or model folder.

  None for anything else (a converted checkpoint: `ports.export` handles it).
  """
  from jaxpretrain import pretrained  # noqa: PLC0415

  path = pathlib.Path(path)
  if (path / "config.json").is_file():
    model_dir = path
    workdir = path.parent if (path.parent / "flags.json").is_file() else None
  elif (path / "model" / "config.json").is_file():
    model_dir, workdir = path / "model", path
  elif (path / "flags.json").is_file():
    raise PortError(f"{path}: a run's workdir without model/config.json; the run has not "
                    "finished (or wrote its model elsewhere with --export_dir: export that)")
  else:
    return None
  try:
    config = pretrained.read_config(model_dir)
  except ValueError:
    return None  # not a jaxpretrain folder: ports.export names the problem
  source = config.get("source")
  if not isinstance(source, Mapping) or source.get("format") != RUN_FORMAT:
    return None
  where = model_dir / "config.json"
  if not isinstance(config.get("model"), str) or not isinstance(
      config.get("model_kwargs", {}), Mapping):
    raise PortError(f"{where}: 'model' must be a name and 'model_kwargs' an object")
  files = config.get("files", [])
  if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
    raise PortError(f"{where}: 'files' must be a list of file names")
  return model_dir, workdir, config


def base_source(config: Mapping[str, Any], where: pathlib.Path) -> dict[str, Any] | None:
  """The `source` of the checkpoint the run started from, through runs of runs (None: scratch).

  Runs exported before the base was recorded name only their `init_checkpoint`: its
  config.json is read when it still exists.
  """
  from jaxpretrain import pretrained  # noqa: PLC0415

  src = config.get("source") or {}
  for _ in range(MAX_BASE_DEPTH):
    if not isinstance(src, Mapping):
      raise PortError(f"{where}: the run's base source is a {type(src).__name__}, not an object")
    if src.get("format") != RUN_FORMAT:
      return dict(src)
    if "base" in src:
      if src["base"] is None:
        return None
      src = src["base"]
      continue
    init = src.get("init_checkpoint")
    if not init:
      return None
    try:
      src = pretrained.read_config(str(init)).get("source") or {}
    except (OSError, ValueError) as e:
      raise PortError(f"{where}: the run does not record its base checkpoint's format and "
                      f"its base {init} cannot be read ({e})") from None
  raise PortError(f"{where}: more than {MAX_BASE_DEPTH} runs chained as bases")


def scratch_source(config: Mapping[str, Any], where: pathlib.Path) -> dict[str, Any]:
  """The format a run trained from scratch exports as, from its model's family."""
  from jaxpretrain.models import registry  # noqa: PLC0415

  name = config.get("model")
  family = registry.family_of(name) if name in registry.known_models() else None
  if (family is not None and "torchvision" in family.ports
      and name in port_module(family.ports["torchvision"]).ARCHS):
    return {"format": "torchvision", "arch": name}
  if family is not None and family.hf_model_types:
    roberta = (config.get("model_kwargs") or {}).get("position_style") == "roberta"
    return {"format": "huggingface",
            "model_type": "roberta" if family.name == "bert" and roberta
            else family.hf_model_types[0]}  # a port with two types picks by the kwargs
  tv = [a for f in registry.families() if "torchvision" in f.ports
        for a in port_module(f.ports["torchvision"]).ARCHS]
  hf = [f.name for f in registry.families() if f.hf_model_types]
  raise PortError(f"{where}: the run trained {name!r} from scratch, which no exporter writes; "
                  f"formats with exporters: huggingface (families {', '.join(hf)}), "
                  f"torchvision ({', '.join(tv)})")


def export_run(path: str | pathlib.Path, out: str | pathlib.Path, *,
               overwrite: bool = False) -> pathlib.Path:
  """Writes the run at `path` (workdir or model folder) to OUT in its base's format."""
  from jaxpretrain import params, pretrained  # noqa: PLC0415

  found = find_run(path)
  if found is None:
    raise PortError(f"{path}: not a jaxpretrain run (a workdir with model/, or its model/)")
  model_dir, workdir, config = found
  base = base_source(config, model_dir)
  base = scratch_source(config, model_dir) if base is None else base
  fmt = base.get("format")
  if fmt not in FORMATS:
    raise PortError(f"{model_dir}: the run's base checkpoint format {fmt!r} has no exporter; "
                    f"formats with exporters: {', '.join(FORMATS)}")
  out = pathlib.Path(out)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
  try:
    names = pretrained.read_class_names(config, str(model_dir / "config.json"))
  except ValueError as e:
    raise PortError(str(e)) from None
  flat = params.flatten(pretrained.load_variables(model_dir / pretrained.VARIABLES))
  as_converted = {"model": config["model"], "model_kwargs": config.get("model_kwargs") or {},
                  "source": base, "class_names": names}
  if fmt in ("torchvision", "efficientnet_pytorch"):
    return _to_torchvision(as_converted, flat, out)
  return _to_huggingface(model_dir, workdir, config, as_converted, flat, out, overwrite)


# ----------------------------------------------------------------------------- torchvision

def _to_torchvision(as_converted: dict, flat: Mapping[str, np.ndarray],
                    out: pathlib.Path) -> pathlib.Path:
  from jaxpretrain.models import registry  # noqa: PLC0415

  arch, names = as_converted["model"], as_converted["class_names"]
  if as_converted["source"].get("format") == "efficientnet_pytorch":
    port = port_module("ports.efficientnet_pytorch")
  else:
    port = torchvision_port(arch)  # the family whose torchvision port reads `arch`
  if out.suffix not in TORCHVISION_SUFFIXES:
    raise PortError(f"{out}: a torchvision export is a {', '.join(TORCHVISION_SUFFIXES)} file")
  state = port.from_jaxpretrain(as_converted, flat).state_dict
  num_classes = registry.family_of(arch).head_size(as_converted["model_kwargs"])
  if names is not None and len(names) != num_classes:
    raise PortError(f"{len(names)} class_names for a head of {num_classes} outputs")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.partial")
  try:
    if out.suffix == ".safetensors":
      meta = {"arch": arch, "num_classes": str(num_classes)}
      if names is not None:
        meta["class_names"] = json.dumps(names)
      readers.save_safetensors(state, tmp, metadata=meta)
    else:
      import torch  # noqa: PLC0415 -- only for .pth/.pt output

      # np.array(order="C"), not ascontiguousarray: 0-d counters must stay 0-d.
      torch.save({k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()}, tmp)
    tmp.replace(out)
  finally:
    tmp.unlink(missing_ok=True)
  return out


# ----------------------------------------------------------------------------- Hugging Face

def _to_huggingface(model_dir: pathlib.Path, workdir: pathlib.Path | None, config: dict,
                    as_converted: dict, flat: Mapping[str, np.ndarray], out: pathlib.Path,
                    overwrite: bool) -> pathlib.Path:
  from jaxpretrain import pretrained  # noqa: PLC0415

  model_type = as_converted["source"].get("model_type")
  known = hf_ports()
  if model_type not in known:
    raise PortError(f"{model_dir}: base Hugging Face model_type {model_type!r} has no "
                    f"exporter; known: {sorted(known)}")
  if out.suffix in TORCHVISION_SUFFIXES:
    raise PortError(f"{out}: a Hugging Face export is a folder, not a {out.suffix} file")
  exported = port_module(known[model_type]).from_jaxpretrain(as_converted, flat)
  from jaxpretrain.job import model_record  # noqa: PLC0415
  from jaxpretrain.models import registry  # noqa: PLC0415

  listed = set(config.get("files") or [])
  with pretrained.atomic_folder(out, overwrite) as tmp:
    (tmp / "config.json").write_text(json.dumps(exported.hf_config, indent=2) + "\n")
    readers.save_safetensors(exported.state_dict, tmp / "model.safetensors")
    for name in model_record.TOKENIZER_FILES:  # known names only: never a path from the run
      src = model_dir / name
      if name in listed and _regular_file_inside(src, model_dir):
        shutil.copyfile(src, tmp / name)
    if registry.family_of(config["model"]).modality == "image":  # ViT, DINOv2, CLIP
      processor = image_processor_config(config.get("preprocessing") or {})
      (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    (tmp / "README.md").write_text(
        model_card(config, exported.hf_config, as_converted["source"], workdir))
  return out


def _regular_file_inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
  """A regular file (not a link) directly inside `folder`."""
  return (path.is_file() and not path.is_symlink()
          and path.resolve().parent == folder.resolve())


def _size(value: Any, what: str) -> tuple[int, int] | None:
  """An image size as (height, width): N, [H, W] or {"height", "width"}; None if absent."""
  if value is None or isinstance(value, str):
    return None
  if isinstance(value, Mapping) and {"height", "width"} <= set(value):
    value = [value["height"], value["width"]]
  if isinstance(value, int) and not isinstance(value, bool):
    value = [value, value]
  if (isinstance(value, (list, tuple)) and len(value) == 2
      and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMAGE_SIDE
              for v in value)):
    return int(value[0]), int(value[1])
  raise PortError(f"preprocessing {what} {str(value)[:80]!r} is not an image size; expected N, "
                  f"[H, W] or {{height, width}} with sides in 1..{MAX_IMAGE_SIDE}")


def _floats(value: Any, what: str) -> list[float]:
  if (isinstance(value, (list, tuple)) and 1 <= len(value) <= 4
      and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              for v in value)):
    return [float(v) for v in value]
  raise PortError(f"preprocessing {what} {str(value)[:80]!r} is not 1-4 finite numbers")


def image_processor_config(prep: Mapping[str, Any]) -> dict[str, Any]:
  """preprocessor_config.json (a Hugging Face image processor) for a checkpoint's preprocessing.

  Reads both records: {"image_size", "mean", "std"(, "rescale")} and {"resize" (shorter side N,
  or [H, W]), "crop", "interpolation", "rescale", "mean", "std"}. A shorter-side resize then
  a center crop is BitImageProcessor's pipeline; a resize to H x W is ViTImageProcessor's.
  """
  mean = _floats(prep.get("mean", [0.5, 0.5, 0.5]), "mean")
  std = _floats(prep.get("std", [0.5, 0.5, 0.5]), "std")
  rescale = prep.get("rescale", prep.get("scale", 1 / 255))
  if not isinstance(rescale, (int, float)) or isinstance(rescale, bool) or not rescale > 0:
    raise PortError(f"preprocessing rescale {rescale!r} is not a positive number")
  interpolation = prep.get("interpolation", "bilinear")
  if interpolation not in RESAMPLE:
    raise PortError(f"preprocessing interpolation {interpolation!r}; known: {sorted(RESAMPLE)}")
  resize, crop = prep.get("resize"), _size(prep.get("crop"), "crop")
  shorter = resize.get("shortest_edge") if isinstance(resize, Mapping) else resize
  common = {"do_rescale": True, "rescale_factor": float(rescale), "do_normalize": True,
            "image_mean": mean, "image_std": std, "resample": RESAMPLE[interpolation],
            "do_resize": True}
  if crop is not None and isinstance(shorter, int) and not isinstance(shorter, bool):
    side = _size(shorter, "resize")[0]
    return {"image_processor_type": "BitImageProcessor", **common,
            "size": {"shortest_edge": side}, "do_center_crop": True,
            "crop_size": {"height": crop[0], "width": crop[1]}, "do_convert_rgb": True}
  size = crop or _size(resize if not isinstance(resize, Mapping) else None, "resize") or _size(
      prep.get("image_size"), "image_size")
  if size is None:
    raise PortError("preprocessing records no image size (image_size, resize or crop)")
  return {"image_processor_type": "ViTImageProcessor", **common,
          "size": {"height": size[0], "width": size[1]}}


# ----------------------------------------------------------------------------- model card

PIPELINE_TAGS = {("text", "classification"): "text-classification",
                 ("image", "classification"): "image-classification",
                 ("text", "mlm"): "fill-mask"}


def _md(value: Any, limit: int = 200) -> str:
  """A value from the run as one markdown table cell (no newlines, no column breaks)."""
  text = " ".join(str(value).split())
  text = text if len(text) <= limit else text[:limit - 3] + "..."
  return text.replace("|", "\\|").replace("<", "&lt;")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  """A run's JSON side file (final.json, flags.json), bounded; {} when absent or unreadable."""
  from jaxpretrain import safe_io  # noqa: PLC0415

  try:
    data = safe_io.read_json(path)
  except (OSError, ValueError):  # UntrustedInputError is a ValueError
    return {}
  return data if isinstance(data, dict) else {}


def run_summary(config: Mapping[str, Any], workdir: pathlib.Path | None) -> dict[str, Any]:
  """Steps, hyperparameters and test metrics: the workdir's final.json and flags.json when
  they are beside the model, else what the job recorded in the model's config."""
  from jaxpretrain.job import model_record  # noqa: PLC0415

  recorded = (config.get("source") or {}).get("run") or {}
  recorded = recorded if isinstance(recorded, Mapping) else {}
  steps = recorded.get("steps")
  hyper = dict(recorded.get("hyperparameters") or {})
  metrics = dict(recorded.get("test_metrics") or {})
  if workdir is not None:
    final = _read_json(workdir / "final.json")
    if isinstance(final.get("metrics"), Mapping):
      metrics = {k: v for k, v in final["metrics"].items() if k in model_record.METRICS}
      steps = final.get("steps", steps)
    flags = _read_json(workdir / "flags.json")
    hyper.update({k: flags[k] for k in model_record.HYPERPARAMETERS if k in flags})
  metrics = {k: v for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  return {"steps": steps, "hyperparameters": hyper, "test_metrics": metrics}


def model_card(config: Mapping[str, Any], hf_config: Mapping[str, Any],
               base: Mapping[str, Any], workdir: pathlib.Path | None) -> str:
  """README.md of an exported run: what it is, how it was trained, how well, how to load it."""
  source = config.get("source") or {}
  summary = run_summary(config, workdir)
  from jaxpretrain.models import registry  # noqa: PLC0415

  name = config.get("model")
  modality = (registry.family_of(name).modality if name in registry.known_models()
              else "text")
  head = (config.get("model_kwargs") or {}).get("head")
  tag = PIPELINE_TAGS.get((modality, head), "feature-extraction")
  arch = (hf_config.get("architectures") or ["?"])[0]
  base_desc = "trained from scratch"
  if source.get("init_checkpoint") or base.get("path"):
    base_desc = (f"{base.get('path') or source.get('init_checkpoint')} ({base.get('format')} "
                 f"{(base.get('architectures') or [base.get('model_type', '')])[0]})")
  rows = [("architecture", arch), ("base checkpoint", base_desc),
          ("dataset", source.get("dataset", "?")), ("task", source.get("task", "?")),
          ("steps", summary["steps"] if summary["steps"] is not None else "?")]
  rows += [(k, v) for k, v in summary["hyperparameters"].items() if k != "steps"]
  lines = ["---", "library_name: transformers", f"pipeline_tag: {tag}", "tags:",
           "- jaxpretrain", "---", "",
           f"# {_md(arch)} fine-tuned on {_md(source.get('dataset', '?'))}", "",
           "Trained with jaxpretrain (JAX) and exported by `python -m ports.export`.", "",
           "## Training", "", "| | |", "|---|---|"]
  lines += [f"| {_md(k)} | {_md(v)} |" for k, v in rows]
  lines += ["", "## Test metrics", ""]
  if summary["test_metrics"]:
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {_md(k)} | {v:.4f} |" if isinstance(v, float) else f"| {_md(k)} | {v} |"
              for k, v in summary["test_metrics"].items()]
  else:
    lines += ["No test metrics were found (final.json is not beside the model)."]
  id2label = hf_config.get("id2label") or {}
  if head == "classification" and id2label:
    lines += ["", "## Labels", "", "| id | label |", "|---|---|"]
    lines += [f"| {_md(i)} | {_md(name)} |" for i, name in list(id2label.items())[:1000]]
  usage = (f'pipeline("{tag}", model="PATH")' if tag != "feature-extraction"
           else 'AutoModel.from_pretrained("PATH")')
  lines += ["", "## Use", "", "```python", "from transformers import AutoModel, pipeline",
            usage, "```", ""]
  return "\n".join(lines)
