"""Torch reference models shared by the parity and training tests (torch imported lazily)."""

import numpy as np


def rel_err(a, b):
  """max|a - b| / max|b|: scale-free, so one tolerance serves every tensor."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


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


def perturb_parameters(model, scale: float = 0.05, seed: int = 1):
  """Adds seeded noise to every parameter of a torch model, in place, and returns it:
  LayerNorm 1/0 and zero-initialized biases would hide swapped names."""
  import torch  # noqa: PLC0415

  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn(p.shape, generator=gen))
  return model


def random_hf_model(cls_name: str, cfg_name: str, cfg: dict):
  """transformers.`cls_name`(`cfg_name`(**cfg)), seeded random init, parameters perturbed."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  torch.manual_seed(0)
  config = getattr(transformers, cfg_name)(**cfg)
  return perturb_parameters(getattr(transformers, cls_name)(config).eval())


def hf_ported(tmp_path_factory, cases: dict, save=None):
  """A function case -> (reference, HF folder, checkpoint folder, model, variables), each
  case built once: `random_hf_model(*cases[case][:3])` saved by `save(model, folder, case)`
  (default: save_pretrained), converted with ports.convert, loaded with load_pretrained."""
  import jaxpretrain  # noqa: PLC0415
  from ports import convert  # noqa: PLC0415

  cache = {}

  def get(case):
    if case not in cache:
      ref = random_hf_model(*cases[case][:3])
      root = tmp_path_factory.mktemp(case)
      if save is None:
        ref.save_pretrained(root / "hf")
      else:
        save(ref, root / "hf", case)
      convert.convert(root / "hf", root / "ckpt")
      cache[case] = (ref, root / "hf", root / "ckpt", *jaxpretrain.load_pretrained(root / "ckpt"))
    return cache[case]

  return get


def assert_export_round_trip(ref, folder, ckpt, out, cls_name: str, tied=frozenset()):
  """ports.export of the converted `ckpt` into `out` gives back `folder`'s tensors bit-exact
  (but its `tied` copies), config.json names `cls_name`, and transformers reloads `ref`."""
  import json  # noqa: PLC0415

  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  from ports import export, readers  # noqa: PLC0415

  out = export.export(ckpt, out)
  _, original = readers.load_hf_folder(folder)
  exported = readers.SafetensorsFile(out / "model.safetensors")
  assert set(exported) <= set(original)
  assert set(original) - set(exported) <= set(tied)  # only tied copies are not written back
  for key in exported:
    assert exported[key].dtype == original[key].dtype, key
    assert exported[key].shape == original[key].shape, key
    np.testing.assert_array_equal(exported[key], original[key], err_msg=key)
  assert json.loads((out / "config.json").read_text())["architectures"] == [cls_name]
  reloaded = getattr(transformers, cls_name).from_pretrained(out).eval()
  for (k, a), (_, b) in zip(sorted(ref.state_dict().items()),
                            sorted(reloaded.state_dict().items()), strict=True):
    assert torch.equal(a, b), k
  return out

def clip_tokenizer_json(vocab_size: int, words) -> str:
  """A WordLevel tokenizer.json made like CLIP's: lowercased `words` between <|startoftext|>
  (id 1) and <|endoftext|> (the largest id, a text config's eos_token_id); <pad> is id 0."""
  import tokenizers  # noqa: PLC0415

  eos = vocab_size - 1
  names = ["<pad>", "<|startoftext|>", "<unk>", *words]
  names += [f"w{i}" for i in range(len(names), eos)] + ["<|endoftext|>"]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(names)}, unk_token="<unk>"))
  tok.normalizer = tokenizers.normalizers.Lowercase()
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="<|startoftext|> $A <|endoftext|>",
      special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", eos)])
  return tok.to_str()


def clip_saver(words, vocab_size: int, image_size: int):
  """`save(model, folder, case)` for `hf_ported`: a CLIP folder with `clip_tokenizer_json`
  and a CLIPImageProcessor config at `image_size`."""
  import transformers  # noqa: PLC0415

  def save(model, folder, case):
    del case
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(clip_tokenizer_json(vocab_size, words))
    transformers.CLIPImageProcessor(size={"shortest_edge": image_size},
                                    crop_size={"height": image_size, "width": image_size}
                                    ).save_pretrained(folder)
  return save
