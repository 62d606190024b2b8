"""VGG, ConvNeXt and EfficientNet (B and Lite) parity with torchvision, eval mode.

References are small models built from torchvision's own classes (tests/cnn_torch_refs.py)
with normalization statistics, affine parameters and layer scales randomized, converted through
the ports' rule tables; efficientnet_b0 runs full size once, through `to_jaxpretrain` (the
real-weights tests go through save_pretrained / load_pretrained). Input sizes are not the
default 224 and chosen to exercise each family's edge: VGG's adaptive pool upsamples (4x4 ->
7x7), the Lite's TF padding is asymmetric (even maps under stride 2), odd maps elsewhere.

The metric is max|jax - torch| / max|torch| per tensor, logits and named intermediates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import params
from jaxpretrain.models import convnext, efficientnet, vgg
from ports import rules
from ports import torchvision_convnext as tvc
from ports import torchvision_efficientnet as tve
from ports import torchvision_vgg as tvv
from ports.base import check, expected_shapes
from tests import cnn_torch_refs as refs

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.torch

# float32 under highest matmul precision on both sides: only the summation order differs.
EVAL_RTOL = 1e-5
BATCH, NUM_CLASSES = 2, 10


def _rel(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def _assert_close(got: dict, ref: dict, what: str):
  assert set(got) == set(ref), f"{what}: {sorted(set(got) ^ set(ref))}"
  errors = {k: _rel(got[k], ref[k]) for k in ref}
  bad = {k: f"{e:.2e}" for k, e in errors.items() if not e <= EVAL_RTOL}
  assert not bad, f"{what} beyond {EVAL_RTOL:.0e} (max|diff|/max|ref|): {bad}"


def _nhwc(t):
  a = t.detach().numpy()
  if a.ndim == 4 and a.shape[2:] == (1, 1):
    return a[:, :, 0, 0]
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _torch_forward(model, x, hooks: dict):
  """{aux name: torch output in the JAX layout} for hooks {aux name: module}."""
  acts, handles = {}, []
  for name, module in hooks.items():
    # clone: in-place ReLUs and Dropouts after a hooked module would overwrite its output.
    hook = lambda _m, _i, out, name=name: acts.__setitem__(name, out.detach().clone())
    handles.append(module.register_forward_hook(hook))
  with torch.no_grad():
    model(x)
  for h in handles:
    h.remove()
  return {k: _nhwc(v) for k, v in acts.items()}


def _inputs(size, seed=0):
  x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(seed))
  return x, jnp.asarray(_nhwc(x))


def _jax_forward(model, variables, x):
  _, aux = jax.jit(model.apply)(variables, x)
  return aux


def _variables(table, state_dict, ignored, name, kwargs):
  flat = rules.convert(table, {k: v.numpy() for k, v in state_dict.items()}, ignored)
  rules.check_shapes(flat, expected_shapes(name, kwargs))
  return params.unflatten(flat)


def _vgg_hooks(reference, cut=None):
  layers = vgg.feature_layers(refs.VGG_CFG, any(
      isinstance(m, torch.nn.BatchNorm2d) for m in reference.features))[:cut]
  pools = [i for kind, i, _ in layers if kind == "pool"]
  hooks = {f"stage{k + 1}": reference.features[i] for k, i in enumerate(pools)}
  hooks["features"] = reference.features[layers[-1][1]]
  if cut is None:
    hooks |= {"avgpool": reference.avgpool, "pre_logits": reference.classifier[5],
              "logits": reference.classifier[6]}
  return hooks


@pytest.mark.parametrize("batch_norm", [True, False])
def test_vgg_eval(batch_norm, highest_precision):
  reference = refs.small_vgg(batch_norm, NUM_CLASSES)
  kwargs = dict(cfg=refs.VGG_CFG, batch_norm=batch_norm, classifier_width=refs.VGG_WIDTH,
                num_classes=NUM_CLASSES)
  variables = _variables(tvv.table(refs.VGG_CFG, batch_norm), reference.state_dict(),
                         tvv.IGNORED, "vgg11", kwargs)
  x, xj = _inputs(36)  # 36 -> 18 -> 9 -> 4 (floor), then adaptive 4x4 -> 7x7
  ref = _torch_forward(reference, x, _vgg_hooks(reference))
  aux = _jax_forward(vgg.build("vgg11", **kwargs), variables, xj)
  ref["pooled"] = ref["features"].mean(axis=(1, 2))
  _assert_close(aux, ref, f"vgg batch_norm={batch_norm}")


def test_vgg_backbone_cut_matches_features_prefix(highest_precision):
  # features[:8] of the BN model ends at the second conv's BatchNorm of stage 2 (no ReLU).
  cut = 8
  reference = refs.small_vgg(True, NUM_CLASSES)
  features = reference.features[:cut]
  kwargs = dict(cfg=refs.VGG_CFG, batch_norm=True, cut=cut, num_classes=None)
  state = {f"features.{k}": v for k, v in features.state_dict().items()}
  variables = _variables(tvv.table(refs.VGG_CFG, True, cut), state, tvv.IGNORED, "vgg11",
                         kwargs)
  x, xj = _inputs(20)
  ref = _torch_forward(reference, x, _vgg_hooks(reference, cut))
  ref["pooled"] = ref["features"].mean(axis=(1, 2))
  aux = _jax_forward(vgg.build("vgg11", **kwargs), variables, xj)
  _assert_close(aux, ref, "vgg features[:8]")


def test_convnext_eval(highest_precision):
  reference = refs.small_convnext(NUM_CLASSES)
  kwargs = dict(dims=refs.CONVNEXT_DIMS, depths=refs.CONVNEXT_DEPTHS, num_classes=NUM_CLASSES)
  variables = _variables(tvc.TABLE, reference.state_dict(), tvc.IGNORED, "convnext_tiny",
                         kwargs)
  f = reference.features
  hooks = {"stem": f[0], "stage1": f[1], "stage2": f[3], "pooled": reference.avgpool,
           "pre_logits": reference.classifier[0], "logits": reference.classifier[2]}
  x, xj = _inputs(40)  # stem 40 -> 10, downsample -> 5
  ref = _torch_forward(reference, x, hooks)
  aux = _jax_forward(convnext.build("convnext_tiny", **kwargs), variables, xj)
  _assert_close(aux, ref, "convnext")


def _effnet_hooks(reference):
  f = reference.features
  hooks = {"stem": f[0], **{f"stage{s}": f[s] for s in range(1, len(f) - 1)},
           "head": f[len(f) - 1], "pooled": reference.avgpool}
  return hooks | {"logits": reference.classifier[1]}


@pytest.mark.parametrize("lite", [False, True])
def test_efficientnet_small_eval(lite, highest_precision):
  reference = refs.small_efficientnet(lite, NUM_CLASSES)
  name = "efficientnet_lite0" if lite else "efficientnet_b0"
  kwargs = dict(stages=refs.EFFNET_STAGES, num_classes=NUM_CLASSES)
  if lite:
    kwargs["last_channel"] = refs.LITE_LAST_CHANNEL
  variables = _variables(tve.TABLE, reference.state_dict(), tve.IGNORED, name, kwargs)
  # Lite: even maps under every stride (40 -> 20 -> 10 -> 5): TF pads 0 / 1 and 1 / 2 there.
  x, xj = _inputs(40 if lite else 38)
  ref = _torch_forward(reference, x, _effnet_hooks(reference))
  aux = _jax_forward(efficientnet.build(name, **kwargs), variables, xj)
  _assert_close(aux, ref, name)


def test_lite_reference_pads_as_tf():
  """The torch Lite reference itself: its pre-hook pads a stride-2 3x3 conv 0 / 1."""
  conv = torch.nn.Conv2d(1, 1, 3, 2, bias=False)
  refs.to_lite(torch.nn.Sequential(conv))
  with torch.no_grad():
    conv.weight.zero_()
    conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap
    out = conv(torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 4, 4))
  assert out[0, 0, 1].tolist() == [0.0, 2.0]


def test_efficientnet_b0_full_size(highest_precision):
  torch.manual_seed(0)
  reference = refs.randomize_norms(torchvision.models.efficientnet_b0())
  converted = tve.to_jaxpretrain({k: v.numpy() for k, v in reference.state_dict().items()},
                                 arch="efficientnet_b0")
  check(converted)
  model = efficientnet.build(converted.model, **converted.model_kwargs)
  x, xj = _inputs(64)
  ref = _torch_forward(reference, x, _effnet_hooks(reference))
  aux = _jax_forward(model, params.unflatten(converted.flat_variables), xj)
  _assert_close(aux, ref, "efficientnet_b0")
