"""Hugging Face folders of DistilBERT / DINOv2 / CLIP variants the ports do not cover fail with
one line naming the config field and value, and DST is never written.

The folders are written without torch: a tiny jaxpretrain model exported with the port's own
`from_jaxpretrain`, then its config.json edited (good folders convert in the parity tests).
"""

import json
import subprocess
import sys

import pytest

from ports import convert, hf_clip, hf_dinov2, hf_distilbert, readers
from ports.rules import PortError
from tests.ports.test_hf_errors import tiny_export

TINY = {
    "distilbert": (hf_distilbert, dict(vocab_size=40, dim=16, n_layers=1, n_heads=2,
                                       hidden_dim=24, max_position_embeddings=8)),
    "dinov2": (hf_dinov2, dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               image_size=8, patch_size=4, mlp_ratio=2)),
    "clip": (hf_clip, dict(text_vocab_size=40, text_hidden_size=16, text_intermediate_size=24,
                           text_num_hidden_layers=1, text_num_attention_heads=2,
                           text_max_position_embeddings=8, vision_hidden_size=16,
                           vision_intermediate_size=24, vision_num_hidden_layers=1,
                           vision_num_attention_heads=2, vision_image_size=8,
                           vision_patch_size=4, projection_dim=8)),
}


def write_folder(folder, family):
  port, kw = TINY[family]
  exported = tiny_export(port, family, **kw)
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(exported.hf_config))
  readers.save_safetensors(exported.state_dict, folder / "model.safetensors")
  return folder


def edit_config(folder, fn):
  cfg = json.loads((folder / "config.json").read_text())
  fn(cfg)
  (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("family,edit,needles", [
    ("dinov2", lambda c: c.update(use_swiglu_ffn=True), ["use_swiglu_ffn True", "SwiGLU"]),
    ("dinov2", lambda c: c.update(hidden_act="silu"), ["hidden_act 'silu'"]),
    ("clip", lambda c: c["text_config"].update(hidden_act="silu"),
     ["text_config.hidden_act 'silu'", "quick_gelu"]),
    ("clip", lambda c: c["text_config"].update(eos_token_id=[2, 3]),
     ["text_config.eos_token_id [2, 3]"]),
    ("clip", lambda c: c["vision_config"].update(image_size="x"),
     ["vision_config.image_size 'x'", "integer"]),
    ("clip", lambda c: c["vision_config"].update(image_size=-3),
     ["vision_config.image_size -3"]),
    ("clip", lambda c: c["vision_config"].update(patch_size=True),
     ["vision_config.patch_size True"]),
    ("clip", lambda c: c["vision_config"].update(image_size=10**9),
     ["vision_config.image_size 1000000000"]),
    ("distilbert", lambda c: c.update(activation="swish"), ["activation 'swish'"]),
    ("distilbert", lambda c: c.update(architectures=["DistilBertForMaskedLM"]),
     ["'DistilBertForMaskedLM'", "known:"]),
])
def test_uncovered_variant_names_field_and_value(tmp_path, family, edit, needles):
  src = write_folder(tmp_path / "hf", family)
  edit_config(src, edit)
  with pytest.raises(PortError) as info:
    convert.convert(src, tmp_path / "out")
  message = str(info.value)
  assert "\n" not in message and "config.json" in message, message
  for needle in needles:
    assert needle in message, message
  assert not (tmp_path / "out").exists()


def test_cli_one_line_and_nothing_written(tmp_path):
  src = write_folder(tmp_path / "hf", "dinov2")
  edit_config(src, lambda c: c.update(use_swiglu_ffn=True))
  proc = subprocess.run([sys.executable, "-m", "ports.convert", str(src), str(tmp_path / "out")],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "use_swiglu_ffn True" in lines[0], proc.stderr
  assert not (tmp_path / "out").exists()
