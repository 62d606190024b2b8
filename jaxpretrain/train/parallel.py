"""Data parallelism: the same pure step compiled with `jax.jit` over a mesh or with `jax.pmap`.

    par = make_parallel("jit", model=model, tx=opt.tx, loss_fn=loss_fn, lr_fn=opt.lr_fn)
    state = par.put_state(state)                 # host or device state -> placed
    for host_batch in batches:                   # this process's share of the global batch
      state, metrics = par.train_step(state, par.put_batch(host_batch))
    host_state = par.get_state(state)            # numpy, unreplicated, for inspection
    ckpt_state = par.global_state(state)         # global jax.Arrays, for orbax

Kinds:
  "jit"   one program over a 1-D `Mesh` of all devices (all hosts) with axis "data": the batch
          is split on "data", params and optimizer state are replicated; XLA inserts the
          gradient all-reduce. BatchNorm sees the global batch (SyncBatchNorm semantics).
  "fsdp"  as "jit", but each param and optimizer-state array is sharded along its largest
          dimension divisible by the number of devices (replicated when none is).
  "pmap"  one program per device with the batch reshaped to [local_devices, per_device, ...];
          gradients and metrics are summed over the axis "batch" (`lax.psum`, after dividing
          by the global count: see step.py), and the model's BatchNorm `axis_name` is set to
          that axis so batch statistics are averaged over devices (SyncBatchNorm).

The state is donated to the compiled step in all kinds: don't reuse a state after passing it.
Multi-host: call `initialize_distributed` first; each process passes its own share of the
global batch (global batch / process_count examples) to `put_batch`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpretrain import perf
from jaxpretrain.train import kinds
from jaxpretrain.train import step as step_lib
from jaxpretrain.train.state import TrainState

PyTree = Any
DATA_AXIS = "data"   # mesh axis the batch (and, with fsdp, the state) is split over
PMAP_AXIS = "batch"  # pmap's named axis
KINDS = kinds.PARALLEL  # --parallel


# ----------------------------------------------------------------------------- multi-host

def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           *, local_device_ids: Sequence[int] | None = None,
                           auto: bool = False) -> bool:
  """Starts jax.distributed for a multi-process run; a no-op for one process.

  Unset arguments come from the environment: JAX_COORDINATOR_ADDRESS ("host:port"),
  JAX_NUM_PROCESSES, JAX_PROCESS_ID. With none of them and `auto=True` (or when launched by
  SLURM `srun` / Open MPI with more than one task), JAX's cluster auto-detection fills them
  in (SLURM, Open MPI, Cloud TPU pod slices). Must run before any other JAX call.

  Returns:
    True when jax.distributed was initialized.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  given = (coordinator_address, num_processes, process_id)
  if all(v is None for v in given):
    launched = max(int(env.get("SLURM_NTASKS", 1)), int(env.get("OMPI_COMM_WORLD_SIZE", 1)))
    if auto or launched > 1:
      jax.distributed.initialize(local_device_ids=local_device_ids)
      return True
    return False
  if num_processes == 1:
    return False
  if any(v is None for v in given):
    names = ("coordinator_address", "num_processes", "process_id")
    missing = [n for n, v in zip(names, given, strict=True) if v is None]
    raise ValueError(f"multi-process run needs all of {list(names)}; missing: {missing}")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id}; allowed: 0 <= id < {num_processes}")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             local_device_ids=local_device_ids)
  return True


def to_host(tree: PyTree) -> PyTree:
  """Device arrays -> NumPy, gathering arrays sharded over other processes (a collective:
  every process must call it)."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(get, tree)


# ----------------------------------------------------------------------------- jit / mesh

def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (axis_name,))


def fsdp_spec(shape: Sequence[int], num_shards: int, axis_name: str = DATA_AXIS) -> P:
  """Shards the largest dimension divisible by `num_shards` (the first of equal ones)."""
  order = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in order:
    if shape[d] >= num_shards and shape[d] % num_shards == 0:
      return P(*([None] * d + [axis_name]))
  return P()


def state_sharding(state: TrainState, mesh: Mesh, *, fsdp: bool = False) -> TrainState:
  """NamedShardings for every leaf of `state` (a TrainState of shardings).

  Replicated, except with `fsdp` params and optimizer state (see `fsdp_spec`); batch
  statistics, step and rng stay replicated.
  """
  axis = mesh.axis_names[0]
  replicated = NamedSharding(mesh, P())

  def sharded(x):
    return NamedSharding(mesh, fsdp_spec(np.shape(x), mesh.devices.size, axis))

  shardings = jax.tree.map(lambda _: replicated, state)
  if fsdp:
    shardings = shardings.replace(params=jax.tree.map(sharded, state.params),
                                  opt_state=jax.tree.map(sharded, state.opt_state))
  return shardings


def put_global(tree: PyTree, shardings: PyTree) -> PyTree:
  """Host values (the same on every process) -> global arrays with `shardings`."""
  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, to_host(tree), shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the mesh axis."""
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's examples -> global arrays split over the mesh.

  Args:
    batch: {name: [local_batch, ...]}; local_batch divisible by the local device count.
  Returns:
    {name: [local_batch * process_count, ...]} global jax.Arrays.
  """
  return jax.make_array_from_process_local_data(batch_sharding(mesh), dict(batch))


def jit_train_step(mesh: Mesh, shardings: TrainState, *, donate: bool = True,
                   **step_kwargs) -> Callable:
  """`step.train_step` jitted over `mesh`: (state, global batch) -> (state, metrics)."""
  model = with_bn_axis(step_kwargs.pop("model"), None)
  fn = functools.partial(step_lib.train_step, model=model, axis_name=None, **step_kwargs)
  return jax.jit(fn, in_shardings=(shardings, batch_sharding(mesh)),
                 out_shardings=(shardings, NamedSharding(mesh, P())),
                 donate_argnums=(0,) if donate else (),
                 compiler_options=perf.compiler_options("train"))


def jit_eval_step(mesh: Mesh, shardings: TrainState, **eval_kwargs) -> Callable:
  """`step.eval_step` jitted over `mesh`: (state, global batch) -> {name: (sum, count)}."""
  model = with_bn_axis(eval_kwargs.pop("model"), None)
  fn = functools.partial(step_lib.eval_step, model=model, axis_name=None, **eval_kwargs)
  return jax.jit(fn, in_shardings=(shardings, batch_sharding(mesh)),
                 out_shardings=NamedSharding(mesh, P()),
                 compiler_options=perf.compiler_options("inference"))


# ----------------------------------------------------------------------------- pmap

def with_bn_axis(model: nn.Module, axis_name: str | None) -> nn.Module:
  """The model with its BatchNorm sync axis (field `axis_name`) set, if it has one."""
  names = {f.name for f in dataclasses.fields(model)}
  if "axis_name" in names and model.axis_name != axis_name:
    return model.clone(axis_name=axis_name)
  return model


def _local_mesh(axis_name: str = PMAP_AXIS) -> Mesh:
  return Mesh(np.asarray(jax.local_devices()), (axis_name,))


def replicate(tree: PyTree) -> PyTree:
  """Host or device values -> [local_devices, ...] arrays, one copy per local device."""
  mesh = _local_mesh()
  n = mesh.devices.size
  sharding = NamedSharding(mesh, P(PMAP_AXIS))
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(x, (n, *np.shape(x))), sharding),
      to_host(tree))


def unreplicate(tree: PyTree) -> PyTree:
  """[local_devices, ...] -> the first device's copy, as NumPy."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0]
                      if isinstance(x, jax.Array) else np.asarray(x)[0], tree)


def shard_batch(batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """[local_batch, ...] -> [local_devices, local_batch / local_devices, ...] on the devices."""
  mesh = _local_mesh()
  n = mesh.devices.size
  sharding = NamedSharding(mesh, P(PMAP_AXIS))

  def split(x):
    x = np.asarray(x)
    if x.shape[0] % n:
      raise ValueError(f"batch dimension {x.shape[0]} is not divisible by {n} local devices")
    return jax.device_put(x.reshape(n, x.shape[0] // n, *x.shape[1:]), sharding)

  return {k: split(v) for k, v in batch.items()}


def pmap_train_step(*, axis_name: str = PMAP_AXIS, donate: bool = True,
                    **step_kwargs) -> Callable:
  """`step.train_step` under pmap: (replicated state, sharded batch) -> (state, metrics),
  with the model's BatchNorm synced over `axis_name`."""
  model = with_bn_axis(step_kwargs.pop("model"), axis_name)
  fn = functools.partial(step_lib.train_step, model=model, axis_name=axis_name, **step_kwargs)
  return jax.pmap(fn, axis_name=axis_name, donate_argnums=(0,) if donate else ())


def pmap_eval_step(*, axis_name: str = PMAP_AXIS, **eval_kwargs) -> Callable:
  """`step.eval_step` under pmap: sums and counts over all devices (replicated)."""
  model = with_bn_axis(eval_kwargs.pop("model"), axis_name)
  fn = functools.partial(step_lib.eval_step, model=model, axis_name=axis_name, **eval_kwargs)
  return jax.pmap(fn, axis_name=axis_name)


# ----------------------------------------------------------------------------- one interface

@dataclasses.dataclass(frozen=True)
class Parallel:
  """A compiled train and eval step and the placement helpers that go with them."""
  kind: str
  mesh: Mesh  # all devices, axis "data": where `global_state` puts checkpointable state
  train_step: Callable[[TrainState, Any], tuple[TrainState, dict]]
  eval_step: Callable[[TrainState, Any], dict]
  put_state: Callable[[TrainState], TrainState]
  put_batch: Callable[[Mapping[str, np.ndarray]], Any]
  get_state: Callable[[TrainState], TrainState]        # -> NumPy, one copy
  get_metrics: Callable[[Any], Any]                     # -> NumPy scalars
  global_state: Callable[[TrainState], TrainState]      # -> global jax.Arrays (orbax)


def make_parallel(kind: str, *, model: nn.Module, tx, loss_fn, lr_fn=None, batch_fn=None,
                  inputs_fn=step_lib.model_inputs, example_state: TrainState | None = None,
                  devices: Sequence[jax.Device] | None = None, donate: bool = True
                  ) -> Parallel:
  """Train/eval steps compiled for `kind` ('jit' | 'fsdp' | 'pmap').

  Args:
    kind: see the module docstring.
    model, tx, loss_fn, lr_fn, batch_fn, inputs_fn: as for `step.train_step`.
    example_state: a state of the right shapes (needed for 'fsdp' shardings; any state or
      `jax.eval_shape` of one works).
    devices: the mesh's devices for 'jit' / 'fsdp' (default: all).
    donate: donate the state's buffers to the step.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown parallelism '{kind}'; known: {list(KINDS)}")
  mesh = make_mesh(devices)
  step_kw = dict(model=model, tx=tx, loss_fn=loss_fn, lr_fn=lr_fn, batch_fn=batch_fn,
                 inputs_fn=inputs_fn)
  eval_kw = dict(model=model, loss_fn=loss_fn, inputs_fn=inputs_fn)
  if kind == "pmap":

    def global_state(state):
      one = unreplicate(state)
      return put_global(one, state_sharding(one, mesh))

    return Parallel(
        kind, mesh, pmap_train_step(donate=donate, **step_kw), pmap_eval_step(**eval_kw),
        put_state=replicate, put_batch=shard_batch, get_state=unreplicate,
        get_metrics=unreplicate, global_state=global_state)
  if kind == "fsdp" and example_state is None:
    raise ValueError("kind='fsdp' needs example_state (for the parameter shapes)")
  cache: dict[str, TrainState] = {}

  def shardings(state):
    if "s" not in cache:
      cache["s"] = state_sharding(example_state or state, mesh, fsdp=kind == "fsdp")
    return cache["s"]

  compiled: dict[str, Callable] = {}

  def train(state, batch):
    if "train" not in compiled:
      compiled["train"] = jit_train_step(mesh, shardings(state), donate=donate, **step_kw)
    return compiled["train"](state, batch)

  def evaluate(state, batch):
    if "eval" not in compiled:
      compiled["eval"] = jit_eval_step(mesh, shardings(state), **eval_kw)
    return compiled["eval"](state, batch)

  return Parallel(
      kind, mesh, train, evaluate,
      put_state=lambda s: put_global(s, shardings(s)),
      put_batch=lambda b: put_batch(b, mesh),
      get_state=to_host, get_metrics=to_host,
      global_state=lambda s: s)
