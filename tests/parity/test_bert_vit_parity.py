"""Tiny random-init transformers BERT / RoBERTa / ViT models against their converted ports.

Each reference is built from a seeded tiny config, its weights perturbed (so LayerNorm scales
and zero-initialized biases are tested too), saved as Hugging Face saves it (one safetensors
file, sharded safetensors, or a torch pickle with tied copies), converted with
`ports.convert.convert`, loaded with `jaxpretrain.load_pretrained` and compared layer by layer,
then exported back and reloaded by transformers.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxpretrain
from ports import convert, hf_bert
from tests import torch_refs
from tests.torch_refs import rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# float32 at "highest" matmul precision; measured <= 3.1e-7 (summation order only).
RTOL = 1e-5
# Gradients go through softmax/LayerNorm backward, whose float32 rounding differs from torch's
# autograd kernels; measured ~2e-6, so 1e-4 leaves margin without hiding a wrong mapping.
GRAD_RTOL = 1e-4
# A leaf whose true gradient is zero (attention key biases: softmax ignores a per-row shift)
# holds only rounding noise; its error is measured against this fraction of the largest
# gradient of any leaf instead of its own noise.
GRAD_FLOOR = 1e-3

BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=24, type_vocab_size=2,
            hidden_act="gelu", layer_norm_eps=1e-12)
ROBERTA = dict(BERT, max_position_embeddings=26, type_vocab_size=1, pad_token_id=1,
               bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu_new")
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
           image_size=16, patch_size=4, num_channels=3, hidden_act="gelu")

# case -> (transformers class, config class, config kwargs, how the folder is written)
CASES = {
    "BertModel": ("BertModel", "BertConfig", BERT, "safetensors"),
    "BertForSequenceClassification": ("BertForSequenceClassification", "BertConfig",
                                      dict(BERT, num_labels=3), "safetensors"),
    "BertForMaskedLM": ("BertForMaskedLM", "BertConfig", BERT, "safetensors"),
    "BertModel-sharded": ("BertModel", "BertConfig", BERT, "sharded"),
    "BertForMaskedLM-bin": ("BertForMaskedLM", "BertConfig", BERT, "bin"),
    "RobertaForMaskedLM": ("RobertaForMaskedLM", "RobertaConfig", ROBERTA, "safetensors"),
    "ViTModel": ("ViTModel", "ViTConfig", VIT, "safetensors"),
    "ViTForImageClassification": ("ViTForImageClassification", "ViTConfig",
                                  dict(VIT, num_labels=5), "safetensors"),
}


def _save(model, folder, case):
  how = CASES[case][3]
  if how == "safetensors":
    model.save_pretrained(folder)
  elif how == "sharded":
    model.save_pretrained(folder, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
  else:  # transformers 5 writes only safetensors; a pickle as older versions (and hubs) hold
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


@pytest.fixture(scope="module")
def ported(tmp_path_factory):
  """case -> (reference torch model, HF folder, checkpoint folder, model, variables), cached."""
  return torch_refs.hf_ported(tmp_path_factory, CASES, save=_save)


def _text_inputs(cfg, batch=3, seq=12):
  rng = np.random.RandomState(0)
  pad = cfg.get("pad_token_id", 0)
  ids = rng.randint(3, cfg["vocab_size"], (batch, seq)).astype(np.int32)
  lengths = np.array([seq, 7, 3])[:batch]
  mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask == 1, ids, pad).astype(np.int32)
  types = (rng.rand(batch, seq) < 0.5).astype(np.int32) * (cfg["type_vocab_size"] > 1)
  return ids, mask, types


def _images(cfg, batch=2, size=None):
  size = size or (cfg["image_size"], cfg["image_size"])
  return np.random.RandomState(0).randn(batch, *size, cfg["num_channels"]).astype(np.float32)


def _run_text(ref, model, variables, cfg):
  ids, mask, types = _text_inputs(cfg)
  with torch.no_grad():
    r = ref(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types, dtype=torch.long), output_hidden_states=True)
  _, aux = model.apply(variables, ids, attention_mask=mask, token_type_ids=types)
  return r, aux, mask.astype(bool)


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_and_intermediates_match(ported, case, highest_precision):
  ref, _, _, model, variables = ported(case)
  cfg = CASES[case][2]
  if case.startswith("ViT"):
    images = _images(cfg)
    with torch.no_grad():
      r = ref(torch.tensor(images).permute(0, 3, 1, 2), output_hidden_states=True)
    _, aux = model.apply(variables, images)
    real = np.ones(aux["embeddings"].shape[:2], bool)
  else:
    r, aux, real = _run_text(ref, model, variables, cfg)
  names = ["embeddings"] + [f"layer_{i}" for i in range(cfg["num_hidden_layers"])]
  errors = {n: rel_err(np.asarray(aux[n])[real], h.numpy()[real])
            for n, h in zip(names, r.hidden_states, strict=True)}
  if hasattr(r, "last_hidden_state"):
    errors["last_hidden_state"] = rel_err(np.asarray(aux["last_hidden_state"])[real],
                                          r.last_hidden_state.numpy()[real])
  if getattr(r, "pooler_output", None) is not None:
    errors["pooled"] = rel_err(aux["pooled"], r.pooler_output.numpy())
  if hasattr(r, "logits"):
    logits = np.asarray(aux["logits"])
    errors["logits"] = rel_err(logits[real] if logits.ndim == 3 else logits,
                               r.logits.numpy()[real] if logits.ndim == 3 else r.logits.numpy())
  assert max(errors.values()) <= RTOL, errors


def test_architecture_from_config(ported):
  expect = {"BertModel": (None, True), "BertForSequenceClassification": ("classification", True),
            "BertForMaskedLM-bin": ("mlm", False), "ViTModel": (None, True),
            "ViTForImageClassification": ("classification", False)}
  for case, (head, pooler) in expect.items():
    _, _, ckpt, model, _ = ported(case)
    config = json.loads((ckpt / "config.json").read_text())
    assert (model.head, model.pooler) == (head, pooler), case
    assert config["source"]["prefixed"] == (head is not None), case
  assert ported("BertForSequenceClassification")[3].num_labels == 3
  vit_cfg = json.loads((ported("ViTModel")[2] / "config.json").read_text())
  assert vit_cfg["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
  assert vit_cfg["preprocessing"]["image_size"] == [16, 16]


def test_vit_preprocessing_from_processor_config(ported, tmp_path):
  import shutil  # noqa: PLC0415

  folder = tmp_path / "vit"
  shutil.copytree(ported("ViTModel")[1], folder)
  transformers.ViTImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                 size={"height": 16, "width": 16}).save_pretrained(folder)
  converted, files = convert.read_source(folder)
  assert converted.preprocessing["mean"] == [0.485, 0.456, 0.406]
  assert converted.preprocessing["std"] == [0.229, 0.224, 0.225]
  assert converted.preprocessing["image_size"] == [16, 16]
  assert "preprocessor_config.json" in files


def test_vit_interpolated_position_embeddings(ported, highest_precision):
  ref, _, _, model, variables = ported("ViTModel")
  images = _images(CASES["ViTModel"][2], size=(24, 20))  # grid 4x4 -> 6x5
  with torch.no_grad():
    r = ref(torch.tensor(images).permute(0, 3, 1, 2), interpolate_pos_encoding=True)
  out, aux = model.apply(variables, images)
  assert out.shape == (2, 1 + 6 * 5, 32)
  assert rel_err(out, r.last_hidden_state.numpy()) <= RTOL
  assert rel_err(aux["pooled"], r.pooler_output.numpy()) <= RTOL


def test_bert_classification_gradients(ported, highest_precision):
  """d(mean cross-entropy)/d(every parameter), deterministic (train=False / eval()).

  Metric, per parameter: max|g - g_torch| / max(max|g_torch|, GRAD_FLOOR * max over all
  parameters of max|g_torch|), at most GRAD_RTOL for every parameter.
  """
  ref, folder, _, model, variables = ported("BertForSequenceClassification")
  cfg = CASES["BertForSequenceClassification"][2]
  ids, mask, types = _text_inputs(cfg)
  labels = np.array([0, 2, 1])
  ref.zero_grad()
  out = ref(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types, dtype=torch.long))
  torch.nn.functional.cross_entropy(out.logits, torch.tensor(labels)).backward()
  torch_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
  # The port's own table maps torch's gradient names onto Flax paths.
  hf_config = json.loads((folder / "config.json").read_text())
  expected = hf_bert.to_jaxpretrain(torch_grads, hf_config=hf_config).flat_variables

  def loss_fn(params):
    logits, _ = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types)
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).mean()

  grads = jax.grad(loss_fn)(variables["params"])
  flat = {f"params/{k}": v for k, v in jaxpretrain.params.flatten(grads).items()}
  assert set(flat) == set(expected)
  floor = GRAD_FLOOR * max(np.abs(g).max() for g in expected.values())
  errors = {k: float(np.abs(np.asarray(flat[k], np.float64) - expected[k]).max()
                     / max(np.abs(expected[k]).max(), floor)) for k in expected}
  assert max(errors.values()) <= GRAD_RTOL, sorted(errors.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.parametrize("case", ["BertForSequenceClassification", "BertForMaskedLM-bin",
                                  "BertModel-sharded", "RobertaForMaskedLM",
                                  "ViTForImageClassification"])
def test_export_round_trip(ported, case, tmp_path):
  ref, folder, ckpt, _, _ = ported(case)
  tied = {f"{head}.decoder.{w}" for head in ("cls.predictions", "lm_head")
          for w in ("weight", "bias")}
  out = torch_refs.assert_export_round_trip(ref, folder, ckpt, tmp_path / "exported",
                                            CASES[case][0], tied)
  assert type(transformers.AutoModel.from_pretrained(out)).__name__ in ("BertModel",
                                                                        "RobertaModel",
                                                                        "ViTModel")
