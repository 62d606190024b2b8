"""Export what users train: a fine-tuned run back to Hugging Face and torchvision.

A tiny BERT (a Hugging Face folder with the MiniLM tokenizer files) is fine-tuned through the
job for a few steps, exported from its workdir, and `transformers.pipeline("text-classification")`
on the export must give jaxpretrain's own top-1 label on every test example, with logits equal
within RTOL. A torchvision ResNet-18 fine-tuned to 10 classes exports to a state dict that
`torchvision.models.resnet18(num_classes=10)` loads strictly, with the same logits.
"""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxpretrain import pretrained
from jaxpretrain.data import loaders, pipeline, sources
from jaxpretrain.job import JobConfig, finetune
from ports import export, readers, run_export
from ports.rules import PortError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")

REPO = pathlib.Path(__file__).resolve().parents[2]
# float32 at "highest" matmul precision on both sides: only the summation order differs
# (the ports' parity tests measure <= 1e-6), so 1e-5 relative leaves room without hiding a
# wrong weight.
RTOL = 1e-5
CLASSES = ["earn", "acq", "crude"]  # deliberately not sorted: ids follow this order
WORDS = {"earn": ["profit", "dividend", "quarter"], "acq": ["merger", "stake", "buy"],
         "crude": ["oil", "barrel", "opec"]}
TINY_BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=64)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _short(**kw):
  return {**dict(steps=4, batch_size=8, lr=1e-3, warmup=0, log_every=2, eval_every=0,
                checkpoint_every=0, progress="log"), **kw}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """(fine-tuned run Result, dataset spec): tiny BERT from a Hugging Face folder, 4 steps."""
  root = tmp_path_factory.mktemp("text_run")
  torch.manual_seed(0)
  transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(root / "base")
  minilm = sources.minilm_tokenizer_path().parent
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json"):
    shutil.copyfile(minilm / name, root / "base" / name)
  rs = np.random.RandomState(0)
  with open(root / "news.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["text", "label"])
    for i in range(60):
      label = CLASSES[i % 3]
      w.writerow([" ".join(rs.choice(WORDS[label], 4)) + f" report {i}", label])
  dataset = f"csv:{root / 'news.csv'}"
  result = finetune(JobConfig(workdir=str(root / "run"), dataset=dataset,
                              init_checkpoint=str(root / "base"), max_len=16, **_short()),
                    log=lambda _: None)
  return result, dataset


def test_run_records_class_names_and_tokenizer_files(text_run):
  result, _ = text_run
  config = pretrained.read_config(result.model_dir)
  assert config["class_names"] == sorted(CLASSES)  # a CSV's classes are its sorted names
  assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt",
          "special_tokens_map.json"} <= set(config["files"])
  assert config["source"]["base"]["format"] == "huggingface"
  assert config["source"]["run"]["steps"] == 4


def test_text_run_exports_to_a_transformers_pipeline(text_run, tmp_path, highest_precision):
  result, dataset = text_run
  out = export.export(result.workdir, tmp_path / "hf")
  hf_cfg = json.loads((out / "config.json").read_text())
  names = pretrained.read_config(result.model_dir)["class_names"]
  assert hf_cfg["architectures"] == ["BertForSequenceClassification"]
  assert hf_cfg["id2label"] == {str(i): n for i, n in enumerate(names)}
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json", "README.md", "model.safetensors"):
    assert (out / name).is_file(), name

  source, _ = loaders.load_dataset(dataset, split="test")
  texts = [source[i]["text"] for i in range(len(source))]
  assert len(texts) == 12
  # jaxpretrain's own forward: the run's model and tokenizer.
  model, variables = pretrained.load_pretrained(result.model_dir)
  batch = pipeline.TextPreprocess(f"{result.model_dir}/tokenizer.json", 16).batch(
      [{"text": t, "label": 0} for t in texts], None)
  ours, _ = model.apply(variables, batch["input_ids"], attention_mask=batch["attention_mask"],
                        token_type_ids=batch["token_type_ids"])
  ours = np.asarray(ours)
  # transformers on the export.
  tok = transformers.AutoTokenizer.from_pretrained(out)
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = hf(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()
  assert rel_err(ours, theirs) <= RTOL
  predicted = transformers.pipeline("text-classification", model=str(out), device="cpu")(texts)
  assert [p["label"] for p in predicted] == [names[i] for i in ours.argmax(-1)]

  card = (out / "README.md").read_text()
  final = json.loads((pathlib.Path(result.workdir) / "final.json").read_text())
  assert "pipeline_tag: text-classification" in card and dataset in card
  assert f"| accuracy | {final['metrics']['accuracy']:.4f} |" in card
  assert "| steps | 4 |" in card and "| lr | 0.001 |" in card

  # The model folder alone exports the same weights and labels.
  again = export.export(result.model_dir, tmp_path / "hf2")
  assert json.loads((again / "config.json").read_text()) == hf_cfg
  a, b = readers.SafetensorsFile(out / "model.safetensors"), readers.SafetensorsFile(
      again / "model.safetensors")
  assert all(np.array_equal(a[k], b[k]) for k in a)


def _copy_run_config(result, dst, **source_changes):
  """A run's model folder holding only a config.json with its source changed."""
  config = pretrained.read_config(result.model_dir)
  config["source"].update(source_changes)
  dst.mkdir(parents=True)
  (dst / "config.json").write_text(json.dumps(config))
  return dst


def test_base_format_without_exporter_is_named(text_run, tmp_path):
  result, _ = text_run
  odd = _copy_run_config(result, tmp_path / "odd", base={"format": "timm"})
  with pytest.raises(PortError, match="base checkpoint format 'timm' has no exporter; formats "
                                      "with exporters: huggingface, torchvision"):
    export.export(odd, tmp_path / "out")
  config = pretrained.read_config(result.model_dir)
  config.update(model="resnet_tiny", model_kwargs={})
  config["source"]["base"] = None
  (tmp_path / "tiny").mkdir()
  (tmp_path / "tiny/config.json").write_text(json.dumps(config))
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "ports.export", str(tmp_path / "tiny"),
                         str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1, proc.stderr
  assert "'resnet_tiny' from scratch" in lines[0] and "torchvision (" in lines[0]
  assert "resnet18," in lines[0] and "vgg16_bn," in lines[0]  # every torchvision port's archs
  assert not (tmp_path / "out").exists()
  with pytest.raises(PortError, match="has not finished"):
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd/flags.json").write_text("{}")
    export.export(tmp_path / "wd", tmp_path / "out")


def _resnet18_run(folder):
  """A run's model folder as the job writes it after fine-tuning a torchvision ResNet-18 to 10
  classes (a new fc, BatchNorm statistics moved), without spending a minute compiling one."""
  from ports import convert  # noqa: PLC0415

  torch.manual_seed(0)
  base = torchvision.models.resnet18()  # 1000 classes: the run puts a new 10-class fc on it
  readers.save_safetensors({k: v.numpy() for k, v in base.state_dict().items()},
                           folder / "resnet18.safetensors")
  convert.convert(folder / "resnet18.safetensors", folder / "init", arch="resnet18")
  converted = pretrained.load_variables(folder / "init/variables")
  rs = np.random.RandomState(1)
  perturb = lambda x: (x + 0.1 * rs.rand(*x.shape)).astype(x.dtype)  # noqa: E731
  variables = jax.tree.map(perturb, converted)
  variables["params"]["fc"] = {"kernel": rs.randn(512, 10).astype(np.float32) * 0.05,
                               "bias": rs.randn(10).astype(np.float32)}
  names = [f"digit_{i}" for i in range(10)]
  base_source = pretrained.read_config(folder / "init")["source"]
  pretrained.save_pretrained(
      folder / "run/model", "resnet18", {"num_classes": 10}, variables,
      source={"format": "jaxpretrain-run", "init_checkpoint": str(folder / "init"),
              "dataset": "digits_local", "task": "classification", "base": base_source},
      preprocessing={"image_size": 16}, class_names=names)
  (folder / "run/flags.json").write_text("{}")
  return folder / "run", names


def test_resnet18_run_exports_to_a_strict_torchvision_state_dict(tmp_path, highest_precision):
  workdir, names = _resnet18_run(tmp_path)
  model, variables = pretrained.load_pretrained(workdir / "model")
  x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
  ours = np.asarray(jax.jit(lambda v: model.apply(v, x, train=False)[0])(variables))
  for suffix in (".pth", ".safetensors"):
    out = export.export(workdir, tmp_path / f"resnet18_run{suffix}")
    state = (torch.load(out, weights_only=True) if suffix == ".pth" else
             {k: torch.from_numpy(np.array(v)) for k, v in readers.SafetensorsFile(out).items()})
    ref = torchvision.models.resnet18(num_classes=10).eval()
    ref.load_state_dict(state, strict=True)
    with torch.no_grad():
      theirs = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert rel_err(ours, theirs) <= RTOL, suffix
  meta = readers.SafetensorsFile(tmp_path / "resnet18_run.safetensors").metadata
  assert json.loads(meta["class_names"]) == names and meta["arch"] == "resnet18"
  with pytest.raises(PortError, match="a torchvision export is a .safetensors, .pth, .pt file"):
    export.export(workdir, tmp_path / "resnet18.bin")


def test_image_processor_config_reads_both_preprocessing_records(tmp_path):
  old = run_export.image_processor_config({"image_size": 16, "mean": [0.5] * 3,
                                           "std": [0.25] * 3, "resize": "resize"})
  assert old["image_processor_type"] == "ViTImageProcessor"
  assert old["size"] == {"height": 16, "width": 16} and old["image_std"] == [0.25] * 3
  new = run_export.image_processor_config({"resize": 256, "crop": 224, "interpolation": "bicubic",
                                           "rescale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                                           "std": [0.229, 0.224, 0.225]})
  assert new["image_processor_type"] == "BitImageProcessor" and new["resample"] == 3
  assert new["size"] == {"shortest_edge": 256}
  assert new["crop_size"] == {"height": 224, "width": 224}
  for cfg in (old, new):  # transformers reads both
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor).__name__.startswith(cfg["image_processor_type"])
  with pytest.raises(PortError, match="preprocessing crop 'x'|is not an image size"):
    run_export.image_processor_config({"crop": [0, 5]})
