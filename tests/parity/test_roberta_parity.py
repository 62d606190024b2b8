"""RoBERTa and XLM-RoBERTa classifiers (RobertaClassificationHead) against transformers.

Tiny seeded random-init references, weights perturbed (LayerNorm 1/0 and zero biases would hide
swapped names), saved as Hugging Face saves them, converted with `ports.convert`, loaded with
`jaxpretrain.load_pretrained` and compared layer by layer on padded inputs; then exported back
bit-exact and reloaded by transformers with no missing or unexpected keys.
"""

import json
import pathlib

import numpy as np
import pytest

from jaxpretrain import pretrained
from jaxpretrain.job import task as task_lib
from jaxpretrain.job.config import JobConfig
from ports import export, readers
from tests import torch_refs
from tests.torch_refs import rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# float32 at "highest" matmul precision; only the summation order differs from torch
# (measured <= 4e-7 on these cases).
RTOL = 1e-5

ROBERTA = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=26, type_vocab_size=1,
               pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
               hidden_act="gelu")
LABELS = {"id2label": {"0": "negative", "1": "neutral", "2": "positive"},
          "label2id": {"negative": 0, "neutral": 1, "positive": 2}}

# case -> (transformers class, config class, config kwargs)
CASES = {
    "RobertaForSequenceClassification": ("RobertaForSequenceClassification", "RobertaConfig",
                                         dict(ROBERTA, **LABELS)),
    "XLMRobertaForSequenceClassification": ("XLMRobertaForSequenceClassification",
                                            "XLMRobertaConfig",
                                            dict(ROBERTA, hidden_act="gelu_new", **LABELS)),
    "XLMRobertaForMaskedLM": ("XLMRobertaForMaskedLM", "XLMRobertaConfig", ROBERTA),
}


@pytest.fixture(scope="module")
def ported(tmp_path_factory):
  """case -> (reference, HF folder, checkpoint folder, model, variables), cached."""
  return torch_refs.hf_ported(tmp_path_factory, CASES)


def _inputs(cfg, batch=3, seq=12):
  """Seeded ids with <s> first and right padding (lengths 12, 7, 3)."""
  rng = np.random.RandomState(0)
  ids = rng.randint(3, cfg["vocab_size"], (batch, seq)).astype(np.int32)
  ids[:, 0] = cfg["bos_token_id"]
  lengths = np.array([seq, 7, 3])[:batch]
  mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  return np.where(mask == 1, ids, cfg["pad_token_id"]).astype(np.int32), mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_and_intermediates_match(ported, case, highest_precision):
  ref, _, _, model, variables = ported(case)
  cfg = CASES[case][2]
  ids, mask = _inputs(cfg)
  with torch.no_grad():
    r = ref(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
            output_hidden_states=True)
  _, aux = model.apply(variables, ids, attention_mask=mask)
  real = mask.astype(bool)
  names = ["embeddings"] + [f"layer_{i}" for i in range(cfg["num_hidden_layers"])]
  errors = {n: rel_err(np.asarray(aux[n])[real], h.numpy()[real])
            for n, h in zip(names, r.hidden_states, strict=True)}
  logits = np.asarray(aux["logits"])
  errors["logits"] = (rel_err(logits[real], r.logits.numpy()[real]) if logits.ndim == 3
                      else rel_err(logits, r.logits.numpy()))
  assert max(errors.values()) <= RTOL, errors


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_round_trip_is_bit_exact(ported, case, tmp_path):
  ref, _, ckpt, model, _ = ported(case)
  out = export.export(ckpt, tmp_path / "out")
  state = readers.SafetensorsFile(out / "model.safetensors")
  expected = {k: v.numpy() for k, v in ref.state_dict().items()}
  tied = {"lm_head.decoder.weight", "lm_head.decoder.bias"}  # tied: HF re-ties them on load
  assert set(state) == set(expected) - tied
  for k in state:
    np.testing.assert_array_equal(state[k], expected[k], err_msg=k)
  cls_name = CASES[case][0]
  back, info = getattr(transformers, cls_name).from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  hf_cfg = json.loads((out / "config.json").read_text())
  assert hf_cfg["architectures"] == [cls_name]
  assert hf_cfg["model_type"] == ref.config.model_type
  if model.head == "classification":
    assert hf_cfg["id2label"] == LABELS["id2label"]


def test_classifier_layout_and_class_names(ported):
  for case in ("RobertaForSequenceClassification", "XLMRobertaForSequenceClassification"):
    _, _, ckpt, model, variables = ported(case)
    assert (model.head, model.classifier, model.pooler) == ("classification", "roberta", False)
    assert sorted(variables["params"]["classifier"]) == ["dense", "out_proj"]
    config = json.loads((ckpt / "config.json").read_text())
    assert config["class_names"] == ["negative", "neutral", "positive"]
  # A RoBERTa backbone without a classifier still gets RoBERTa's head when fine-tuned.
  assert ported("XLMRobertaForMaskedLM")[3].classifier == "roberta"


def test_fine_tuned_roberta_exports_as_a_sequence_classifier(ported, tmp_path,
                                                            highest_precision):
  """A RoBERTa backbone fine-tuned by the job gets RobertaClassificationHead and no pooler (as
  RobertaForSequenceClassification), and its run exports as XLMRobertaForSequenceClassification."""
  ckpt = ported("XLMRobertaForMaskedLM")[2]
  config = JobConfig(workdir=str(tmp_path), dataset="x", init_checkpoint=str(ckpt))
  spec = task_lib.with_head(task_lib.model_spec(config, tmp_path, log=lambda _: None), config, 4)
  assert spec.kwargs["classifier"] == "roberta" and spec.kwargs["pooler"] is False
  assert spec.new_head and "params/classifier/.*" in spec.dont_load
  variables = task_lib.init_variables(spec, seed=0, log=lambda _: None)
  names = ["w", "x", "y", "z"]
  pretrained.save_pretrained(
      tmp_path / "run/model", spec.name, spec.kwargs, variables, class_names=names,
      source={"format": "jaxpretrain-run", "dataset": "x", "task": "classification",
              "base": pretrained.read_config(ckpt)["source"]})
  out = export.export(tmp_path / "run", tmp_path / "hf")
  ref, info = transformers.XLMRobertaForSequenceClassification.from_pretrained(
      out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert ref.config.id2label == dict(enumerate(names))
  ids, mask = _inputs(CASES["XLMRobertaForMaskedLM"][2])
  ours, _ = spec.build().apply(variables, ids, attention_mask=mask)
  with torch.no_grad():
    theirs = ref.eval()(torch.tensor(ids, dtype=torch.long),
                        attention_mask=torch.tensor(mask)).logits.numpy()
  assert rel_err(ours, theirs) <= RTOL


def test_roberta_classifier_drops_a_checkpoints_pooler():
  spec = task_lib.ModelSpec("bert", {"head": None, "pooler": True, "classifier": "roberta"},
                            "bert", pathlib.Path("/ckpt"), [], False, {}, {})
  out = task_lib.with_head(spec, JobConfig(workdir="w", dataset="d"), 3)
  assert out.kwargs["pooler"] is False and "params/pooler/.*" in out.dont_load


def test_bad_id2label_is_named(tmp_path):
  from ports import hf_common  # noqa: PLC0415
  from ports.rules import PortError  # noqa: PLC0415

  with pytest.raises(PortError, match=r"id2label has ids \[0, 2\]"):
    hf_common.class_names({"id2label": {"0": "a", "2": "b"}}, 2)
  with pytest.raises(PortError, match=r"id2label\['1'\] is not a string"):
    hf_common.class_names({"id2label": {"0": "a", "1": 7}}, 2)
  with pytest.raises(PortError, match="key 'x' is not a class id"):
    hf_common.class_names({"id2label": {"x": "a"}}, 1)
