"""Small torchvision VGG / ConvNeXt / EfficientNet references for the parity and port tests.

Built from torchvision's own classes with small configurations, normalization statistics and
affine parameters (and ConvNeXt's layer scales, 1e-6 at init) randomized, seeded, so parity
cannot pass on init values. torch is imported lazily.
"""

from __future__ import annotations

import functools

VGG_CFG = (8, "M", 16, 16, "M", 16, "M")
VGG_WIDTH = 32  # classifier width (torchvision: 4096)
CONVNEXT_DIMS, CONVNEXT_DEPTHS = (8, 16), (2, 1)
# MBConvConfig(expand_ratio, kernel, stride, input_channels, out_channels, num_layers).
EFFNET_STAGES = ((1, 3, 1, 8, 8, 1), (6, 5, 2, 8, 16, 2), (6, 3, 2, 16, 24, 1))
LITE_LAST_CHANNEL = 32  # Lite's head is 1280 wide; small here


def randomize_norms(model, seed: int = 0):
  """BatchNorm / LayerNorm affine and running statistics, and layer scales, at random."""
  import torch  # noqa: PLC0415

  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, m in model.named_modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
      if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
        m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
      if hasattr(m, "layer_scale"):
        m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=gen) + 0.5)
      del name
  return model.eval()


def small_vgg(batch_norm: bool, num_classes: int = 10, seed: int = 0):
  """torchvision VGG(make_layers(VGG_CFG)) with a VGG_WIDTH-wide classifier."""
  import torch  # noqa: PLC0415
  from torchvision.models import vgg  # noqa: PLC0415

  torch.manual_seed(seed)
  # On the meta device: VGG's own 25,088 x 4,096 classifier is replaced below, never allocated.
  with torch.device("meta"):
    model = vgg.VGG(torch.nn.Identity(), num_classes=num_classes, init_weights=False)
  model.features = vgg.make_layers(list(VGG_CFG), batch_norm)
  c = [v for v in VGG_CFG if v != "M"][-1]
  nn = torch.nn
  model.classifier = nn.Sequential(
      nn.Linear(c * 7 * 7, VGG_WIDTH), nn.ReLU(True), nn.Dropout(),
      nn.Linear(VGG_WIDTH, VGG_WIDTH), nn.ReLU(True), nn.Dropout(),
      nn.Linear(VGG_WIDTH, num_classes))
  return randomize_norms(model, seed)


def small_convnext(num_classes: int = 10, seed: int = 0):
  import torch  # noqa: PLC0415
  from torchvision.models import convnext  # noqa: PLC0415

  torch.manual_seed(seed)
  outs = [*CONVNEXT_DIMS[1:], None]
  setting = [convnext.CNBlockConfig(d, o, n)
             for d, o, n in zip(CONVNEXT_DIMS, outs, CONVNEXT_DEPTHS, strict=True)]
  return randomize_norms(convnext.ConvNeXt(setting, num_classes=num_classes), seed)


def small_efficientnet(lite: bool = False, num_classes: int = 10, seed: int = 0):
  """torchvision EfficientNet(EFFNET_STAGES); lite: as EfficientNet-Lite (see `to_lite`)."""
  import torch  # noqa: PLC0415
  from torchvision.models import efficientnet  # noqa: PLC0415

  torch.manual_seed(seed)
  setting = [efficientnet.MBConvConfig(*s) for s in EFFNET_STAGES]
  if not lite:
    return randomize_norms(efficientnet.EfficientNet(setting, 0.2, num_classes=num_classes),
                           seed)
  bn = functools.partial(torch.nn.BatchNorm2d, eps=1e-3, momentum=0.01)
  model = efficientnet.EfficientNet(setting, 0.2, num_classes=num_classes, norm_layer=bn,
                                    last_channel=LITE_LAST_CHANNEL)
  return randomize_norms(to_lite(model), seed)


def to_lite(model):
  """A torchvision EfficientNet made Lite in place: squeeze-excitation -> Identity (names and
  indices of the other modules unchanged), SiLU -> ReLU6, k x k convs padded as TF's SAME."""
  import torch  # noqa: PLC0415
  from torchvision.ops import SqueezeExcitation  # noqa: PLC0415

  for parent in list(model.modules()):
    for name, child in list(parent.named_children()):
      if isinstance(child, SqueezeExcitation):
        setattr(parent, name, torch.nn.Identity())
      elif isinstance(child, torch.nn.SiLU):
        setattr(parent, name, torch.nn.ReLU6(inplace=True))
  for m in model.modules():
    if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1:
      m.padding = (0, 0)
      m.register_forward_pre_hook(_tf_same_pad)
  return model


def _tf_same_pad(conv, args):
  """TF "SAME": total max((ceil(n / s) - 1) * s + k - n, 0), the smaller half first."""
  import torch.nn.functional as F  # noqa: PLC0415, N812

  (x,) = args
  pads = []
  for n, k, s in zip(x.shape[:1:-1], conv.kernel_size[::-1], conv.stride[::-1], strict=True):
    total = max((-(-n // s) - 1) * s + k - n, 0)
    pads += [total // 2, total - total // 2]
  return (F.pad(x, pads),)
