"""jaxpretrain.load and `python -m jaxpretrain.predict`: the seed recipe and a text classifier.

Images: a seeded random-init torchvision resnet18 (1,000 classes, BatchNorm statistics
randomized) saved with torch.save, converted by the CLI with --arch, against torch on the two
photos scikit-learn ships run through torchvision's Resize(256) + CenterCrop(224) + ToTensor()
+ Normalize. Text: a 1-layer BERT classifier with class names written by
`jaxpretrain.pretrained`, fed a text file. Plus the bad inputs: undecodable images, non-image
files in a folder, a non-UTF-8 text file, a checkpoint without a head.
"""

import functools
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest

import jaxpretrain
from jaxpretrain import api, models, predict, pretrained
from jaxpretrain.data import minilm_tokenizer_path
from tests.torch_refs import random_torchvision_resnet

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

REPO = pathlib.Path(__file__).resolve().parents[1]
# float32 at "highest" matmul precision on both sides, from identical uint8 pixels: only the
# summation order differs (tests/parity/test_resnet_parity.py holds resnet18 to the same).
LOGIT_RTOL = 1e-5
PROB_ATOL = 1e-6  # softmax of logits that agree to 1e-5 relative (logits here are O(1))
SUBPROCESS_TIMEOUT = 300
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TEXT_CLASSES = ["negative", "neutral", "positive"]
TINY_BERT = dict(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=64)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
  """(torch model, its .pth file, the folder `python -m ports.convert --arch` made of it)."""
  root = tmp_path_factory.mktemp("resnet")
  model = random_torchvision_resnet("resnet18", num_classes=1000, seed=0).eval()
  path = root / "resnet18-seeded.pth"
  torch.save(model.state_dict(), path)
  dst = root / "resnet18"
  proc = subprocess.run([sys.executable, "-m", "ports.convert", str(path), str(dst),
                         "--arch", "resnet18"], cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=SUBPROCESS_TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return model, path, dst


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """A folder: china.jpg (sklearn's file), flower.png (sklearn's array saved), a gray PNG."""
  folder = tmp_path_factory.mktemp("photos")
  data = sklearn_datasets.load_sample_images()
  shutil.copyfile(data.filenames[0], folder / "china.jpg")
  PIL.Image.fromarray(data.images[1]).save(folder / "flower.png")
  gray = np.random.default_rng(0).integers(0, 256, (150, 97), np.uint8)
  PIL.Image.fromarray(gray).save(folder / "gray.png")
  return folder


def _torch_logits(model, paths):
  tf = torchvision.transforms
  make = tf.Compose([tf.Resize(256), tf.CenterCrop(224), tf.ToTensor(), tf.Normalize(MEAN, STD)])
  x = torch.stack([make(PIL.Image.open(p).convert("RGB")) for p in paths])
  with torch.no_grad():
    return model(x).numpy()


def test_converted_resnet_records_torchvision_eval_and_imagenet_names(resnet):
  from torchvision.models._meta import _IMAGENET_CATEGORIES  # noqa: PLC0415

  config = json.loads((resnet[2] / "config.json").read_text())
  assert config["class_names"] == list(_IMAGENET_CATEGORIES)
  prep = config["preprocessing"]
  assert (prep["resize"], prep["crop"], prep["interpolation"]) == (
      {"shorter": 256}, [224, 224], "bilinear")


def test_logits_match_torch_on_photos(resnet, photos, highest_precision):
  model, _, folder = resnet
  paths = sorted(photos.iterdir())
  loaded = jaxpretrain.load(folder)
  assert (loaded.modality, loaded.num_classes) == ("image", 1000)
  ours, ref = loaded.logits(paths), _torch_logits(model, paths)
  assert rel_err(ours, ref) <= LOGIT_RTOL
  labels, scores = loaded.classify([str(p) for p in paths], top_k=5)
  assert [row[0] for row in labels] == [loaded.class_names[i] for i in ref.argmax(1)]
  assert scores.shape == (3, 5) and np.all(np.diff(scores, axis=1) <= 0)


def test_predict_cli_on_a_torchvision_file_with_bad_inputs(resnet, photos, tmp_path):
  """The seed recipe from the file itself (--arch), into a cache dir; bad inputs are named."""
  from torchvision.models._meta import _IMAGENET_CATEGORIES  # noqa: PLC0415

  model, path, _ = resnet
  folder = tmp_path / "inputs"
  shutil.copytree(photos, folder)
  (folder / "notes.txt").write_text("not an image")
  (folder / "broken.jpg").write_bytes((photos / "china.jpg").read_bytes()[:600])
  proc = subprocess.run(
      [sys.executable, "-m", "jaxpretrain.predict", f"--checkpoint={path}", "--arch=resnet18",
       f"--cache_dir={tmp_path / 'cache'}", "--json", "--top_k=3", str(folder),
       str(tmp_path / "missing.jpg")],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert proc.returncode == 1, proc.stderr[-3000:]
  skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
  assert len(skipped) == 3, proc.stderr
  assert any("broken.jpg: not a readable image" in line for line in skipped)
  assert any("notes.txt: not a readable image" in line for line in skipped)
  assert any("missing.jpg: no such file or folder" in line for line in skipped)
  rows = [json.loads(line) for line in proc.stdout.splitlines()]
  names = [pathlib.Path(r["input"]).name for r in rows]
  assert names == ["china.jpg", "flower.png", "gray.png"]
  probs = torch.softmax(torch.from_numpy(_torch_logits(model, sorted(photos.iterdir()))), 1)
  for row, p in zip(rows, probs.numpy(), strict=True):
    assert row["labels"][0] == _IMAGENET_CATEGORIES[int(p.argmax())]
    assert row["labels"] == [_IMAGENET_CATEGORIES[i] for i in row["class_ids"]]
    np.testing.assert_allclose(row["scores"], p[row["class_ids"]], atol=PROB_ATOL)
  assert list((tmp_path / "cache").iterdir())  # converted into the cache, not next to the file
  assert sorted(p.name for p in path.parent.iterdir()) == ["resnet18", "resnet18-seeded.pth"]


def test_predict_table_and_strict(resnet, photos, tmp_path):
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  out, err = io.StringIO(), io.StringIO()
  code = predict.run(str(resnet[2]), [str(photos / "china.jpg")], top_k=2, out=out, err=err)
  lines = out.getvalue().splitlines()
  assert code == 0 and lines[0].split() == ["input", "rank", "prob", "label"]
  assert len(lines) == 3 and lines[1].split()[1] == "1"
  name = lines[1].split()[0]  # a long path keeps its end
  assert name.endswith(f"{photos.name}/china.jpg") and len(name) <= predict.NAME_WIDTH
  out, err = io.StringIO(), io.StringIO()
  code = predict.run(str(resnet[2]), [str(photos / "china.jpg"), str(tmp_path / "broken.png")],
                     strict=True, out=out, err=err)
  assert code == 2 and out.getvalue() == ""
  assert err.getvalue().startswith(f"skipped {tmp_path / 'broken.png'}: not a readable image")


def _bert_checkpoint(dst, *, head, names=None, legacy=False, seed=0):
  kwargs = dict(TINY_BERT, head=head, num_labels=len(TEXT_CLASSES), pooler=True)
  model = models.build_model("bert", **kwargs)
  init = jax.jit(functools.partial(models.init_variables, "bert", model))  # eager: 10x slower
  variables = jax.tree.map(np.array, init(jax.random.key(seed)))
  if head:  # a head with spread-out logits, so the top-1 is never a near tie
    variables["params"]["classifier"]["kernel"] *= 50
  prep = {"kind": "text", "tokenizer": "tokenizer.json", "max_len": 32}
  if legacy:  # runs before config.json had "class_names" kept them in preprocessing
    prep = {"tokenizer": "tokenizer.json", "max_len": 32, "class_names": names}
  pretrained.save_pretrained(dst, "bert", kwargs, variables, preprocessing=prep,
                             files={"tokenizer.json": minilm_tokenizer_path()},
                             class_names=None if legacy else names)
  return model, variables


def _reference_top1(model, variables, texts):
  from tokenizers import Tokenizer  # noqa: PLC0415

  tok = Tokenizer.from_file(str(minilm_tokenizer_path()))
  tok.enable_truncation(max_length=32)
  tok.enable_padding(length=32, pad_id=0, pad_token="[PAD]")
  enc = tok.encode_batch(texts)
  ids = np.asarray([e.ids for e in enc], np.int32)
  mask = np.asarray([e.attention_mask for e in enc], np.int32)
  logits, _ = jax.jit(model.apply)(variables, ids, attention_mask=mask)
  return [TEXT_CLASSES[i] for i in np.asarray(logits).argmax(1)]


def test_predict_on_a_fine_tuned_text_model(tmp_path):
  model, variables = _bert_checkpoint(tmp_path / "run" / "model", head="classification",
                                      names=TEXT_CLASSES)
  texts = ["what a wonderful day", "the train is late again", "ok I guess",
           "absolutely terrible service", "Loved the new album!!"]
  (tmp_path / "tweets.txt").write_text("\n".join(texts[:4]) + "\n\n")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
  out, err = io.StringIO(), io.StringIO()
  code = predict.run(str(tmp_path / "run"), [str(tmp_path / "tweets.txt"),
                                              str(tmp_path / "latin1.txt"), texts[4]],
                     as_json=True, top_k=2, out=out, err=err)
  assert code == 1
  assert err.getvalue().strip() == (f"skipped {tmp_path / 'latin1.txt'}: not UTF-8 text "
                                    "(byte 0xe9 at offset 3)")
  rows = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [r["text"] for r in rows] == texts
  assert rows[0]["input"] == f"{tmp_path / 'tweets.txt'}:1" and rows[4]["input"] == texts[4]
  assert [r["labels"][0] for r in rows] == _reference_top1(model, variables, texts)
  assert all(set(r["labels"]) <= set(TEXT_CLASSES) and len(r["labels"]) == 2 for r in rows)


def test_class_names_fallbacks(tmp_path):
  _bert_checkpoint(tmp_path / "legacy", head="classification", names=TEXT_CLASSES, legacy=True)
  assert jaxpretrain.load(tmp_path / "legacy").class_names == TEXT_CLASSES
  _bert_checkpoint(tmp_path / "unnamed", head="classification")
  labels, _ = jaxpretrain.load(tmp_path / "unnamed").classify("hello", top_k=3)
  assert sorted(labels[0]) == ["class_0", "class_1", "class_2"]
  config = json.loads((tmp_path / "unnamed" / "config.json").read_text())
  config["class_names"] = ["a", "b"]
  (tmp_path / "unnamed" / "config.json").write_text(json.dumps(config))
  with pytest.raises(api.LoadError, match="class_names has 2 names but the head has 3"):
    jaxpretrain.load(tmp_path / "unnamed")


def test_no_head_says_use_embed_or_fine_tune(tmp_path):
  _bert_checkpoint(tmp_path / "bare", head=None)
  loaded = jaxpretrain.load(tmp_path / "bare")
  assert loaded.num_classes is None and loaded.class_names is None
  with pytest.raises(api.LoadError, match=r"no classification head; use embed\(\)/features\(\)"
                                          r".*or fine-tune it first"):
    loaded.classify(["hello"])
  assert loaded.embed(["hello", "a longer text here"]).shape == (2, 16)
  assert loaded.features(["hello"]).shape == (1, 16)  # the pooler, as select uses
  err = io.StringIO()
  assert predict.run(str(tmp_path / "bare"), ["hello"], out=io.StringIO(), err=err) == 2
  assert "no classification head" in err.getvalue() and "fine-tune" in err.getvalue()


def test_load_sources_and_cache(resnet, tmp_path, monkeypatch):
  """Sources convert into the cache once, never into the source; errors are one line."""
  _, path, folder = resnet
  logs = []
  with pytest.raises(api.LoadError, match="weights file: name its architecture with arch="):
    jaxpretrain.load(path, cache_dir=tmp_path / "cache")
  with pytest.raises(api.LoadError, match="no such file or folder"):
    jaxpretrain.load(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(api.LoadError, match="nor a Hugging Face folder"):
    jaxpretrain.load(tmp_path / "empty")
  first, _ = api.resolve(path, arch="resnet18", cache_dir=tmp_path / "cache", log=logs.append)
  again, _ = api.resolve(path, arch="resnet18", cache_dir=tmp_path / "cache", log=logs.append)
  assert first == again and first.parent == tmp_path / "cache" and len(logs) == 1
  assert api.resolve(folder)[0] == folder  # a checkpoint is used in place
  monkeypatch.setenv(api.CACHE_ENV, str(tmp_path / "file"))
  (tmp_path / "file").write_text("a file where the cache should be")
  loaded = jaxpretrain.load(path, arch="resnet18", log=logs.append)
  assert "converting into a temporary folder" in logs[-2]
  assert not loaded.path.exists()  # the temporary conversion is gone once loaded
  assert loaded.num_classes == 1000


def test_hugging_face_classifier_carries_id2label(tmp_path, highest_precision):
  transformers = pytest.importorskip("transformers")
  config = transformers.BertConfig(**TINY_BERT, id2label=dict(enumerate(TEXT_CLASSES)))
  torch.manual_seed(0)
  hf = transformers.BertForSequenceClassification(config).eval()
  hf.save_pretrained(tmp_path / "hf")
  shutil.copyfile(minilm_tokenizer_path(), tmp_path / "hf" / "tokenizer.json")
  before = sorted(p.name for p in (tmp_path / "hf").iterdir())
  loaded = jaxpretrain.load(tmp_path / "hf", cache_dir=tmp_path / "cache")
  assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == before
  assert loaded.class_names == TEXT_CLASSES
  texts = ["a short one", "and a somewhat longer sentence than that"]
  batch = loaded.preprocess(texts)
  with torch.no_grad():
    ref = hf(**{k: torch.from_numpy(v).long() for k, v in batch.items()}).logits.numpy()
  assert rel_err(loaded.logits(texts), ref) <= LOGIT_RTOL


def test_hugging_face_vit_classifier_with_its_processor(photos, tmp_path, highest_precision):
  """A ViT folder's preprocessor_config.json and id2label drive load(); logits equal HF's."""
  transformers = pytest.importorskip("transformers")
  config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16,
                                  num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, id2label={0: "cat", 1: "dog"})
  torch.manual_seed(0)
  hf = transformers.ViTForImageClassification(config).eval()
  hf.save_pretrained(tmp_path / "vit")
  processor = transformers.ViTImageProcessorPil(size={"height": 32, "width": 32},
                                                image_mean=MEAN, image_std=STD, resample=3)
  processor.save_pretrained(tmp_path / "vit")
  loaded = jaxpretrain.load(tmp_path / "vit", cache_dir=tmp_path / "cache")
  assert loaded.class_names == ["cat", "dog"]
  assert loaded.preprocessing["interpolation"] == "bicubic"
  paths = sorted(photos.iterdir())
  pixels = processor([PIL.Image.open(p).convert("RGB") for p in paths],
                     return_tensors="pt")["pixel_values"]
  with torch.no_grad():
    ref = hf(pixel_values=pixels).logits.numpy()
  assert rel_err(loaded.logits(paths), ref) <= LOGIT_RTOL


def test_convert_resize_and_crop_overrides(resnet, tmp_path):
  """--resize_size/--crop_size (here through convert.convert) replace torchvision's defaults."""
  from ports import convert  # noqa: PLC0415
  from ports.rules import PortError  # noqa: PLC0415

  dst = convert.convert(resnet[1], tmp_path / "r18", arch="resnet18", resize_size=160,
                        crop_size=128)
  prep = json.loads((dst / "config.json").read_text())["preprocessing"]
  assert (prep["resize"], prep["crop"]) == ({"shorter": 160}, [128, 128])
  assert jaxpretrain.load(dst).preprocess([np.zeros((90, 200, 3), np.uint8)])["image"].shape == (
      1, 128, 128, 3)
  (tmp_path / "hf").mkdir()
  with pytest.raises(PortError, match="--resize_size/--crop_size are for torchvision files"):
    convert.read_source(tmp_path / "hf", resize_size=160)
