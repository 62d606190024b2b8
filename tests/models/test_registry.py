"""Every registered model family end to end, and the registry's own checks.

For each family in `registry.families()` (new families are covered automatically, and fail
until they add a tiny source to SOURCES below): a tiny seeded torch / transformers model is
saved as its source format writes it, converted through the family's port, run, exported back
bit-exact, fine-tuned one step with a new head through the job's own functions
(`task.model_spec`, `task.with_head`, `task.init_variables`, `step.train_step`), and its
`select` features are extracted.
"""

import dataclasses
import functools
import importlib
import json
import shutil

import jax
import numpy as np
import optax
import pytest

from jaxpretrain import params, pretrained
from jaxpretrain.job import task
from jaxpretrain.job.config import ConfigError, JobConfig
from jaxpretrain.models import registry
from jaxpretrain.select import features
from jaxpretrain.train import losses
from jaxpretrain.train import step as step_lib
from jaxpretrain.train.state import create_train_state
from tests import cnn_torch_refs as refs

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

NEW_CLASSES = 5  # differs from every source's head size, so the head is always new
BATCH = 2


# ------------------------------------------------------------------------------------------
# Tiny sources, one per family: (tmp folder) -> (source path, --arch or None, structure).
# structure None: `ports.convert` converts the source as the CLI does. A dict: the source is
# a small model of a structure no named architecture has (the torchvision CNN ports convert
# named architectures only, and refuse any other structure naming the difference), so its
# state dict goes through the port's own rule table with these model_kwargs, as
# `ports.convert` would after that check (the named-architecture path: tests/ports/).
# ------------------------------------------------------------------------------------------


# torchvision's ResNet with one BasicBlock per stage and every width / 8 (stem 8, stages
# 8-64): its structure is model_kwargs, as resnet_tiny's. The named architectures go through
# `ports.convert --arch` (and its structure check) in tests/ports/test_torchvision_resnet.py;
# a full ResNet-18 here compiled its train step in ~13 s for the same property.
RESNET_STRUCTURE = {"block": "basic", "stage_sizes": [1, 1, 1, 1], "width": 8}
RESNET_SHRINK = 8  # torchvision's widths 64-512 -> 8-64


def _torchvision_resnet_small(root):
  """A seeded torchvision ResNet(BasicBlock, [1, 1, 1, 1]) state dict, each channel axis cut
  to its first 1/RESNET_SHRINK (torchvision names, shapes of width 8)."""
  from torchvision.models import resnet  # noqa: PLC0415

  torch.manual_seed(0)
  model = refs.randomize_norms(resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=10))
  wide = (64, 128, 256, 512)
  state = {k: v[tuple(slice(0, n // RESNET_SHRINK if n in wide else n) for n in v.shape)]
              .clone() for k, v in model.state_dict().items()}
  path = root / "resnet_small.pth"
  torch.save(state, path)
  return path, "resnet18", dict(RESNET_STRUCTURE)


def _hf(cls_name, cfg_name, tokenizer=False, **cfg):
  """A seeded transformers model saved as a Hugging Face folder (tokenizer=True: with the
  uncased BERT tokenizer.json all-MiniLM-L6-v2 carries, as a real text model's folder has;
  its vocabulary is 30,522 tokens)."""
  def make(root):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**cfg)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LayerNorm 1/0 and zero biases would hide swapped names
      for p in model.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(root / "hf")
    if tokenizer:
      from jaxpretrain.data import sources  # noqa: PLC0415

      shutil.copyfile(sources.minilm_tokenizer_path(), root / "hf" / "tokenizer.json")
    return root / "hf", None, None

  return make


def _small_cnn(make, arch, **structure):
  """A small torchvision CNN (tests/cnn_torch_refs.py) saved as a .pth state dict."""
  def source(root):
    path = root / f"{arch}_small.pth"
    torch.save(getattr(refs, make)(num_classes=10).state_dict(), path)
    return path, arch, structure

  return source


def _vgg_small(root):
  """`small_vgg` with BatchNorm (its whole classifier: classifier_6 is the head replaced)."""
  path = root / "vgg11_bn_small.pth"
  torch.save(refs.small_vgg(batch_norm=True, num_classes=10).state_dict(), path)
  return path, "vgg11_bn", {"cfg": list(refs.VGG_CFG), "batch_norm": True,
                            "classifier_width": refs.VGG_WIDTH}


# torchvision's B0 stages thinned (widths x 0.25 -> 8..80 channels) and cut to one block each
# (depth x 0.1): its structure is two numbers, as a checkpoint's model_kwargs can hold it.
EFFNET_MULT = {"width_mult": 0.25, "depth_mult": 0.1}


def _efficientnet_small(root):
  from torchvision.models import efficientnet  # noqa: PLC0415

  torch.manual_seed(0)
  setting, last = efficientnet._efficientnet_conf("efficientnet_b0", **EFFNET_MULT)
  model = refs.randomize_norms(efficientnet.EfficientNet(setting, 0.2, last_channel=last,
                                                         num_classes=10))
  path = root / "efficientnet_b0_small.pth"
  torch.save(model.state_dict(), path)
  return path, "efficientnet_b0", dict(EFFNET_MULT)


def _convert_structure(src, arch, structure, dst):
  """ports.convert's steps for a small structure: the port's table, check, save."""
  from ports import base, convert, readers, rules  # noqa: PLC0415

  port = convert.torchvision_port(arch)
  weights = readers.load_state_dict(src)
  table = (port.table(structure["cfg"], structure["batch_norm"]) if hasattr(port, "table")
           else port.TABLE)
  head = {"resnet": "fc.weight", "vgg": "classifier.6.weight", "convnext": "classifier.2.weight",
          "efficientnet": "classifier.1.weight"}[registry.family_of(arch).name]
  kwargs = {**structure, "num_classes": int(weights[head].shape[0])}
  converted = base.Converted(
      model=arch, model_kwargs=kwargs, flat_variables=rules.convert(table, weights, port.IGNORED),
      source={"format": "torchvision", "arch": arch, "path": str(src)})
  base.check(converted)
  model = registry.family_of(arch).build(arch, **kwargs)
  pretrained.save_pretrained(
      dst, arch, kwargs, params.unflatten(converted.flat_variables), source=converted.source,
      preprocessing=registry.family_of(arch).default_preprocessing(model))


_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=24, type_vocab_size=2)
BERT_VOCAB = 30522  # bert-base-uncased's vocabulary (the MiniLM tokenizer's)
_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
SOURCES = {
    "resnet": _torchvision_resnet_small,
    "bert": _hf("BertForSequenceClassification", "BertConfig", num_labels=3, **_BERT),
    "vit": _hf("ViTModel", "ViTConfig", hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=37, image_size=16, patch_size=4),
    "vgg": _vgg_small,
    "convnext": _small_cnn("small_convnext", "convnext_tiny", dims=list(refs.CONVNEXT_DIMS),
                           depths=list(refs.CONVNEXT_DEPTHS)),
    "efficientnet": _efficientnet_small,
    "dinov2": _hf("Dinov2Model", "Dinov2Config", image_size=16, patch_size=4, mlp_ratio=2,
                  **{k: v for k, v in _TOWER.items() if k != "intermediate_size"}),
    "distilbert": _hf("DistilBertForSequenceClassification", "DistilBertConfig", num_labels=3,
                      tokenizer=True, vocab_size=BERT_VOCAB, dim=32, n_layers=2, n_heads=4,
                      hidden_dim=37, max_position_embeddings=24),
    "clip": _hf("CLIPModel", "CLIPConfig", projection_dim=16,
                text_config=dict(_TOWER, vocab_size=99, max_position_embeddings=16,
                                 bos_token_id=97, eos_token_id=98, pad_token_id=1),
                vision_config=dict(_TOWER, image_size=16, patch_size=4)),
}

FAMILIES = [f.name for f in registry.families()]


def _batch(family, model, seed=0):
  """A seeded batch of the family's modality at the model's own size."""
  rng = np.random.RandomState(seed)
  labels = np.arange(BATCH, dtype=np.int32) % NEW_CLASSES
  prep = family.default_preprocessing(model)
  if family.modality == "image":
    size = prep["image_size"]
    h, w = (size, size) if isinstance(size, int) else size
    channels = getattr(model, "num_channels", 3)
    return {"image": rng.randn(BATCH, h, w, channels).astype(np.float32), "label": labels}
  seq = min(8, prep["max_len"])
  ids = rng.randint(3, min(getattr(model, "vocab_size", 99), 99), (BATCH, seq)).astype(np.int32)
  mask = np.ones((BATCH, seq), np.int32)
  mask[1, seq // 2:] = 0
  return {"input_ids": ids, "attention_mask": mask, "label": labels}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """family -> (source path, checkpoint folder), converted once."""
  from ports import convert  # noqa: PLC0415

  cache = {}

  def get(name):
    if name not in cache:
      root = tmp_path_factory.mktemp(name)
      src, arch, structure = SOURCES[name](root)
      if structure is None:
        convert.convert(src, root / "ckpt", arch=arch)
      else:
        _convert_structure(src, arch, structure, root / "ckpt")
      cache[name] = (src, root / "ckpt")
    return cache[name]

  return get


@pytest.mark.parametrize("name", FAMILIES)
def test_family_has_a_tiny_source(name):
  assert name in SOURCES, (f"family '{name}' has no tiny source in {__file__}: SOURCES; add "
                           "one (a seeded torch / transformers model saved as its port reads)")


@pytest.mark.parametrize("name", FAMILIES)
def test_family_end_to_end(name, converted, tmp_path, highest_precision):
  if name not in SOURCES:
    pytest.skip("no tiny source (test_family_has_a_tiny_source fails)")
  family = registry.get(name)
  src, ckpt = converted(name)

  # Convert (done by the fixture through the family's port) -> load -> apply (one compiled
  # forward pass per model keeps the test fast: select's extraction below is the apply).
  cfg = pretrained.read_config(ckpt)
  assert registry.family_of(cfg["model"]) is family
  assert cfg["source"]["format"] in family.ports
  model, variables = pretrained.load_pretrained(ckpt)
  batch = _batch(family, model)
  size = family.head_size(cfg["model_kwargs"])

  # Export back: bit-exact against the source's own tensors.
  from ports import export, readers  # noqa: PLC0415

  out_path = tmp_path / ("exported.safetensors" if src.is_file() else "exported")
  export.export(ckpt, out_path)
  if src.is_file():
    original = readers.load_state_dict(src)
    exported = readers.SafetensorsFile(out_path)
  else:
    _, original = readers.load_hf_folder(src)
    exported = readers.SafetensorsFile(out_path / "model.safetensors")
  assert set(exported) == set(original)
  for key in exported:
    assert exported[key].dtype == original[key].dtype, key
    np.testing.assert_array_equal(exported[key], original[key], err_msg=key)

  # Fine-tune one step with a new head, as the job builds it.
  config = JobConfig(workdir=str(tmp_path / "run"), dataset="none", init_checkpoint=str(ckpt),
                     batch_size=BATCH)
  spec = task.model_spec(config, tmp_path / "run", log=lambda *_: None)
  assert spec.descriptor is family and spec.checkpoint == ckpt
  spec = task.with_head(spec, config, NEW_CLASSES)
  assert spec.new_head and family.head_size(spec.kwargs) == NEW_CLASSES
  fresh = task.init_variables(spec, seed=0, log=lambda *_: None)
  head_re = params.compile_patterns(family.head_patterns)
  flat_loaded, flat_fresh = params.flatten(dict(variables)), params.flatten(fresh)
  for path, value in flat_fresh.items():  # the backbone is the checkpoint's, the head is new
    if not any(p.fullmatch(path) for p in head_re):
      np.testing.assert_array_equal(value, flat_loaded[path], err_msg=path)
  assert any(any(p.fullmatch(k) for p in head_re) for k in flat_fresh)
  ft_model = spec.build()
  state = create_train_state(fresh, optax.sgd(0.1), 0)
  train = jax.jit(functools.partial(
      step_lib.train_step, model=ft_model, tx=optax.sgd(0.1),
      loss_fn=losses.classification_loss_fn(), inputs_fn=family.inputs))
  new_state, metrics = train(state, batch)
  assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
  changed = params.flatten(dict(new_state.params))
  assert any(not np.array_equal(v, flat_fresh[f"params/{k}"]) for k, v in changed.items())

  # Apply and select: the converted checkpoint as a candidate, its features pooled by the
  # family, its head's probabilities (with a head) from the same forward pass.
  cand = features.load_candidate(f"c={ckpt}", tmp_path / "cache")
  assert cand.family is family and cand.modality == family.modality
  got = jax.device_get(features.make_extract_fn(cand.model, family, "pooled")(
      cand.variables, batch))
  assert got["features"].ndim == 2 and got["features"].shape[0] == BATCH
  assert np.isfinite(got["features"]).all()
  assert ("probs" in got) == (size is not None)
  if size is not None:
    assert got["probs"].shape == (BATCH, size) and np.isfinite(got["probs"]).all()


# ------------------------------------------------------------------------------------------
# The whole job on a new image family and a new text family.
# ------------------------------------------------------------------------------------------


def _digits_npz(path):
  """scikit-learn's 8x8 digits 0-2, 48 to train and 24 to test, with class names."""
  from sklearn.datasets import load_digits  # noqa: PLC0415

  digits = load_digits(n_class=3)
  x, y = (digits.images * 255 / 16).astype(np.uint8), digits.target.astype(np.int64)
  np.savez(path, x_train=x[:48], y_train=y[:48], x_test=x[48:72], y_test=y[48:72],
           class_names=np.array(["zero", "one", "two"]))
  return f"npz:{path}"


def _words_csv(path):
  """64 two-class texts: each class draws its words from its own four."""
  rng = np.random.RandomState(0)
  words = ("good", "great", "happy", "fine", "bad", "awful", "sad", "poor")
  rows = ["text,label"]
  for i in range(64):
    label = i % 2
    rows.append(" ".join(rng.choice(words[4 * label:4 * label + 4], 5)) + ","
                + ("neg", "pos")[label])
  path.write_text("\n".join(rows) + "\n")
  return f"csv:{path}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg", "distilbert"])
def test_whole_job(name, converted, tmp_path):
  """finetune with a new head -> evaluate -> load().classify -> export as the base's format.

  VGG rather than EfficientNet for the image family: orbax's save of the train state
  compiles once per distinct array shape, ~400 of them for the small EfficientNet (~25 s on
  two shared cores), against ~40 for the small VGG.
  """
  import jaxpretrain  # noqa: PLC0415
  from jaxpretrain.job import evaluate_checkpoint, finetune  # noqa: PLC0415
  from ports import export, readers  # noqa: PLC0415

  _, ckpt = converted(name)
  if name == "vgg":
    data = dict(dataset=_digits_npz(tmp_path / "digits.npz"), image_size=32)
    inputs = [np.full((8, 8), 200, np.uint8), np.eye(8, dtype=np.uint8) * 255]
  else:
    data = dict(dataset=_words_csv(tmp_path / "words.csv"), max_len=16, image_size=None)
    inputs = ["good great fine", "awful sad poor"]
  config = JobConfig(workdir=str(tmp_path / "run"), init_checkpoint=str(ckpt), steps=3,
                     batch_size=16, lr=1e-3, warmup=0, eval_every=0, checkpoint_every=0,
                     progress="log", **data)
  result = finetune(config)
  assert result.summary["new head"] is True and np.isfinite(result.metrics["accuracy"])

  ev = evaluate_checkpoint(result.workdir, data["dataset"], batch_size=64, log=lambda *_: None)
  assert ev["accuracy"] == pytest.approx(result.metrics["accuracy"])

  names = pretrained.read_config(result.model_dir)["class_names"]
  top, probs = jaxpretrain.load(result.model_dir).classify(inputs, top_k=2)
  assert len(top) == 2 and all(t in names for row in top for t in row)
  assert probs.shape == (2, 2) and np.all(np.diff(probs, axis=1) <= 0)

  if name == "vgg":  # a torchvision state dict with the new classifier.6
    out = export.export(result.workdir, tmp_path / "run.safetensors")
    state = readers.SafetensorsFile(out)
    assert state["classifier.6.weight"].shape == (len(names), refs.VGG_WIDTH)
    assert "features.0.weight" in state and "features.1.running_var" in state
  else:  # a Hugging Face folder whose id2label holds the run's class names
    out = export.export(result.workdir, tmp_path / "hf")
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["architectures"] == ["DistilBertForSequenceClassification"]
    assert list(hf_config["id2label"].values()) == names == ["neg", "pos"]
    assert (out / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------------
# The descriptors themselves.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_descriptor_is_complete(name):
  family = registry.get(name)
  assert family.name == name and family.modality in registry.MODALITIES
  for variant in family.variants:
    assert registry.family_of(variant) is family
  for module in family.ports.values():  # the port modules exist and have both directions
    port = importlib.import_module(module)
    assert callable(port.to_jaxpretrain) and callable(port.from_jaxpretrain), module
  if "torchvision" in family.ports:
    port = importlib.import_module(family.ports["torchvision"])
    assert set(port.ARCHS) <= set(family.variants)
  assert family.set_head({}, None) is not None and family.head_size(family.set_head({}, 7)) == 7
  assert family.head_size(family.set_head({}, None)) is None


def test_job_rejects_a_task_the_family_has_no_head_for(tmp_path):
  config = JobConfig(workdir=str(tmp_path), dataset="none", model="resnet_tiny", task="mlm")
  spec = task.model_spec(dataclasses.replace(config, task="classification"), tmp_path)
  with pytest.raises(ConfigError, match=r"--task=mlm needs a model with a mlm head; .*"
                                        r"'resnet_tiny' \(resnet\); allowed families: bert"):
    task.with_head(spec, config, None)


def _fields(**over):
  resnet = registry.get("resnet")
  base = {f.name: getattr(resnet, f.name) for f in dataclasses.fields(registry.Family)}
  return {**base, "name": "toy", "variants": {"toy_tiny": {}}, **over}


def test_family_missing_a_field_fails_clearly():
  with pytest.raises(ValueError, match=r"family 'toy' is missing required fields \['heads'\]"):
    registry.Family(**_fields(heads=None))
  with pytest.raises(ValueError, match=r"missing required fields \['build', 'ports'\]"):
    registry.Family(**_fields(build=None, ports=None))
  with pytest.raises(ValueError, match=r"heads must map 'classification'"):
    registry.Family(**_fields(heads={}))
  with pytest.raises(ValueError, match=r"modality 'audio'; allowed: \['image', 'text'\]"):
    registry.Family(**_fields(modality="audio"))
  with pytest.raises(ValueError, match=r"ports\['onnx'\]"):
    registry.Family(**_fields(ports={"onnx": "ports.x"}))
  with pytest.raises(ValueError, match=r"bad pattern"):
    registry.Family(**_fields(fresh_when_added={"pooler": ("params/(",)}))
  with pytest.raises(ValueError, match=r"takes a registry.Family, got dict"):
    registry.register(_fields())


def test_register_refuses_clashing_names():
  resnet = registry.get("resnet")
  with pytest.raises(ValueError, match=r"variants \['resnet18'\] already belong to family "
                                       r"'resnet'"):
    registry.register(registry.Family(**_fields(variants={"resnet18": {}})))
  toy = registry.Family(**_fields(name="resnet", build=lambda name, **kw: None))
  with pytest.raises(ValueError, match=r"family 'resnet' is already registered by "
                                       r"jaxpretrain.models.resnet"):
    registry.register(toy)
  assert registry.get("resnet") is resnet  # nothing replaced
  with pytest.raises(ValueError, match=r"unknown model family 'nope'; known: \["):
    registry.get("nope")
