"""CLIP zero-shot classification from label prompts: `Pretrained.zero_shot`, `classify(labels=)`
and `python -m jaxpretrain.predict --labels`.

A seeded tiny transformers CLIPModel (tests/parity/test_families2_parity.py's config, in its
modern and legacy end-of-text forms) is saved with a small WordLevel tokenizer.json made like
CLIP's (start and end-of-text tokens added by a TemplateProcessing post-processor, end-of-text
the largest id) and a CLIPImageProcessor config, converted with ports.convert, and compared with
transformers' softmax(logits_per_image) on the same tokenized prompts and pixels.
"""

import dataclasses
import io
import json
import shutil

import jax
import numpy as np
import PIL.Image
import pytest

import jaxpretrain
from jaxpretrain import api, models, predict, pretrained
from jaxpretrain.models import clip as jclip
from tests import torch_refs
from tests.parity.test_families2_parity import CASES as PARITY_CASES
from tests.parity.test_families2_parity import CLIP, CLIP_TEXT
from tests.torch_refs import rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

# float32 at "highest" matmul precision on both sides from the same ids and pixels: only the
# summation order differs (the parity tests hold CLIP's logits to the same bound).
RTOL = 1e-5
LABELS = ["cat", "dog", "fish"]
WORDS = ["a", "photo", "of", "an", "image", "the", *LABELS, "bird", "car"]
SIZE = CLIP["vision_config"]["image_size"]
_SAVE = torch_refs.clip_saver(WORDS, CLIP_TEXT["vocab_size"], SIZE)
# The parity tests' CLIP cases (modern and legacy end-of-text, and the image classifier).
CASES = {k: PARITY_CASES[k] for k in ("CLIPModel", "CLIPModel-legacy-eos",
                                      "CLIPForImageClassification")}


@pytest.fixture(scope="module")
def ported(tmp_path_factory):
  return torch_refs.hf_ported(tmp_path_factory, CASES, save=_SAVE)


@pytest.fixture(scope="module")
def loaded(ported):
  """case -> jaxpretrain.load of its checkpoint (batch_size 2: 3 labels and 3 images make two
  batches each), cached so its compiled functions serve every test."""
  cache = {}

  def get(case):
    if case not in cache:
      cache[case] = jaxpretrain.load(ported(case)[2], batch_size=2)
    return cache[case]

  return get


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """Three seeded RGB PNGs of different sizes (resized and cropped to the model's 16)."""
  folder = tmp_path_factory.mktemp("clip_photos")
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate([(20, 24), (16, 16), (30, 18)]):
    PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"p{i}.png")
  return sorted(folder.iterdir())


@pytest.mark.parametrize("case", ["CLIPModel", "CLIPModel-legacy-eos"])
def test_zero_shot_equals_transformers(ported, loaded, photos, case, highest_precision):
  ref = ported(case)[0]
  loaded = loaded(case)
  assert loaded.tokenizer is not None and loaded.num_classes is None
  assert loaded.prompt_preprocessing["max_len"] == CLIP_TEXT["max_position_embeddings"]
  probs = loaded.zero_shot(photos, LABELS)
  tokens = loaded.prompt_tokens(jclip.prompts(LABELS))
  ids, mask = tokens["input_ids"], tokens["attention_mask"]
  assert ids[0, :7].tolist() == [1, *(WORDS.index(w) + 3 for w in ("a", "photo", "of", "a",
                                                                     "cat")), 60]
  pixels = loaded.preprocess(photos)["image"]
  assert pixels.shape == (3, SIZE, SIZE, 3)
  with torch.no_grad():
    r = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2))
  want = r.logits_per_image.softmax(-1).numpy()
  assert probs.dtype == np.float32 and probs.shape == (3, 3)
  assert rel_err(probs, want) <= RTOL, rel_err(probs, want)
  # Another template is other prompts: other probabilities.
  other = loaded.zero_shot(photos, LABELS, template="an image of the {label}")
  assert np.abs(other - probs).max() > 1e-4


def test_classify_with_labels_orders_them_by_probability(loaded, photos):
  loaded = loaded("CLIPModel")
  probs = loaded.zero_shot(photos, LABELS)
  names, scores = loaded.classify(photos, top_k=2, labels=LABELS)
  for row, got, s in zip(probs, names, scores, strict=True):
    order = np.argsort(-row, kind="stable")[:2]
    assert got == [LABELS[i] for i in order]
    np.testing.assert_array_equal(s, row[order])
  # A tuple in another order: the same probabilities under the new names.
  turned, scores = loaded.classify(photos[:2], top_k=3, labels=("fish", "cat", "dog"))
  for row, got, s in zip(probs[:2], turned, scores, strict=True):
    np.testing.assert_allclose(s, np.sort(row)[::-1], rtol=1e-6)
    assert got[0] == LABELS[int(np.argmax(row))]


def test_predict_cli_with_labels(ported, loaded, photos):
  ckpt = str(ported("CLIPModel")[2])
  loaded = loaded("CLIPModel")
  folder = str(photos[0].parent)
  out, err = io.StringIO(), io.StringIO()
  assert predict.run(ckpt, [folder], labels=" cat, dog ,fish", top_k=3, out=out,
                     err=err) == 0, err.getvalue()
  lines = out.getvalue().splitlines()
  assert lines[0].split() == ["input", "rank", "prob", "label"] and len(lines) == 1 + 3 * 3
  assert {line.split()[-1] for line in lines[1:]} == set(LABELS)
  out = io.StringIO()
  assert predict.run(ckpt, [folder], labels=LABELS, prompt="an image of the {label}",
                     as_json=True, top_k=2, out=out, err=err) == 0
  rows = [json.loads(line) for line in out.getvalue().splitlines()]
  probs = loaded.zero_shot(photos, LABELS, "an image of the {label}")
  for row, p in zip(rows, probs, strict=True):
    assert row["labels"] == [LABELS[i] for i in row["class_ids"]]
    assert row["class_ids"] == np.argsort(-p, kind="stable")[:2].tolist()
    np.testing.assert_allclose(row["scores"], p[row["class_ids"]], rtol=1e-6)
  # Without --labels the CLIPModel has no head: today's error, now pointing at --labels.
  err = io.StringIO()
  assert predict.run(ckpt, [folder], out=io.StringIO(), err=err) == 2
  assert "no classification head" in err.getvalue() and "--labels=" in err.getvalue()
  assert len(err.getvalue().splitlines()) == 1


@pytest.mark.parametrize("labels,message", [
    ("cat,,dog", "--labels='cat,,dog': label 2 is empty"),
    ("cat, dog,cat", "--labels='cat, dog,cat': 'cat' appears twice"),
    ("", "--labels='': label 1 is empty"),
])
def test_predict_refuses_bad_labels(ported, photos, labels, message):
  out, err = io.StringIO(), io.StringIO()
  assert predict.run(str(ported("CLIPModel")[2]), [str(photos[0])], labels=labels, out=out,
                     err=err) == 2
  assert err.getvalue().startswith(f"error: {message}") and out.getvalue() == ""
  assert len(err.getvalue().splitlines()) == 1


def _tiny_vit(dst):
  kwargs = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                image_size=16, patch_size=8, head="classification", num_labels=2)
  model = models.build_model("vit", **kwargs)
  variables = jax.tree.map(np.array, jax.jit(
      lambda k: models.init_variables("vit", model, k))(jax.random.key(0)))
  pretrained.save_pretrained(dst, "vit", kwargs, variables,
                             preprocessing={"kind": "image", "image_size": 16})
  return dst


def test_refusals(ported, loaded, photos, tmp_path):
  loaded = loaded("CLIPModel")
  refusals = [
      ([], None, "labels=[]: give at least one label"),
      (["cat", "dog", "cat"], None, "label 'cat' appears twice; labels must be distinct"),
      (["cat", 3], None, "label 3 (int) is not a string"),
      (["cat", " "], None, "label ' ': labels are non-empty strings"),
      ("cat", None, "labels='cat': give a list of label strings"),
      (LABELS, "a photo", "template='a photo' has no '{label}'"),
      (LABELS, "{x} of a {label}", "template='{x} of a {label}': only '{label}' may be in"),
  ]
  for labels, template, message in refusals:
    with pytest.raises(api.LoadError) as e:
      loaded.classify(photos, labels=labels, template=template)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
  # A tokenizer that adds no end-of-text token: the text tower would pool elsewhere.
  plain = tokenizers.Tokenizer.from_str(loaded.tokenizer.to_str())
  plain.post_processor = tokenizers.processors.TemplateProcessing(
      single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", 1)])
  with pytest.raises(api.LoadError, match=r"tokenizer.json: the prompt 'a photo of a cat' "
                                          r"tokenizes to \[1, 3, 4, 5, 3, 9\]; CLIP's text "
                                          r"tower pools at the end-of-text token, so prompts "
                                          r"must hold the end-of-text token 60$"):
    dataclasses.replace(loaded, tokenizer=plain, _compiled={}).zero_shot(photos, LABELS)
  # Models without a text tower: the image-only CLIP port and a ViT.
  head_only = jaxpretrain.load(ported("CLIPForImageClassification")[2])
  with pytest.raises(api.LoadError, match=r"labels need a CLIP model with its text tower "
                                          r"\(CLIPModel\); this model is a CLIP converted "
                                          r"without its text tower"):
    head_only.zero_shot(photos, LABELS)
  assert head_only.num_classes == 3 and head_only.tokenizer is None  # its tower is gone
  vit = jaxpretrain.load(_tiny_vit(tmp_path / "vit"))
  with pytest.raises(api.LoadError, match="labels need a CLIP model .* this model is 'vit'"):
    vit.classify(photos, labels=LABELS)
  err = io.StringIO()
  assert predict.run(str(tmp_path / "vit"), [str(photos[0])], labels="cat,dog",
                     out=io.StringIO(), err=err) == 2
  assert "labels need a CLIP model" in err.getvalue()
  # A CLIPModel folder without its tokenizer.json loads, and says so when given labels.
  bare = tmp_path / "bare"
  shutil.copytree(ported("CLIPModel")[2], bare)
  (bare / "tokenizer.json").unlink()
  with pytest.raises(api.LoadError, match=r"bare: no tokenizer.json for the label prompts; "
                                          r"convert from a CLIP folder that has one"):
    jaxpretrain.load(bare).zero_shot(photos, LABELS)
