"""Tiny random-init transformers DistilBERT / DINOv2 / CLIP models against their converted ports.

Each reference is built from a seeded tiny config with non-default sizes, its weights perturbed
(so LayerNorm scales, layer scales and zero-initialized biases are tested too), saved with
save_pretrained, converted with `ports.convert.convert`, loaded with `jaxpretrain.load_pretrained`
and compared layer by layer on seeded inputs with padding, then exported back bit-exact and
reloaded by transformers.
"""

import json

import numpy as np
import pytest

from jaxpretrain.models import clip as jclip
from tests import torch_refs
from tests.torch_refs import rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# float32 at "highest" matmul precision; measured <= 5e-7 (summation order only).
RTOL = 1e-5

DISTIL = dict(vocab_size=61, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
              max_position_embeddings=20, activation="gelu")
DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
            image_size=28, patch_size=7, layerscale_value=0.5, layer_norm_eps=1e-6)
CLIP_TEXT = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=16, eos_token_id=60,
                 pad_token_id=0, bos_token_id=1)
CLIP_VISION = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=29, image_size=16, patch_size=4)
CLIP = dict(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=20)

# case -> (transformers class, config class, config kwargs)
CASES = {
    "DistilBertModel": ("DistilBertModel", "DistilBertConfig", DISTIL),
    "DistilBertForSequenceClassification": ("DistilBertForSequenceClassification",
                                            "DistilBertConfig", dict(DISTIL, num_labels=3)),
    "Dinov2Model": ("Dinov2Model", "Dinov2Config", DINO),
    "Dinov2WithRegistersModel": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                                 dict(DINO, num_register_tokens=2)),
    "Dinov2ForImageClassification": ("Dinov2ForImageClassification", "Dinov2Config",
                                     dict(DINO, num_labels=3)),
    "CLIPModel": ("CLIPModel", "CLIPConfig", CLIP),
    "CLIPModel-legacy-eos": ("CLIPModel", "CLIPConfig",
                             dict(CLIP, text_config=dict(CLIP_TEXT, eos_token_id=2))),
    "CLIPForImageClassification": ("CLIPForImageClassification", "CLIPConfig",
                                   dict(CLIP, num_labels=3)),
}


@pytest.fixture(scope="module")
def ported(tmp_path_factory):
  """case -> (reference torch model, HF folder, checkpoint folder, model, variables), cached."""
  return torch_refs.hf_ported(tmp_path_factory, CASES)


def _text(vocab, batch=3, seq=12, eos=None):
  """Seeded ids with right padding (lengths seq, 7, 3); `eos` ends each row when given."""
  rng = np.random.RandomState(0)
  lengths = np.array([seq, 7, 3])[:batch]
  mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.randint(3, vocab - 1, (batch, seq))
  if eos is not None:
    ids[np.arange(batch), lengths - 1] = eos
  return np.where(mask == 1, ids, 0).astype(np.int32), mask


def _images(batch, size, channels=3, seed=0):
  return np.random.RandomState(seed).randn(batch, *size, channels).astype(np.float32)


def _nchw(images):
  return torch.tensor(images).permute(0, 3, 1, 2)


def _hidden_errors(aux, hidden_states, real=None, names=None):
  names = names or ["embeddings"] + [f"layer_{i}" for i in range(len(hidden_states) - 1)]
  pick = (lambda a: np.asarray(a)[real]) if real is not None else np.asarray
  return {n: rel_err(pick(aux[n]), pick(h.numpy())) for n, h in zip(names, hidden_states,
                                                                     strict=True)}


@pytest.mark.parametrize("case", ["DistilBertModel", "DistilBertForSequenceClassification"])
def test_distilbert(ported, case, highest_precision):
  ref, _, _, model, variables = ported(case)
  ids, mask = _text(DISTIL["vocab_size"])
  with torch.no_grad():
    r = ref(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
            output_hidden_states=True)
  out, aux = model.apply(variables, ids, attention_mask=mask)
  real = mask.astype(bool)
  errors = _hidden_errors(aux, r.hidden_states, real)
  if case == "DistilBertModel":
    errors["out"] = rel_err(np.asarray(out)[real], r.last_hidden_state.numpy()[real])
  else:
    errors["logits"] = rel_err(out, r.logits.numpy())
    assert model.num_labels == 3
  assert max(errors.values()) <= RTOL, errors


# (28, 28): the learned 4x4 grid; (35, 42): 5x6, resized up and non-square; (21, 21): 3x3, down.
# The with-registers model resizes antialiased (a different kernel), so it gets both directions.
@pytest.mark.parametrize("case,size", [
    ("Dinov2Model", (28, 28)), ("Dinov2Model", (35, 42)), ("Dinov2Model", (21, 21)),
    ("Dinov2WithRegistersModel", (35, 42)), ("Dinov2WithRegistersModel", (21, 21)),
    ("Dinov2ForImageClassification", (28, 28))])
def test_dinov2(ported, case, size, highest_precision):
  ref, _, _, model, variables = ported(case)
  images = _images(2, size)
  with torch.no_grad():
    r = ref(_nchw(images), output_hidden_states=True)
  out, aux = model.apply(variables, images)
  errors = _hidden_errors(aux, r.hidden_states)
  if case.endswith("Model"):
    errors["out"] = rel_err(out, r.last_hidden_state.numpy())
    errors["pooled"] = rel_err(aux["pooled"], r.pooler_output.numpy())
  else:
    errors["logits"] = rel_err(out, r.logits.numpy())
  assert max(errors.values()) <= RTOL, errors


def test_dinov2_mask_token(ported, highest_precision):
  ref, _, _, model, variables = ported("Dinov2Model")
  images = _images(2, (28, 28))
  masked = np.random.RandomState(3).rand(2, 16) < 0.5
  with torch.no_grad():
    r = ref(_nchw(images), bool_masked_pos=torch.tensor(masked))
  out, _ = model.apply(variables, images, bool_masked_pos=masked)
  assert rel_err(out, r.last_hidden_state.numpy()) <= RTOL


@pytest.mark.parametrize("case", ["CLIPModel", "CLIPModel-legacy-eos"])
def test_clip(ported, case, highest_precision):
  ref, _, _, model, variables = ported(case)
  eos = CASES[case][2]["text_config"]["eos_token_id"]
  ids, mask = _text(CLIP_TEXT["vocab_size"], eos=None if eos == 2 else eos)
  if eos != 2:
    ids[2, 0] = eos  # a row whose first eos comes before its last token: pooled at the first
  images = _images(2, (16, 16))
  t_ids, t_mask, pix = torch.tensor(ids, dtype=torch.long), torch.tensor(mask), _nchw(images)
  with torch.no_grad():
    r = ref(input_ids=t_ids, attention_mask=t_mask, pixel_values=pix)
    vis = ref.vision_model(pixel_values=pix, output_hidden_states=True)
    txt = ref.text_model(input_ids=t_ids, attention_mask=t_mask, output_hidden_states=True)
    image_features = ref.get_image_features(pixel_values=pix).pooler_output.numpy()
    text_features = ref.get_text_features(input_ids=t_ids, attention_mask=t_mask).pooler_output
  out, aux = model.apply(variables, images, input_ids=ids, attention_mask=mask)
  real = mask.astype(bool)
  errors = _hidden_errors(aux, vis.hidden_states,
                          names=["pre_layrnorm", "layer_0", "layer_1"])
  errors.update(_hidden_errors({k[5:]: v for k, v in aux.items() if k.startswith("text_")},
                               txt.hidden_states, real))
  errors.update(
      logits_per_image=rel_err(out, r.logits_per_image.numpy()),
      logits_per_text=rel_err(aux["logits_per_text"], r.logits_per_text.numpy()),
      vision_pooled=rel_err(aux["pooled"], vis.pooler_output.numpy()),
      text_pooled=rel_err(aux["text_pooled"], txt.pooler_output.numpy()),
      image_features=rel_err(aux["image_features"], image_features),
      text_features=rel_err(aux["text_features"], text_features.numpy()),
      get_image_features=rel_err(model.apply(variables, images, method="get_image_features"),
                                 image_features),
      get_text_features=rel_err(model.apply(variables, ids, mask, method="get_text_features"),
                                text_features.numpy()))
  assert max(errors.values()) <= RTOL, errors


def test_clip_zero_shot(ported, highest_precision):
  """Label prompts -> probabilities equal to softmax(CLIPModel.logits_per_image) on them."""
  ref, _, _, model, variables = ported("CLIPModel")
  labels = ["cat", "dog", "fish"]
  assert jclip.prompts(labels) == ["a photo of a cat", "a photo of a dog", "a photo of a fish"]
  ids, mask = _text(CLIP_TEXT["vocab_size"], eos=CLIP_TEXT["eos_token_id"])  # 3 "prompts"
  images = _images(2, (16, 16))
  probs = jclip.zero_shot_classify(model, variables, images, labels,
                                   tokenize=lambda texts: (ids[:len(texts)], mask[:len(texts)]))
  with torch.no_grad():
    r = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
            pixel_values=_nchw(images))
  assert rel_err(probs, r.logits_per_image.softmax(-1).numpy()) <= RTOL


def test_clip_default_crop_is_its_image_size(ported):
  """Without preprocessor_config.json a CLIP folder's images are made at the size its position
  embeddings were learned for (CLIP_VISION's 16), not at CLIPImageProcessor's 224."""
  for case in ("CLIPModel", "CLIPForImageClassification"):
    config = json.loads((ported(case)[2] / "config.json").read_text())
    assert config["preprocessing"]["image_size"] == [16, 16], case
    assert config["preprocessing"]["mean"] == [0.48145466, 0.4578275, 0.40821073], case


def test_clip_image_classification(ported, highest_precision):
  ref, _, _, model, variables = ported("CLIPForImageClassification")
  images = _images(2, (16, 16))
  with torch.no_grad():
    r = ref(_nchw(images))
  out, aux = model.apply(variables, images)
  assert "text_model" not in variables["params"]
  assert rel_err(out, r.logits.numpy()) <= RTOL


@pytest.mark.parametrize("case", ["DistilBertForSequenceClassification", "Dinov2Model",
                                  "Dinov2WithRegistersModel", "Dinov2ForImageClassification",
                                  "CLIPModel", "CLIPForImageClassification"])
def test_export_round_trip(ported, case, tmp_path):
  ref, folder, ckpt, _, _ = ported(case)
  torch_refs.assert_export_round_trip(ref, folder, ckpt, tmp_path / "exported", CASES[case][0])
