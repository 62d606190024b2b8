"""Torch reference models shared by the parity and training tests (torch imported lazily)."""


def random_torchvision_resnet(arch: str, num_classes: int = 10, seed: int = 0):
  """A torchvision ResNet, random init, with BatchNorm running statistics and affine
  parameters randomized (seeded), so parity cannot pass on init values."""
  import torch  # noqa: PLC0415
  import torchvision  # noqa: PLC0415

  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(num_classes=num_classes)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
  return model
