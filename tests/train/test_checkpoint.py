"""Checkpoints: exact resume (n steps == k steps + save + fresh restore + n - k steps), keep-N,
the data iterator's state, and incomplete checkpoints never restored."""

import shutil

import jax
import numpy as np
import pytest

from jaxpretrain.train import checkpoint, losses, optim, parallel
from jaxpretrain.train.state import create_train_state
from tests.train import tiny

N, K = 5, 2


def _setup(model_name, kind):
  model = tiny.TinyCNN() if model_name == "cnn" else tiny.TinyMLP(num_classes=3, dropout=0.5)
  batches = [tiny.image_batch(i, batch=8) for i in range(N)]
  opt = optim.make_optimizer("adamw", learning_rate=0.05, weight_decay=0.1, schedule="cosine",
                             warmup_steps=2, total_steps=N)
  fresh = lambda: create_train_state(tiny.init(model, batches[0]), opt.tx, 7)
  par = parallel.make_parallel(kind, model=model, tx=opt.tx, lr_fn=opt.lr_fn,
                               loss_fn=losses.classification_loss_fn(), example_state=fresh())
  return par, fresh, batches


def _steps(par, state, batches):
  for b in batches:
    state, _ = par.train_step(state, par.put_batch(b))
  return state


@pytest.mark.parametrize("model_name, kind", [("cnn", "fsdp"), ("mlp_dropout", "pmap")])
def test_resume_is_exact(tmp_path, model_name, kind):
  par, fresh, batches = _setup(model_name, kind)
  straight = par.get_state(_steps(par, par.put_state(fresh()), batches))

  with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    state = _steps(par, par.put_state(fresh()), batches[:K])
    # Async save copies to host before returning, so donating `state` afterwards is safe.
    ckpt.save(K, par.global_state(state), data_state={"position": K})
    _steps(par, state, batches[K:K + 1])  # the interrupted run goes on a little, unsaved

  target = par.global_state(par.put_state(fresh()))  # a new process: fresh init as target
  restored, data_state = checkpoint.restore_latest(tmp_path, target)
  assert data_state == {"position": K}
  assert int(par.get_state(par.put_state(restored)).step) == K
  resumed = par.get_state(_steps(par, par.put_state(restored), batches[data_state["position"]:]))
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_keeps_the_latest_n_and_ignores_incomplete(tmp_path):
  par, fresh, _ = _setup("cnn", "jit")
  state = par.put_state(fresh())
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state, data_state={"step": step})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    assert ckpt.save(3, state) is False  # already there
  # A save of step 9 that died before its commit (the rename of orbax's temporary directory).
  ckpts = tmp_path / "checkpoints"
  shutil.copytree(ckpts / "3", ckpts / "9.orbax-checkpoint-tmp-123")
  _, data_state = checkpoint.restore_latest(tmp_path, state)
  assert data_state == {"step": 3}


def test_no_checkpoint_gives_none(tmp_path):
  assert checkpoint.restore_latest(tmp_path, None) is None


def test_max_to_keep_validated(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep=0; allowed"):
    checkpoint.Checkpointer(tmp_path, max_to_keep=0)
