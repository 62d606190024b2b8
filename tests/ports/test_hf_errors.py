"""Hugging Face folders that cannot be converted fail clearly and leave DST unwritten.

The folders are written without torch: a tiny jaxpretrain BERT/ViT exported with the port's
own `from_jaxpretrain`, then broken one way per test.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxpretrain import models, params
from ports import convert, hf_bert, hf_common, hf_vit, readers
from ports.rules import PortError

BERT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=16)
VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
           image_size=16, patch_size=4)


def tiny_export(port, family, **kwargs):
  """A tiny random jaxpretrain `family` model, exported with the port's `from_jaxpretrain`."""
  model = models.build_model(family, **kwargs)
  variables = jax.jit(lambda: models.init_variables(family, model, jax.random.key(0)))()
  config = {"model": family, "model_kwargs": hf_common.module_fields(model),
            "source": {"format": "huggingface", "model_type": family}}
  return port.from_jaxpretrain(config, params.flatten({"params": variables["params"]}))


def write_folder(folder, family="bert", shards=1, **kwargs):
  """A Hugging Face folder (config.json + safetensors, `shards` files) of a tiny random model."""
  port, base = (hf_bert, BERT) if family == "bert" else (hf_vit, VIT)
  exported = tiny_export(port, family, **base, **kwargs)
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(exported.hf_config))
  keys = sorted(exported.state_dict)
  if shards == 1:
    readers.save_safetensors(exported.state_dict, folder / "model.safetensors")
    return folder
  weight_map = {}
  for i in range(shards):
    name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    part = {k: exported.state_dict[k] for k in keys[i::shards]}
    readers.save_safetensors(part, folder / name)
    weight_map.update(dict.fromkeys(part, name))
  (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  return folder


def edit_config(folder, **changes):
  cfg = json.loads((folder / "config.json").read_text())
  cfg.update(changes)
  (folder / "config.json").write_text(json.dumps(cfg))


def convert_fails(src, dst, match):
  """Converts SRC into DST expecting a PortError matching every regex in `match`."""
  with pytest.raises(PortError) as info:
    convert.convert(src, dst)
  for pattern in match:
    assert pattern in str(info.value), f"{pattern!r} not in:\n{info.value}"
  assert not dst.exists()
  assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}")]
  return str(info.value)


def test_a_good_folder_converts(tmp_path):
  src = write_folder(tmp_path / "hf")
  convert.convert(src, tmp_path / "out")
  assert (tmp_path / "out" / "config.json").is_file()


def test_unknown_model_type(tmp_path):
  src = write_folder(tmp_path / "hf")
  edit_config(src, model_type="gpt2")
  convert_fails(src, tmp_path / "out", [str(src / "config.json"), "'gpt2'", "known:", "bert"])


def test_unsupported_architecture(tmp_path):
  src = write_folder(tmp_path / "hf")
  edit_config(src, architectures=["BertForTokenClassification"])
  convert_fails(src, tmp_path / "out",
                ["BertForTokenClassification", "known:", "BertForSequenceClassification"])


def test_hidden_size_disagrees_with_weights(tmp_path):
  src = write_folder(tmp_path / "hf")
  edit_config(src, hidden_size=48)
  convert_fails(src, tmp_path / "out",
                [str(src / "model.safetensors"), "config.json",
                 "~ embeddings.word_embeddings.weight: weights (50, 32) vs config.json (50, 48)"])


@pytest.mark.parametrize("layers,line", [
    (3, "- encoder.layer.2.attention.self.query.weight (32, 32)"),
    (1, "+ encoder.layer.1.attention.self.query.weight (32, 32)"),
])
def test_layer_count_disagrees_with_weights(tmp_path, layers, line):
  src = write_folder(tmp_path / "hf")
  edit_config(src, num_hidden_layers=layers)
  convert_fails(src, tmp_path / "out", [line])


def test_vit_patch_size_disagrees_with_weights(tmp_path):
  src = write_folder(tmp_path / "hf", family="vit")
  edit_config(src, patch_size=8)
  convert_fails(src, tmp_path / "out",
                ["~ embeddings.patch_embeddings.projection.weight: weights (32, 3, 4, 4) vs "
                 "config.json (32, 3, 8, 8)"])


def test_truncated_safetensors(tmp_path):
  src = write_folder(tmp_path / "hf")
  path = src / "model.safetensors"
  os.truncate(path, path.stat().st_size * 2 // 3)
  message = convert_fails(src, tmp_path / "out", [str(path), "truncated or corrupt"])
  assert "tensor '" in message  # names the first tensor that no longer fits


def test_corrupt_safetensors_header(tmp_path):
  src = write_folder(tmp_path / "hf")
  path = src / "model.safetensors"
  data = bytearray(path.read_bytes())
  data[8:20] = b"not json!!!!"
  path.write_bytes(bytes(data))
  convert_fails(src, tmp_path / "out", [str(path), "not valid JSON"])


def test_missing_shard(tmp_path):
  src = write_folder(tmp_path / "hf", shards=3)
  (src / "model-00002-of-00003.safetensors").unlink()
  convert_fails(src, tmp_path / "out",
                [str(src / "model.safetensors.index.json"), "model-00002-of-00003.safetensors"])


def test_sharded_folder_converts(tmp_path):
  convert.convert(write_folder(tmp_path / "hf", shards=3), tmp_path / "out")


def test_untied_decoder(tmp_path):
  src = write_folder(tmp_path / "hf", head="mlm", pooler=False)
  weights = dict(readers.SafetensorsFile(src / "model.safetensors"))
  weights["cls.predictions.decoder.weight"] = weights["bert.embeddings.word_embeddings.weight"] + 1
  readers.save_safetensors(weights, src / "model.safetensors")
  convert_fails(src, tmp_path / "out", ["cls.predictions.decoder.weight", "tied"])


def test_cli_prints_the_error_and_writes_nothing(tmp_path):
  src = write_folder(tmp_path / "hf")
  edit_config(src, hidden_size=48)
  dst = tmp_path / "out"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "ports.convert", str(src), str(dst)],
                        capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 2  # bad input: status 2, as absl's usage errors
  assert "error:" in proc.stderr and "embeddings.word_embeddings.weight" in proc.stderr
  assert not dst.exists()
