"""Training: pure steps, losses, optimizers, data parallelism and checkpoints.

  losses.py      weighted (sum, count) losses and metrics, cross-entropy, MLM masking
  state.py       TrainState (params, batch_stats, opt_state, step, rng)
  step.py        train_step / eval_step, pure and module-level
  optim.py       make_optimizer: sgd | adamw, schedules, clipping, accumulation, freezing,
                 per-group learning-rate multipliers
  parallel.py    the step under jit over a mesh (replicated or fsdp) or pmap; multi-host set-up
  checkpoint.py  orbax checkpoints of the state plus the data iterator's state

Submodules are imported explicitly (`from jaxpretrain.train import step`), so importing one
does not pull in orbax or the others.
"""
