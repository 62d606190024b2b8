"""Optimizer steps against torch: SGD (momentum, weight decay) on torchvision resnet18 and AdamW
(weight decay) on a tiny transformers BertForSequenceClassification; and the optimizers'
update rules over several steps on torch's own gradients.

Both sides start from the same random-init weights (the torch model converted through the
project's ports), take the same steps on the same batches, and are compared per tensor as
max|jax - torch| / max|torch|: the parameters and BatchNorm running statistics, and also their
change over the steps (what the optimizer computed; the parameters alone would hide a wrong
update under their own magnitude). torch decays only what our default `no_decay` decays (not
biases, not norm scales), through param groups.
"""

import functools

import jax
import numpy as np
import optax
import pytest

from jaxpretrain import models
from jaxpretrain import params as params_lib
from jaxpretrain.train import losses, optim, step
from jaxpretrain.train.state import create_train_state
from tests.torch_refs import perturb_parameters, random_torchvision_resnet

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.torch

# Parameters and running statistics after the steps: float32 at "highest" matmul precision on
# both sides, only summation order differs.
RTOL = 1e-4
# Their change in one SGD step is the gradient, ill-conditioned at 32x32 with batch 4 (layer4
# BatchNorm normalizes 4 values per channel): torch's own float32 step is 4e-4 from its
# float64 step, and so is ours; the change is also read off float32 parameters (BN scales
# near 1 round to 6e-8 against changes of 1e-4). Measured 9e-4.
SGD_UPDATE_RTOL = 2e-3
# Adam divides each gradient entry by its own magnitude, so an entry's update carries that
# entry's relative rounding error, large for the smallest gradients; measured 5.5e-4.
ADAM_UPDATE_RTOL = 2e-3
# Update rules alone on identical gradients (no model): a few float32 operations per step.
RULE_RTOL = 1e-6
# A fine-tuning lr: larger steps carry the gradient's conditioning (below) into the
# parameters themselves (1e-2 gives 9e-5 against RTOL; 3e-3 gives 4e-5).
LR, MOMENTUM, WEIGHT_DECAY = 3e-3, 0.9, 1e-3
ADAM_LR, ADAM_WD = 1e-3, 0.01


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _torch_groups(model, no_decay, weight_decay):
  """torch param groups matching our decay mask; frozen (requires_grad False) left out."""
  named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  return [{"params": [p for n, p in named if not no_decay(n)], "weight_decay": weight_decay},
          {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}]


def _compare(before, after_jax, after_torch, update_rtol):
  """Per tensor errors of the variables and of their change; returns the changed paths."""
  errors = {k: rel_err(after_jax[k], ref) for k, ref in after_torch.items()}
  worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
  assert max(errors.values()) <= RTOL, worst
  changed = [k for k, ref in after_torch.items() if not np.array_equal(ref, before[k])]
  errors = {k: rel_err(after_jax[k] - before[k], after_torch[k] - before[k]) for k in changed}
  worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
  assert max(errors.values()) <= update_rtol, worst
  return changed


def _run_jax(model, variables, opt, batches):
  state = create_train_state(variables, opt.tx, 0)
  fn = jax.jit(functools.partial(step.train_step, model=model, tx=opt.tx,
                                 loss_fn=losses.classification_loss_fn(), lr_fn=opt.lr_fn))
  loss = []
  for b in batches:
    state, metrics = fn(state, b)
    loss.append(float(metrics["loss"]))
  flat = params_lib.flatten({"params": state.params, "batch_stats": state.batch_stats})
  return {k: np.asarray(v) for k, v in flat.items()}, loss


# ----------------------------------------------------------------------------- ResNet + SGD

def _torch_resnet18(num_classes=10, seed=0):
  return random_torchvision_resnet("resnet18", num_classes, seed)


def test_sgd_momentum_step_matches_torch_on_resnet18(highest_precision):
  from ports import torchvision_resnet as tvr  # noqa: PLC0415

  ref = _torch_resnet18()
  to_flat = lambda m: tvr.to_jaxpretrain(
      {k: v.detach().numpy().copy() for k, v in m.state_dict().items()},
      arch="resnet18").flat_variables
  converted = tvr.to_jaxpretrain(
      {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}, arch="resnet18")
  before = converted.flat_variables
  rs = np.random.RandomState(0)
  batches = [{"image": rs.randn(4, 32, 32, 3).astype(np.float32),
              "label": rs.randint(0, 10, 4).astype(np.int32)}]  # one step: see SGD_UPDATE_RTOL

  # torch.optim.SGD: buf = momentum * buf + (grad + wd * p); p -= lr * buf.
  ref.train()
  no_decay = lambda n: n.endswith(".bias") or ".bn" in n or "downsample.1" in n or n.startswith(
      "bn1")
  sgd = torch.optim.SGD(_torch_groups(ref, no_decay, WEIGHT_DECAY), lr=LR, momentum=MOMENTUM)
  torch_loss = []
  for b in batches:
    sgd.zero_grad()
    logits = ref(torch.tensor(b["image"]).permute(0, 3, 1, 2))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(b["label"]).long())
    loss.backward()
    sgd.step()
    torch_loss.append(loss.item())

  model = models.build_model(converted.model, **converted.model_kwargs)
  opt = optim.make_optimizer("sgd", learning_rate=LR, momentum=MOMENTUM,
                             weight_decay=WEIGHT_DECAY)
  after, jax_loss = _run_jax(model, params_lib.unflatten(before), opt, batches)
  np.testing.assert_allclose(jax_loss, torch_loss, rtol=RTOL)
  changed = _compare(before, after, to_flat(ref), SGD_UPDATE_RTOL)
  assert len([k for k in changed if k.startswith("batch_stats/")]) == 2 * 20  # 20 BatchNorms


# ----------------------------------------------------------------------------- BERT + AdamW

BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=24, type_vocab_size=2,
            hidden_act="gelu", layer_norm_eps=1e-12, num_labels=3,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# Attention key biases get no true gradient (softmax ignores a per-row shift), only rounding
# noise, which Adam's g / sqrt(v) would blow up to +-lr with a random sign: both sides freeze
# them (which also tests freezing against torch's requires_grad=False).
FROZEN_JAX = r"encoder/layer_\d+/attention/key/bias"
FROZEN_TORCH = "attention.self.key.bias"


def test_adamw_step_matches_torch_on_bert_classifier(highest_precision):
  from ports import hf_bert  # noqa: PLC0415

  torch.manual_seed(0)
  config = transformers.BertConfig(**BERT)
  ref = transformers.BertForSequenceClassification(config)
  perturb_parameters(ref)
  to_flat = lambda m: hf_bert.to_jaxpretrain(
      {k: v.detach().numpy().copy() for k, v in m.state_dict().items()},
      hf_config=config.to_dict(), arch="BertForSequenceClassification").flat_variables
  converted = hf_bert.to_jaxpretrain(
      {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()},
      hf_config=config.to_dict(), arch="BertForSequenceClassification")
  before = converted.flat_variables

  rs = np.random.RandomState(0)
  batches = []
  for _ in range(2):  # the second step reads the Adam moments of the first
    ids = rs.randint(3, BERT["vocab_size"], (3, 12)).astype(np.int32)
    mask = (np.arange(12)[None] < np.array([[12], [7], [3]])).astype(np.int32)
    batches.append({"input_ids": np.where(mask == 1, ids, 0).astype(np.int32),
                    "attention_mask": mask,
                    "token_type_ids": (rs.rand(3, 12) < 0.5).astype(np.int32),
                    "label": rs.randint(0, 3, 3).astype(np.int32)})

  ref.train()  # dropout probabilities are 0
  for n, p in ref.named_parameters():
    p.requires_grad_(FROZEN_TORCH not in n)
  no_decay = lambda n: n.endswith(".bias") or "LayerNorm.weight" in n
  adamw = torch.optim.AdamW(_torch_groups(ref, no_decay, ADAM_WD), lr=ADAM_LR,
                            betas=(0.9, 0.999), eps=1e-8)
  torch_loss = []
  for b in batches:
    adamw.zero_grad()
    out = ref(torch.tensor(b["input_ids"]).long(),
              attention_mask=torch.tensor(b["attention_mask"]).long(),
              token_type_ids=torch.tensor(b["token_type_ids"]).long())
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor(b["label"]).long())
    loss.backward()
    adamw.step()
    torch_loss.append(loss.item())

  model = models.build_model(converted.model, **converted.model_kwargs)
  opt = optim.make_optimizer("adamw", learning_rate=ADAM_LR, weight_decay=ADAM_WD,
                             b1=0.9, b2=0.999, eps=1e-8, freeze=[FROZEN_JAX])
  after, jax_loss = _run_jax(model, params_lib.unflatten(before), opt, batches)
  np.testing.assert_allclose(jax_loss, torch_loss, rtol=RTOL)
  changed = _compare(before, after, to_flat(ref), ADAM_UPDATE_RTOL)
  frozen = [k for k in before if "attention/key/bias" in k]
  assert len(frozen) == 2 and all(np.array_equal(after[k], before[k]) for k in frozen)
  assert len(changed) == len(before) - len(frozen)


# ----------------------------------------------------------------------------- update rules

@pytest.mark.parametrize("name, kwargs", [
    ("sgd", dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, nesterov=True)),
    ("sgd", dict(momentum=0.0)),
    ("adamw", dict(b1=0.8, b2=0.95, eps=1e-6)),
])
def test_update_rules_match_torch_over_steps(name, kwargs):
  """Four steps of a linear layer on torch's gradients: momentum, nesterov, Adam moments and
  bias correction, and decay of the weight only (torch param groups vs `no_decay`)."""
  torch.manual_seed(0)
  layer = torch.nn.Linear(5, 3)
  params = {"dense": {"kernel": layer.weight.detach().numpy().T.copy(),
                      "bias": layer.bias.detach().numpy().copy()}}
  groups = [{"params": [layer.weight], "weight_decay": 0.1},
            {"params": [layer.bias], "weight_decay": 0.0}]
  lr = 0.05
  ref = (torch.optim.SGD(groups, lr=lr, **kwargs) if name == "sgd" else
         torch.optim.AdamW(groups, lr=lr, betas=(kwargs["b1"], kwargs["b2"]), eps=kwargs["eps"]))
  tx = optim.make_optimizer(name, learning_rate=lr, weight_decay=0.1, **kwargs).tx
  opt_state = tx.init(params)
  rs = np.random.RandomState(0)
  for _ in range(4):
    x, y = torch.tensor(rs.randn(8, 5), dtype=torch.float32), torch.tensor(rs.randn(8, 3))
    ref.zero_grad()
    torch.nn.functional.mse_loss(layer(x), y.float()).backward()
    grads = {"dense": {"kernel": layer.weight.grad.numpy().T.copy(),
                       "bias": layer.bias.grad.numpy().copy()}}
    ref.step()
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(np.asarray, optax.apply_updates(params, updates))
    np.testing.assert_allclose(params["dense"]["kernel"], layer.weight.detach().numpy().T,
                               rtol=RULE_RTOL, atol=RULE_RTOL)
    np.testing.assert_allclose(params["dense"]["bias"], layer.bias.detach().numpy(),
                               rtol=RULE_RTOL, atol=RULE_RTOL)
