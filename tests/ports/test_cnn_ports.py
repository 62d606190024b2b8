"""VGG, ConvNeXt and EfficientNet ports: bit-exact export with strict loading, and refusals.

Small torchvision models (tests/cnn_torch_refs.py) go through each rule table and back; one
full-size efficientnet_b0 file goes through `ports.convert` / `ports.export` as the CLI runs
them. A state dict of another structure than --arch fails naming the difference, and DST is
never written.
"""

import numpy as np
import pytest

from jaxpretrain import models, params, pretrained
from ports import convert, export, rules
from ports import torchvision_convnext as tvc
from ports import torchvision_efficientnet as tve
from ports import torchvision_vgg as tvv
from ports.rules import PortError
from tests import cnn_torch_refs as refs

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.torch


def _numpy(state_dict):
  return {k: v.numpy() for k, v in state_dict.items()}


def _assert_round_trip(reference, flat, port, config):
  """Export `flat` with `port`, load it strictly into a fresh copy, compare every tensor."""
  exported = port.from_jaxpretrain(config, flat).state_dict
  back = {k: torch.from_numpy(np.array(v)) for k, v in exported.items()}  # 0-d stays 0-d
  ref = reference.state_dict()
  assert set(back) == set(ref)
  for k, v in ref.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    assert torch.equal(back[k], v), k
  reference.load_state_dict(back, strict=True)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_vgg_round_trip_bit_exact(batch_norm):
  reference = refs.small_vgg(batch_norm)
  flat = rules.convert(tvv.table(refs.VGG_CFG, batch_norm), _numpy(reference.state_dict()),
                       tvv.IGNORED)
  kwargs = {"cfg": list(refs.VGG_CFG), "batch_norm": batch_norm}  # as config.json holds them
  _assert_round_trip(reference, flat, tvv, {"model": "vgg11", "model_kwargs": kwargs})


def test_convnext_round_trip_bit_exact():
  reference = refs.small_convnext()
  flat = rules.convert(tvc.TABLE, _numpy(reference.state_dict()), tvc.IGNORED)
  assert flat["params/features_1_1/layer_scale"].shape == (refs.CONVNEXT_DIMS[0],)
  assert flat["params/features_2_1/kernel"].shape == (2, 2, 8, 16)  # the downsample conv
  assert flat["params/features_0_0/kernel"].shape == (4, 4, 3, 8)  # the stem's, not mixed up
  _assert_round_trip(reference, flat, tvc, {"model": "convnext_tiny"})


@pytest.mark.parametrize("lite", [False, True])
def test_efficientnet_round_trip_bit_exact(lite):
  reference = refs.small_efficientnet(lite)
  flat = rules.convert(tve.TABLE, _numpy(reference.state_dict()), tve.IGNORED)
  assert any("/fc1/" in k for k in flat) != lite
  _assert_round_trip(reference, flat, tve, {"model": "efficientnet_b0"})


@pytest.fixture(scope="module")
def b0_state_dict():
  torch.manual_seed(0)
  return refs.randomize_norms(torchvision.models.efficientnet_b0()).state_dict()


def test_efficientnet_b0_file_converts_and_exports_bit_exact(b0_state_dict, tmp_path):
  from safetensors.torch import load_file

  torch.save(b0_state_dict, tmp_path / "b0.pth")
  convert.convert(tmp_path / "b0.pth", tmp_path / "b0", arch="efficientnet_b0")
  config = pretrained.read_config(tmp_path / "b0")
  assert config["source"] == {"format": "torchvision", "arch": "efficientnet_b0",
                              "path": str((tmp_path / "b0.pth").absolute())}
  assert config["preprocessing"]["interpolation"] == "bicubic"
  back = load_file(export.export(tmp_path / "b0", tmp_path / "back.safetensors"))
  assert set(back) == set(b0_state_dict)
  assert all(torch.equal(back[k], v) for k, v in b0_state_dict.items())
  torchvision.models.efficientnet_b0().load_state_dict(back, strict=True)


def test_efficientnet_unexpected_block_count_is_named(b0_state_dict, tmp_path):
  weights = {k: v for k, v in _numpy(b0_state_dict).items() if not k.startswith("features.6.3.")}
  with pytest.raises(PortError, match=r"blocks per stage \[1, 2, 2, 3, 3, 3, 1\] "
                                      r"\(expected \[1, 2, 2, 3, 3, 4, 1\]\)"):
    tve.to_jaxpretrain(weights, arch="efficientnet_b0")
  torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, tmp_path / "cut.pth")
  with pytest.raises(PortError, match="blocks per stage"):
    convert.convert(tmp_path / "cut.pth", tmp_path / "dst", arch="efficientnet_b0")
  assert not (tmp_path / "dst").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["cut.pth"]


def test_efficientnet_wrong_arch_names_the_right_one(b0_state_dict):
  with pytest.raises(PortError, match="stage widths.*pass --arch efficientnet_b0"):
    tve.to_jaxpretrain(_numpy(b0_state_dict), arch="efficientnet_b2")
  with pytest.raises(PortError, match=r"squeeze-excitation True \(expected False\)"):
    tve.to_jaxpretrain(_numpy(b0_state_dict), arch="efficientnet_lite0")


def _zeros_state_dict(name, port, **kwargs):
  """torchvision-named zeros of `name` built with kwargs (no torch model needed)."""
  shapes = models.variable_shapes(name, models.build_model(name, **kwargs))
  flat = {k: np.zeros(v.shape, v.dtype) for k, v in params.flatten(dict(shapes)).items()}
  return port.from_jaxpretrain({"model": name, "model_kwargs": kwargs}, flat).state_dict


def test_vgg_cut_at_another_stage_says_where_the_weights_end():
  # vgg11_bn().features[:10]: through conv3_1's BatchNorm (features.9).
  weights = _zeros_state_dict("vgg11_bn", tvv, cut=10, num_classes=None)
  assert tvv.to_jaxpretrain(weights, arch="vgg11_bn:10").model_kwargs == {
      "num_classes": None, "cut": 10}
  assert tvv.to_jaxpretrain(weights, arch="vgg11_bn:11").model_kwargs["cut"] == 11  # + ReLU
  with pytest.raises(PortError, match=r"end at features\.9 \(conv3_1's BatchNorm, stage 3\).*"
                                      r"pass --arch vgg11_bn:10"):
    tvv.to_jaxpretrain(weights, arch="vgg11_bn:18")
  with pytest.raises(PortError, match=r"no classifier; asked for the full vgg11_bn"):
    tvv.to_jaxpretrain(weights, arch="vgg11_bn")
  with pytest.raises(PortError, match="has BatchNorm layers, unlike torchvision vgg11"):
    tvv.to_jaxpretrain(weights, arch="vgg11:10")
  with pytest.raises(PortError, match="not a torchvision vgg13_bn: convs at features"):
    tvv.to_jaxpretrain(weights, arch="vgg13_bn:10")


def test_vgg_bad_arch_names():
  with pytest.raises(PortError, match="unknown torchvision arch 'vgg17'.*vgg16_bn"):
    tvv.parse_arch("vgg17")
  with pytest.raises(PortError, match=r"integer in \[1, 44\]"):
    tvv.parse_arch("vgg16_bn:99")
  assert tvv.parse_arch("vgg16_bn:39") == ("vgg16_bn", 39)


def test_convnext_wrong_depths_are_named():
  weights = _zeros_state_dict("convnext_tiny", tvc, dims=(8, 16), depths=(2, 1))
  with pytest.raises(PortError, match=r"dims \[8, 16\], blocks per stage \[2, 1\]"):
    tvc.to_jaxpretrain(weights, arch="convnext_tiny")


def test_arch_prefixes_choose_the_port():
  assert convert.torchvision_port("vgg16_bn:39").__name__ == "ports.torchvision_vgg"
  assert convert.torchvision_port("convnext_base").__name__ == "ports.torchvision_convnext"
  assert convert.torchvision_port("efficientnet_lite0").__name__ == "ports.torchvision_efficientnet"
  assert convert.torchvision_port("resnet50").__name__ == "ports.torchvision_resnet"
