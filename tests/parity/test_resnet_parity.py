"""ResNet parity with torchvision: eval and train forward passes, running statistics, gradients.

References are random-init torchvision models whose BatchNorm running statistics and affine
parameters are randomized too (seeded), converted through ports.torchvision_resnet and, for
resnet18 / resnet50, saved and loaded back with save_pretrained / load_pretrained. Inputs are
small (2x3x64x64) so every stage keeps a spatial extent (layer4 is 2x2) and the test stays fast.

The metric throughout is max|jax - torch| / max|torch| per tensor.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import params, pretrained
from ports import rules
from ports import torchvision_resnet as tvr
from ports.base import check
from tests.torch_refs import random_torchvision_resnet

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.torch

# float32 under highest matmul precision on both sides: only the summation order differs.
EVAL_RTOL = 1e-5
# Train mode divides by batch standard deviations of 8 values per channel (layer4), which
# amplifies rounding: torch's own float32 resnet18 is 6e-6 from its float64 here.
TRAIN_RTOL = 3e-5
# Backward passes sum over every position and sample, ordered differently by torch and XLA.
GRAD_RTOL = 1e-4
# float64 rounding (1e-16) through the conditioning that costs resnet50's float32 train step
# most of its digits (torch float32 vs float64: 2e-4 on layer4, 20% on some gradients); here
# the worst is 1e-12, while a semantic slip (biased variance, padding) shows at 1e-3 or more.
F64_RTOL = 1e-9

BATCH, SIZE, NUM_CLASSES = 2, 64, 10
# torch forward hooks -> how each is read on the JAX side ("capture:" = Flax intermediates).
HOOKS = {"conv1": "capture:conv1", "bn1": "capture:bn1", "relu": "relu", "maxpool": "stem",
         "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4",
         "avgpool": "pooled", "fc": "logits"}


def _torch_resnet(arch, seed=0):
  return random_torchvision_resnet(arch, NUM_CLASSES, seed)


def _inputs(seed=0):
  gen = torch.Generator().manual_seed(seed)
  x = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)
  labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
  return x, labels


def _nhwc(t):
  """A torch activation as NumPy in the JAX layout: NCHW -> NHWC; [B, C, 1, 1] -> [B, C]."""
  a = t.detach().numpy()
  if a.ndim == 4 and a.shape[2:] == (1, 1):
    return a[:, :, 0, 0]
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _rel(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape
  return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def _assert_close(got: dict, ref: dict, rtol: float, what: str):
  assert set(got) == set(ref), f"{what}: {sorted(set(got) ^ set(ref))}"
  errors = {k: _rel(got[k], ref[k]) for k in ref}
  bad = {k: f"{e:.2e}" for k, e in errors.items() if not e <= rtol}
  assert not bad, f"{what} beyond {rtol:.0e} (max|diff|/max|ref|): {bad}"


def _torch_forward(model, x):
  """Torch outputs of every hooked module, in the JAX layout."""
  acts, handles = {}, []
  for name in HOOKS:
    # clone: torchvision's ReLU(inplace=True) would overwrite bn1's output after the hook.
    hook = lambda _m, _i, out, name=name: acts.__setitem__(name, out.detach().clone())
    handles.append(getattr(model, name).register_forward_hook(hook))
  logits = model(x)
  for h in handles:
    h.remove()
  return logits, acts


def _jax_forward(model, variables, x, train):
  """(logits, {hook name: activation}, updated batch_stats or None)."""
  top_level = lambda mdl, _method: mdl.scope is not None and len(mdl.scope.path) == 1
  mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
  (logits, aux), state = model.apply(variables, x, train=train, mutable=mutable,
                                     capture_intermediates=top_level)
  captured = state["intermediates"]
  acts = {}
  for name, source in HOOKS.items():
    if source.startswith("capture:"):
      acts[name] = captured[source.removeprefix("capture:")]["__call__"][0]
    elif source == "relu":
      acts[name] = jax.nn.relu(captured["bn1"]["__call__"][0])
    else:
      acts[name] = aux[source]
  return logits, acts, state.get("batch_stats")


_PORTED = {}


def _ported(arch, tmp_path_factory):
  """(jax model, variables) via the port and a save / load_pretrained round trip (cached)."""
  if arch not in _PORTED:
    reference = _torch_resnet(arch)
    converted = tvr.to_jaxpretrain(
        {k: v.numpy() for k, v in reference.state_dict().items()}, arch=arch)
    check(converted)
    folder = tmp_path_factory.mktemp(arch) / "ckpt"
    pretrained.save_pretrained(folder, converted.model, converted.model_kwargs,
                               params.unflatten(converted.flat_variables),
                               source=converted.source)
    _PORTED[arch] = pretrained.load_pretrained(folder)
  return _PORTED[arch]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_eval_logits_and_intermediates(arch, tmp_path_factory, highest_precision):
  model, variables = _ported(arch, tmp_path_factory)
  reference = _torch_resnet(arch).eval()
  x, _ = _inputs()
  with torch.no_grad():
    ref_logits, ref_acts = _torch_forward(reference, x)
  logits, acts, _ = _jax_forward(model, variables, jnp.asarray(_nhwc(x)), train=False)
  ref = {k: _nhwc(v) for k, v in ref_acts.items()} | {"out": _nhwc(ref_logits)}
  _assert_close(acts | {"out": logits}, ref, EVAL_RTOL, f"{arch} eval")


def _assert_train_step_matches(model, variables, reference, x, labels, fwd_rtol, grad_rtol,
                               what):
  """One train-mode forward and backward on both sides: activations, stats, gradients."""
  reference.train()
  ref_logits, ref_acts = _torch_forward(reference, x)
  torch.nn.functional.cross_entropy(ref_logits, labels).backward()

  def loss_fn(p):
    logits, acts, stats = _jax_forward(model, {**variables, "params": p},
                                       jnp.asarray(_nhwc(x)), train=True)
    onehot = jax.nn.one_hot(jnp.asarray(labels.numpy()), NUM_CLASSES, dtype=logits.dtype)
    loss = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))
    return loss, (logits, acts, stats)

  grads, (logits, acts, stats) = jax.jit(jax.grad(loss_fn, has_aux=True))(variables["params"])

  ref = {k: _nhwc(v) for k, v in ref_acts.items()} | {"out": _nhwc(ref_logits)}
  _assert_close(acts | {"out": logits}, ref, fwd_rtol, f"{what} train forward")

  # Running statistics after one step (torch: unbiased batch variance, momentum 0.1), named
  # by the port's own table.
  ref_stats = rules.convert(
      tvr.TABLE, {k: v.detach().numpy() for k, v in reference.state_dict().items()
                  if k.endswith(("running_mean", "running_var"))})
  _assert_close(params.flatten({"batch_stats": stats}), ref_stats, fwd_rtol,
                f"{what} running stats")

  # Gradients of every parameter, renamed and transposed by the same table.
  ref_grads = rules.convert(tvr.TABLE, {n: p.grad.numpy() for n, p in reference.named_parameters()})
  _assert_close(params.flatten({"params": grads}), ref_grads, grad_rtol, f"{what} gradients")


@pytest.mark.parametrize("arch", ["resnet18"])
def test_train_step_float32(arch, tmp_path_factory, highest_precision):
  model, variables = _ported(arch, tmp_path_factory)
  x, labels = _inputs(seed=1)
  _assert_train_step_matches(model, variables, _torch_resnet(arch), x, labels, TRAIN_RTOL,
                             GRAD_RTOL, f"{arch} float32")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_train_step_float64(arch, tmp_path_factory):
  # Exact semantics, free of float32 conditioning: the same weights in float64 on both sides.
  model, variables = _ported(arch, tmp_path_factory)
  x, labels = _inputs(seed=1)
  with jax.enable_x64(True):
    model64 = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
    variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    _assert_train_step_matches(model64, variables64, _torch_resnet(arch).double(), x.double(),
                               labels, F64_RTOL, F64_RTOL, f"{arch} float64")


@pytest.mark.parametrize("arch", ["resnet34", "resnet101", "resnet152", "resnext50_32x4d",
                                  "wide_resnet50_2"])
def test_eval_logits_every_depth(arch, highest_precision):
  from jaxpretrain import models

  reference = _torch_resnet(arch).eval()
  converted = tvr.to_jaxpretrain(
      {k: v.numpy() for k, v in reference.state_dict().items()}, arch=arch)
  check(converted)
  model = models.build_model(converted.model, **converted.model_kwargs)
  variables = params.unflatten(converted.flat_variables)
  x, _ = _inputs()
  with torch.no_grad():
    ref = reference(x).numpy()
  logits, _ = model.apply(variables, jnp.asarray(_nhwc(x)))
  assert _rel(logits, ref) <= EVAL_RTOL, f"{arch}: {_rel(logits, ref):.2e}"
