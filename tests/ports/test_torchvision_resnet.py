"""torchvision ResNet port: CLI and function conversion, bit-exact export, and refusals."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxpretrain import params, pretrained
from ports import convert, export, readers
from ports import torchvision_resnet as tvr
from ports.base import check
from ports.rules import PortError

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.torch

REPO = pathlib.Path(__file__).resolve().parents[2]


class NotATensor:
  """A class a weights-only unpickler must refuse to construct."""

  def __init__(self):
    self.payload = "would run code"


def _torch_resnet(arch="resnet18", seed=0, **kwargs):
  """A random-init torchvision model with BN statistics and affine params randomized too."""
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(**kwargs)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return model


@pytest.fixture(scope="module")
def torch_state_dict():
  return _torch_resnet().state_dict()


def _numpy(state_dict):
  return {k: v.numpy() for k, v in state_dict.items()}


def _assert_nothing_written(folder: pathlib.Path, dst: pathlib.Path):
  assert not dst.exists()
  assert not [p.name for p in folder.iterdir() if p.name.startswith(f".{dst.name}")]


def _assert_same_state_dict(got, ref):
  assert set(got) == set(ref)
  for k, v in ref.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    assert torch.equal(got[k], v), k


def test_cli_convert_then_export_is_bit_exact(torch_state_dict, tmp_path):
  from safetensors.torch import load_file

  torch.save(torch_state_dict, tmp_path / "r18.pth")
  dst = tmp_path / "r18"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
      [sys.executable, "-m", "ports.convert", str(tmp_path / "r18.pth"), str(dst),
       "--arch", "resnet18"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  config = json.loads((dst / "config.json").read_text())
  assert config["model"] == "resnet18"
  assert config["model_kwargs"] == {"num_classes": 1000}
  assert config["source"]["format"] == "torchvision"
  assert config["source"]["arch"] == "resnet18"
  assert config["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
  assert config["preprocessing"]["image_size"] == 224

  model, variables = pretrained.load_pretrained(dst)
  assert model.num_classes == 1000
  np.testing.assert_array_equal(
      variables["params"]["layer2_0"]["conv1"]["kernel"],
      torch_state_dict["layer2.0.conv1.weight"].numpy().transpose(2, 3, 1, 0))

  out = export.export(dst, tmp_path / "back.safetensors")
  back = load_file(out)
  _assert_same_state_dict(back, torch_state_dict)  # num_batches_tracked included (zeros)
  fresh = torchvision.models.resnet18()
  fresh.load_state_dict(back, strict=True)


def test_safetensors_and_pickle_sources_agree(torch_state_dict, tmp_path):
  from safetensors.torch import save_file

  save_file(torch_state_dict, tmp_path / "r18.safetensors")
  torch.save(torch_state_dict, tmp_path / "r18.pth")
  from_st, _ = convert.read_source(tmp_path / "r18.safetensors", "resnet18")
  from_pickle, _ = convert.read_source(tmp_path / "r18.pth", "resnet18")
  assert set(from_st.flat_variables) == set(from_pickle.flat_variables)
  for k, v in from_st.flat_variables.items():
    np.testing.assert_array_equal(v, from_pickle.flat_variables[k])


def test_function_round_trip_bit_exact(torch_state_dict):
  converted = tvr.to_jaxpretrain(_numpy(torch_state_dict), arch="resnet18")
  check(converted)
  assert converted.source == {"format": "torchvision", "arch": "resnet18"}
  assert converted.flat_variables["params/fc/kernel"].shape == (512, 1000)
  assert converted.flat_variables["batch_stats/layer1_0/bn2/var"].shape == (64,)
  config = {"model": converted.model, "source": converted.source}
  exported = tvr.from_jaxpretrain(config, converted.flat_variables)
  assert exported.hf_config is None
  back = {k: torch.from_numpy(np.asarray(v)) for k, v in exported.state_dict.items()}
  _assert_same_state_dict(back, torch_state_dict)


def test_module_prefix_and_state_dict_wrapper(torch_state_dict, tmp_path):
  wrapped = {"state_dict": {f"module.{k}": v for k, v in torch_state_dict.items()}, "epoch": 3}
  torch.save(wrapped, tmp_path / "ddp.pth")
  from safetensors.torch import save_file

  save_file({f"module.{k}": v for k, v in torch_state_dict.items()}, tmp_path / "ddp.safetensors")
  plain = tvr.to_jaxpretrain(_numpy(torch_state_dict), arch="resnet18").flat_variables
  for name in ("ddp.pth", "ddp.safetensors"):
    converted, _ = convert.read_source(tmp_path / name, "resnet18")
    assert set(converted.flat_variables) == set(plain)
    for k, v in plain.items():
      np.testing.assert_array_equal(converted.flat_variables[k], v)


def test_features_only_state_dict_has_no_head(torch_state_dict):
  sd = {k: v for k, v in _numpy(torch_state_dict).items() if not k.startswith("fc.")}
  converted = tvr.to_jaxpretrain(sd, arch="resnet18")
  assert converted.model_kwargs == {"num_classes": None}
  check(converted)


def test_other_num_classes_converts_and_merges_with_dont_load(tmp_path):
  sd = _numpy(_torch_resnet(num_classes=10).state_dict())
  converted = tvr.to_jaxpretrain(sd, arch="resnet18")
  assert converted.model_kwargs == {"num_classes": 10}
  check(converted)
  # A 1000-class model takes the backbone only when the head is named in dont_load.
  expected = {k: np.zeros(s) for k, s in _expected_shapes("resnet18", 1000).items()}
  loaded = params.unflatten(converted.flat_variables)
  with pytest.raises(ValueError, match=r"~ params/fc/kernel: checkpoint \(512, 10\)"):
    params.merge_params(loaded, params.unflatten(expected))
  merged = params.merge_params(loaded, params.unflatten(expected), dont_load=r"params/fc/.*")
  assert merged["params"]["fc"]["kernel"].shape == (512, 1000)


def _expected_shapes(arch, num_classes):
  from ports.base import expected_shapes

  return expected_shapes(arch, {"num_classes": num_classes})


def test_unknown_arch_lists_known_and_writes_nothing(torch_state_dict, tmp_path):
  torch.save(torch_state_dict, tmp_path / "r18.pth")
  dst = tmp_path / "out"
  with pytest.raises(PortError,
                     match=r"unknown torchvision arch 'resnet19'; known: .*\bresnet18, "):
    convert.convert(tmp_path / "r18.pth", dst, arch="resnet19")
  _assert_nothing_written(tmp_path, dst)


def test_wrong_arch_names_the_right_one_and_lists_keys(tmp_path):
  torch.save(_torch_resnet("resnet34").state_dict(), tmp_path / "r34.pth")
  dst = tmp_path / "out"
  with pytest.raises(PortError) as err:
    convert.convert(tmp_path / "r34.pth", dst, arch="resnet18")
  message = str(err.value)
  assert "not a torchvision resnet18 (basic blocks [2, 2, 2, 2]" in message
  assert "basic blocks [3, 4, 6, 3]" in message and "pass --arch resnet34" in message
  assert "+ params/layer1_2/conv1/kernel (3, 3, 64, 64)" in message
  _assert_nothing_written(tmp_path, dst)


def test_bottleneck_arch_told_apart_by_groups(tmp_path):
  # resnet50 and resnext50_32x4d share key names; the grouped conv2 shape tells them apart.
  sd = {k: v.numpy() for k, v in torchvision.models.resnext50_32x4d().state_dict().items()}
  with pytest.raises(PortError, match=r"groups 32, width_per_group 4, like resnext50_32x4d"):
    tvr.to_jaxpretrain(sd, arch="resnet50")


def test_mismatched_head_is_listed_with_shapes(torch_state_dict, tmp_path):
  sd = dict(torch_state_dict)
  sd["fc.bias"] = torch.zeros(10)  # fc.weight says 1000 classes
  torch.save(sd, tmp_path / "bad.pth")
  dst = tmp_path / "out"
  with pytest.raises(PortError, match=r"~ params/fc/bias: checkpoint \(10,\) vs model \(1000,\)"):
    convert.convert(tmp_path / "bad.pth", dst, arch="resnet18")
  _assert_nothing_written(tmp_path, dst)


def test_missing_and_unexpected_keys_are_listed(torch_state_dict, tmp_path):
  sd = dict(torch_state_dict)
  del sd["layer1.0.bn1.running_var"]
  del sd["layer4.1.conv2.weight"]
  torch.save(sd, tmp_path / "missing.pth")
  dst = tmp_path / "out"
  with pytest.raises(PortError) as err:
    convert.convert(tmp_path / "missing.pth", dst, arch="resnet18")
  assert "- batch_stats/layer1_0/bn1/var (64,)" in str(err.value)
  assert "- params/layer4_1/conv2/kernel (3, 3, 512, 512)" in str(err.value)
  _assert_nothing_written(tmp_path, dst)

  sd = dict(torch_state_dict)
  sd["head.weight"] = torch.zeros(3, 4)
  torch.save(sd, tmp_path / "extra.pth")
  with pytest.raises(PortError, match=r"keys no rule converts \(\+\):\n  \+ head.weight \(3, 4\)"):
    convert.convert(tmp_path / "extra.pth", dst, arch="resnet18")
  _assert_nothing_written(tmp_path, dst)


def test_pickle_with_code_is_refused(torch_state_dict, tmp_path):
  torch.save({"state_dict": torch_state_dict, "extra": NotATensor()}, tmp_path / "evil.pth")
  dst = tmp_path / "out"
  with pytest.raises(readers.CheckpointError, match=r"refused: the pickle needs more than tensors"):
    convert.convert(tmp_path / "evil.pth", dst, arch="resnet18")
  _assert_nothing_written(tmp_path, dst)


def test_existing_dst_refused_unless_overwrite(torch_state_dict, tmp_path):
  torch.save(torch_state_dict, tmp_path / "r18.pth")
  dst = tmp_path / "out"
  dst.mkdir()
  (dst / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="--overwrite"):
    convert.convert(tmp_path / "r18.pth", dst, arch="resnet18")
  assert (dst / "keep.txt").read_text() == "mine"
  convert.convert(tmp_path / "r18.pth", dst, arch="resnet18", overwrite=True)
  assert not (dst / "keep.txt").exists()
  assert pretrained.read_config(dst)["model"] == "resnet18"
