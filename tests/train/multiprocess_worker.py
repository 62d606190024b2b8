"""One process of a data-parallel run on fake CPU devices; writes its final state to .npz.

    python -m tests.train.multiprocess_worker --out=DIR --devices=2 \
        --num_processes=2 --process_id=0 --coordinator=127.0.0.1:PORT

Every process feeds its own slice of the same global batches (global batch / processes
examples) and runs each parallel kind ("jit", "fsdp", "pmap") for a few steps of SGD on a tiny
CNN with BatchNorm. Process 0 writes `<out>/<kind>.npz`: the flattened final variables
(params/..., batch_stats/...) and the per-step losses. Run by tests/train/test_multiprocess.py.
"""

import argparse
import os
import sys

STEPS = 3
GLOBAL_BATCH = 8
KINDS = ("jit", "fsdp", "pmap")


def main(argv):
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--devices", type=int, required=True, help="fake CPU devices per process")
  ap.add_argument("--num_processes", type=int, default=1)
  ap.add_argument("--process_id", type=int, default=0)
  ap.add_argument("--coordinator", default=None)
  args = ap.parse_args(argv)
  # Before JAX is imported: this process's device count, CPU only.
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"

  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  # Cross-process collectives on CPU go through gloo (JAX's default on CPU; explicit here).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from jaxpretrain import params as params_lib  # noqa: PLC0415
  from jaxpretrain.train import losses, optim, parallel  # noqa: PLC0415
  from jaxpretrain.train.state import create_train_state  # noqa: PLC0415
  from tests.train import tiny  # noqa: PLC0415

  parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  assert jax.process_count() == args.num_processes
  assert jax.device_count() == args.devices * args.num_processes

  per_process = GLOBAL_BATCH // args.num_processes
  mine = slice(args.process_id * per_process, (args.process_id + 1) * per_process)
  batches = [{k: v[mine] for k, v in tiny.image_batch(i, batch=GLOBAL_BATCH).items()}
             for i in range(STEPS)]
  model = tiny.TinyCNN(features=4)  # 4 = global device count: fsdp splits over both hosts
  opt = optim.make_optimizer("sgd", learning_rate=0.1, momentum=0.9)
  for kind in KINDS:
    state = create_train_state(tiny.init(model, batches[0]), opt.tx, 0)
    par = parallel.make_parallel(kind, model=model, tx=opt.tx, lr_fn=opt.lr_fn,
                                 loss_fn=losses.classification_loss_fn(), example_state=state)
    state = par.put_state(state)
    loss = []
    for b in batches:
      state, metrics = par.train_step(state, par.put_batch(b))
      loss.append(float(par.get_metrics(metrics)["loss"]))
    host = par.get_state(state)
    if args.process_id == 0:
      flat = params_lib.flatten({"params": host.params, "batch_stats": host.batch_stats})
      np.savez(os.path.join(args.out, f"{kind}.npz"), loss=np.asarray(loss), **flat)
  print(f"process {args.process_id}: done", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
