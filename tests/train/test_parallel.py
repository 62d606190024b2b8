"""One device, jit over an 8-device mesh (replicated and fsdp) and pmap over 8 devices give
the same losses and parameters on the same global batches (with SyncBatchNorm)."""

import jax
import numpy as np
import pytest

from jaxpretrain import models
from jaxpretrain import params as params_lib
from jaxpretrain.train import losses, optim, parallel
from jaxpretrain.train.state import create_train_state
from tests.train import tiny

# Float32 sums over 16 examples split 8 ways are added in a different order than on one
# device; after a few SGD steps the results differ by a few ulps times the step count.
REDUCTION_ORDER_RTOL = 1e-5
REDUCTION_ORDER_ATOL = 1e-6
# ResNet's layer4 is 1x1 here: BatchNorm normalizes 16 values per channel, which amplifies
# the reduction-order differences; per tensor, max|diff| / max|reference|.
RESNET_RTOL = 1e-5
STEPS = 3
GLOBAL_BATCH = 16


def _model(name):
  if name == "tiny_cnn":
    return tiny.TinyCNN(), 6
  # The project's ResNet (torch BatchNorm semantics, its own cross-device statistics), with
  # one basic block per stage and 8 stem channels; 16x16 inputs leave layer4 at 1x1.
  return models.build_model("resnet_tiny", num_classes=3), 16


def _run(kind, devices=None, model_name="tiny_cnn", lr=0.1):
  model, size = _model(model_name)
  batches = [tiny.image_batch(i, batch=GLOBAL_BATCH, size=size, channels=3)
             for i in range(STEPS)]
  opt = optim.make_optimizer("sgd", learning_rate=lr, momentum=0.9, weight_decay=1e-3)
  state = create_train_state(tiny.init(model, batches[0]), opt.tx, 0)
  par = parallel.make_parallel(kind, model=model, tx=opt.tx,
                               loss_fn=losses.classification_loss_fn(), lr_fn=opt.lr_fn,
                               example_state=state, devices=devices)
  state = par.put_state(state)
  loss = []
  for b in batches:
    state, metrics = par.train_step(state, par.put_batch(b))
    loss.append(float(par.get_metrics(metrics)["loss"]))
  stats = par.eval_step(state, par.put_batch(batches[0]))
  return loss, par.get_state(state), par.get_metrics(stats), state


@pytest.fixture(scope="module")
def reference():
  return _run("jit", devices=jax.devices()[:1])


@pytest.mark.parametrize("kind", ["jit", "fsdp", "pmap"])
def test_same_as_one_device(kind, reference):
  ref_loss, ref_state, ref_eval, _ = reference
  loss, state, evaluation, _ = _run(kind)
  np.testing.assert_allclose(loss, ref_loss, rtol=REDUCTION_ORDER_RTOL)
  tol = dict(rtol=REDUCTION_ORDER_RTOL, atol=REDUCTION_ORDER_ATOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), state.params,
               ref_state.params)
  # Synced BatchNorm: running statistics of the global batch, not of one device's share.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), state.batch_stats,
               ref_state.batch_stats)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), state.opt_state,
               ref_state.opt_state)
  assert int(state.step) == STEPS
  np.testing.assert_allclose(evaluation["loss"], ref_eval["loss"], rtol=REDUCTION_ORDER_RTOL)
  assert float(evaluation["loss"][1]) == GLOBAL_BATCH


def test_resnet_pmap_syncs_its_batchnorm():
  """The project's ResNet under pmap: its `axis_name` is set and its BatchNorm (unbiased
  running variance over the global count) matches one device."""
  ref_loss, ref, _, _ = _run("jit", devices=jax.devices()[:1], model_name="resnet_tiny",
                             lr=0.01)
  loss, got, _, _ = _run("pmap", model_name="resnet_tiny", lr=0.01)
  np.testing.assert_allclose(loss, ref_loss, rtol=REDUCTION_ORDER_RTOL)
  for tree, ref_tree in ((got.params, ref.params), (got.batch_stats, ref.batch_stats)):
    flat, ref_flat = params_lib.flatten(tree), params_lib.flatten(ref_tree)
    errors = {k: float(np.abs(flat[k] - v).max() / np.abs(v).max()) for k, v in ref_flat.items()}
    assert max(errors.values()) <= RESNET_RTOL, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def test_fsdp_shards_params_and_optimizer_state():
  _, _, _, state = _run("fsdp")
  kernel = state.params["conv"]["kernel"]  # [3, 3, 3, 8]: the 8 output channels are split
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "data")
  assert kernel.addressable_shards[0].data.shape == (3, 3, 3, 1)
  assert state.params["head"]["bias"].sharding.is_fully_replicated  # [3]: not divisible
  assert state.batch_stats["bn"]["mean"].sharding.is_fully_replicated
  trace = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "sharding"))
  assert any(not x.sharding.is_fully_replicated for x in trace)


def test_fsdp_spec():
  assert parallel.fsdp_spec((3, 16, 8), 8) == jax.sharding.PartitionSpec(None, "data")
  assert parallel.fsdp_spec((6, 5), 8) == jax.sharding.PartitionSpec()
  assert parallel.fsdp_spec((), 8) == jax.sharding.PartitionSpec()


def test_unknown_kind():
  with pytest.raises(ValueError, match="unknown parallelism 'dp'; known"):
    parallel.make_parallel("dp", model=tiny.TinyCNN(), tx=None, loss_fn=None)


def test_initialize_distributed_single_process_is_noop(monkeypatch):
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
            "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(k, raising=False)
  assert parallel.initialize_distributed() is False
  assert parallel.initialize_distributed(num_processes=1) is False
  with pytest.raises(ValueError, match="missing: \\['process_id'\\]"):
    parallel.initialize_distributed("127.0.0.1:1234", 2)
