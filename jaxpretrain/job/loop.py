"""The training loop of fine-tuning and pretraining: one function, `run(config)`.

    result = run(JobConfig(workdir=..., dataset="digits_local", model="resnet_tiny",
                           steps=100))
    result.metrics["accuracy"], result.report

Order of work (everything that can fail on a bad flag fails before data is built or a step
compiled): validate flags -> devices -> workdir writable + lock -> flags equal to the
workdir's earlier run -> model (checkpoint converted if needed) -> `--freeze`/`--lr_mult`
regexes -> data -> free disk space -> compile and train.

Resumption: rerunning the same command restores the latest complete checkpoint (state and
data-iterator position), drops metrics.jsonl records written after it and continues; the
data order, dropout keys (`fold_in(rng, step)`) and so the final parameters are those of an
uninterrupted run. A finished workdir returns its stored result without training again
(without writing anything: also when the workdir has become read-only).

What a resume must match is stored twice: in flags.json and inside every checkpoint (the
flags that change the result, with paths resolved, and a fingerprint of the dataset's
contents, `loaders.fingerprint`). A mismatch with either is refused in one line naming the
flags, so a deleted flags.json or a replaced dataset file cannot mix two runs. --workdir
itself is never compared. Flags in `config.FLOAT_TOLERANCE` (--parallel, --cpu_devices, the
distributed ones) may change, with a message: the result then agrees to float tolerance only.

Crash safety:
  - the workdir lock (workdir.py) refuses a second run in the same workdir;
  - SIGTERM: the current step finishes, a checkpoint is written and committed, then `Stopped`
    is raised (the mains exit with status 143); the rerun resumes from it;
  - a non-finite loss or gradient norm (checked after every step):
      --on_nan=stop  raises NonFiniteError naming the step, the batch and the metric; the
                     poisoned state is not saved;
      --on_nan=skip  restores the latest checkpoint (state and data position), replays the
                     steps from there to the bad batch exactly as before, then skips that
                     batch: the run still makes its full number of optimizer steps and reads
                     one more batch. Skipped positions are stored with each checkpoint so a
                     resumed run skips them too; more than --max_skips of them stop the run
                     (a diverging run is not a bad batch). A checkpoint at step 0 is written
                     so there is always one to return to.
  - checkpoints are orbax commits: an interrupted save is never restored; a committed step
    damaged later (a file removed or cut short) is skipped, named, and the newest step that
    restores is used (train/checkpoint.py);
  - final.json and metrics.jsonl rewrites are atomic (a temporary file, then a rename); a run
    resumed at its last step drops the final evaluation it logged before being stopped, so
    it is logged once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxpretrain import perf, pretrained
from jaxpretrain.job import config as config_lib
from jaxpretrain.job import evaluation as evaluation_lib
from jaxpretrain.job import flags as flags_lib
from jaxpretrain.job import metrics as metrics_lib
from jaxpretrain.job import model_record, multihost
from jaxpretrain.job import report as report_lib
from jaxpretrain.job import task as task_lib
from jaxpretrain.job import workdir as workdir_lib
from jaxpretrain.job.config import ConfigError, JobConfig
from jaxpretrain.train import checkpoint as checkpoint_lib
from jaxpretrain.train import losses, optim, parallel
from jaxpretrain.train.state import create_train_state

RESULT = "final.json"
REPORT = "report.md"
CURVES = "curves.png"
EXIT_STOPPED = 143  # 128 + SIGTERM, what a shell reports for a process killed by it
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C


class NonFiniteError(FloatingPointError):
  """A NaN/Inf loss or gradient norm; the message names the step, batch and metric."""


class Stopped(RuntimeError):
  """SIGTERM or Ctrl-C: a checkpoint of `step` was written; rerun the same command to resume.

  `status` is the exit status the mains give: 143 for SIGTERM, 130 for SIGINT."""

  def __init__(self, step: int, signal_name: str, workdir: pathlib.Path):
    super().__init__(f"{signal_name} at step {step}: checkpoint written to {workdir}/"
                     f"{checkpoint_lib.CHECKPOINT_DIR}/{step}; rerun the same command to resume")
    self.step = step
    self.status = EXIT_INTERRUPTED if signal_name == "SIGINT" else EXIT_STOPPED


@dataclasses.dataclass
class Hooks:
  """Test and tooling hooks (not flags)."""
  batch: Callable[[int, dict], dict] | None = None  # (data position, host batch) -> batch
  after_step: Callable[[int], None] | None = None  # called with the new step number


@dataclasses.dataclass
class Result:
  """What a finished run gives back (also stored as <workdir>/final.json)."""
  workdir: str
  steps: int
  metrics: dict[str, Any]  # the final test-set evaluation
  report: str
  model_dir: str
  wall_time_s: float
  steps_per_s: float
  resumed_from: int | None
  summary: dict[str, Any]


# ----------------------------------------------------------------------------- set-up

def set_cpu_devices(n: int) -> None:
  """Asks XLA for `n` host devices; only effective before the JAX backend starts."""
  if not n:
    return
  flag = f"--xla_force_host_platform_device_count={n}"
  current = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in current:
    os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()
  if jax.devices()[0].platform == "cpu" and jax.local_device_count() != n:
    raise ConfigError(f"--cpu_devices={n}, but JAX already started with "
                      f"{jax.local_device_count()} CPU devices (set it before JAX starts, or "
                      f"XLA_FLAGS={flag})")


def start_devices(config: JobConfig) -> None:
  """CPU device count, jax.distributed, then the batch-divisibility check."""
  set_cpu_devices(config.cpu_devices)
  parallel.initialize_distributed(config.coordinator_address, config.num_processes,
                                  config.process_id)
  multihost.start_watchdog()  # a lost process -> one line, not a hang in a collective
  config_lib.check_devices(config, jax.device_count(), jax.local_device_count(),
                           jax.process_count())


def _read_json(path: pathlib.Path) -> dict | None:
  """A JSON object file, or None when missing or unreadable (cut short by a crash)."""
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def _write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes `text` to a temporary file, then renames it: a crash leaves old or new, never
  half a file."""
  tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


def _refuse(wd: workdir_lib.Workdir, diff: dict[str, tuple], where: str) -> None:
  if diff:
    shown = ", ".join(f"--{k}: {a!r} -> {b!r}" for k, a, b in
                      ((k, *v) for k, v in sorted(diff.items())))
    raise ConfigError(f"--workdir={str(wd.path)!r} holds a run with other flags ({shown}; "
                      f"{where}); rerun with the same flags to resume, or choose another "
                      "--workdir")


def _say_tolerance(diff: dict[str, tuple], log) -> None:
  if diff:
    shown = ", ".join(f"--{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
    log(f"resuming with {shown}: allowed, but from here the result agrees with an "
        "uninterrupted run to float tolerance (~1e-6), not bit for bit")


def _check_resume(wd: workdir_lib.Workdir, config: JobConfig, log=print
                  ) -> tuple[int, dict] | None:
  """Refuses a resume with other flags (flags.json, then the newest checkpoint's record).

  Returns:
    (step, run record) of the newest checkpoint that has one, for the data check once the
    dataset's fingerprint is known; None on a fresh workdir.
  """
  saved = _read_json(wd / "flags.json")
  if saved is not None:
    _refuse(wd, config_lib.resume_differences(saved, config), "flags.json")
  newest = _newest_run_record(wd)
  if newest is not None:
    step, record = newest
    flags = record.get("flags")
    if isinstance(flags, dict):
      _refuse(wd, config_lib.key_differences(flags, config), f"stored in checkpoint {step}")
  devices = saved if saved is not None else (newest[1].get("devices") if newest else None)
  if isinstance(devices, dict):
    _say_tolerance(config_lib.tolerance_differences(devices, config), log)
  return newest


def _newest_run_record(wd: workdir_lib.Workdir) -> tuple[int, dict] | None:
  """(step, "run" record) of the newest checkpoint whose data JSON reads and holds one."""
  if not checkpoint_lib.checkpoint_dir(wd.path).is_dir():
    return None
  with checkpoint_lib.Checkpointer(wd.path, max_to_keep=None, read_only=True) as ckpt:
    got = ckpt.newest_data()
  if got is None or not isinstance(got[1].get("run"), dict):
    return None  # none, or written before checkpoints held their run record
  return got[0], got[1]["run"]


def _check_data(config: JobConfig, step: int, record: dict, fingerprint: dict) -> None:
  """The dataset's contents must be those checkpoint `step` was trained on."""
  stored = record.get("data")
  if isinstance(stored, dict) and stored != fingerprint:
    changed = sorted(k for k in {*stored, *fingerprint} if stored.get(k) != fingerprint.get(k))
    shown = ", ".join(f"{k}: {stored.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
    raise ConfigError(f"--dataset={config.dataset!r}: the data changed since checkpoint {step} "
                      f"was written ({shown}); restore the original data to resume, or "
                      "choose another --workdir")


def _run_record(config: JobConfig, fingerprint: dict) -> dict:
  """What every checkpoint stores about its run, for `_check_resume` and `_check_data`."""
  now = config.to_json()
  return {"flags": config_lib.resume_key(config), "data": fingerprint,
          "devices": {k: now[k] for k in config_lib.FLOAT_TOLERANCE}}


def _check_classes(config: JobConfig, data) -> None:
  """Classification needs at least two classes among the training labels."""
  labels = getattr(data.train, "labels", None)
  present = np.unique(np.asarray(labels)) if labels is not None else range(
      data.meta.num_classes)
  if len(present) < 2:
    names = [data.meta.class_names[int(c)] for c in present]
    raise ConfigError(f"--dataset={config.dataset!r}: the training split holds "
                      f"{len(present)} class ({', '.join(map(repr, names))}, "
                      f"{len(data.train)} examples); classification needs at least 2")


def _stored_result(wd: workdir_lib.Workdir, config: JobConfig, log) -> Result | None:
  """The result of a finished run in `wd` (same flags), or None. Reads only: a finished
  workdir that became read-only still answers."""
  stored = _read_json(wd / RESULT)
  if stored is None:
    if (wd / RESULT).exists():
      log(f"{wd / RESULT} is unreadable (cut short?); finishing the run again")
    return None
  names = {f.name for f in dataclasses.fields(Result)}
  if set(stored) != names:
    log(f"{wd / RESULT} does not hold a run's result; finishing the run again")
    return None
  _check_resume(wd, config, log)
  log(f"{wd.path} already holds a finished run ({stored['steps']} steps); nothing to do")
  return Result(**stored)


def _check_export_dir(config: JobConfig) -> None:
  """--export_dir must be creatable: fail now, not after training."""
  if config.export_dir is None:
    return
  path = pathlib.Path(config.export_dir).absolute()
  existing = next(p for p in (path, *path.parents) if p.exists())
  if not existing.is_dir() or not os.access(existing, os.W_OK):
    raise ConfigError(f"--export_dir={config.export_dir!r}: {existing} is not a writable "
                      "folder; allowed: a folder that exists or can be created")


def _write_run_files(wd: workdir_lib.Workdir, config: JobConfig) -> None:
  (wd / "flags.txt").write_text(flags_lib.flagfile_text(config))
  saved = {**config.to_json(), "resolved_paths": config_lib.resolved_paths(config)}
  _write_atomic(wd / "flags.json", json.dumps(saved, indent=2, sort_keys=True) + "\n")
  revisions = wd / "git_revision.txt"
  lines = revisions.read_text().splitlines() if revisions.exists() else []
  rev = workdir_lib.git_revision()
  if not lines or lines[-1] != rev:
    revisions.write_text("".join(f"{r}\n" for r in [*lines, rev]))


def _nbytes(tree) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * math.prod(x.shape)
                 for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------- evaluation

def make_predict(par: parallel.Parallel, model, family=None) -> Callable[[Any, dict], tuple]:
  """`predict(state, host_batch) -> (logits [b, C], label [b], mask [b])` as NumPy, global:
  `evaluation.predict_batch` under the run's parallelism."""
  def fwd(state, batch):
    return evaluation_lib.predict_batch(model, family, state.variables, batch)

  if par.kind == "pmap":
    compiled = jax.pmap(fwd, axis_name=parallel.PMAP_AXIS)

    def predict(state, batch):
      outs = [np.asarray(x) for x in compiled(state, par.put_batch(batch))]
      outs = [x.reshape(-1, *x.shape[2:]) for x in outs]
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415
        outs = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in outs]
      return tuple(outs)
    return predict
  compiled = jax.jit(fwd, compiler_options=perf.compiler_options("inference"))
  return lambda state, batch: tuple(parallel.to_host(compiled(state, par.put_batch(batch))))


def mlm_evaluate(par: parallel.Parallel, state, source, preprocess, batch_fn, batch_size: int,
                 seed: int, what: str | None = None) -> dict[str, float]:
  """Masked-token loss and accuracy over the split, masks drawn from a fixed key per batch."""
  from jaxpretrain.data import pipeline  # noqa: PLC0415

  mask = jax.jit(batch_fn)
  key = jax.random.key(seed + 1)
  it = pipeline.eval_iterator(source, preprocess, global_batch_size=batch_size, num_threads=2,
                              prefetch_buffer_size=4)
  stats = None
  for i, batch in enumerate(evaluation_lib.eval_batches(it, source, batch_size, what)):
    masked = jax.tree.map(np.asarray, mask(jax.random.fold_in(key, i), batch))
    out = par.get_metrics(par.eval_step(state, par.put_batch(masked)))
    stats = losses.add_stats(stats, out)
  it.close()
  result = losses.finalize(stats)
  result["perplexity"] = float(np.exp(min(result["loss"], 50.0)))
  return result


# ----------------------------------------------------------------------------- the loop

def run(config: JobConfig, *, hooks: Hooks | None = None, log=print) -> Result:
  """Trains (or resumes) the run described by `config` and writes its report.

  Raises:
    ConfigError: a bad flag (the message names it), before any work.
    WorkdirError: the workdir is in use, not writable, or short of disk space.
    NonFiniteError: a NaN/Inf loss or gradient norm with --on_nan=stop (or too many skips).
    Stopped: SIGTERM arrived; a checkpoint was written.
  """
  config_lib.validate(config)
  wd = workdir_lib.Workdir(config.workdir)
  stored = _stored_result(wd, config, log)
  if stored is not None:
    return stored
  task_lib.check_inputs(config)  # --dataset, --init_checkpoint: before any conversion
  _check_export_dir(config)
  start_devices(config)
  hooks = hooks or Hooks()
  # What the run writes in place (checkpoints/ may be a mount of its own); the files it
  # replaces by a rename (flags.json, final.json) need only the workdir itself.
  wd.check_writable(inside=(checkpoint_lib.CHECKPOINT_DIR, "model", workdir_lib.METRICS,
                            "flags.txt", "git_revision.txt", REPORT, CURVES))
  # One lock per workdir: process 0 holds it for all processes of a multi-process run.
  lock = wd.lock() if jax.process_index() == 0 else contextlib.nullcontext()
  with lock, workdir_lib.StopSignal() as stop, multihost.guard():
    newest = _check_resume(wd, config, log)
    result = _run_locked(config, wd, stop, hooks, log, newest)
    multihost.finish()  # every process is done before any exits
    return result


def _run_locked(config, wd, stop, hooks, log, newest) -> Result:
  t_start = time.perf_counter()
  lead = jax.process_index() == 0
  base = task_lib.model_spec(config, wd.path, log)
  probe = task_lib.with_head(base, config, config.num_classes or 2)
  config_lib.check_param_regexes(config, task_lib.param_paths(probe))
  data = task_lib.load_data(task_lib.DataOptions.of(config), base)
  fingerprint = _fingerprint(config)
  if newest is not None:
    _check_data(config, *newest, fingerprint)
  run_record = _run_record(config, fingerprint)
  num_classes = None
  if config.task == "classification":
    _check_classes(config, data)
    num_classes = config.num_classes or data.meta.num_classes
    if num_classes < data.meta.num_classes:
      raise ConfigError(f"--num_classes={num_classes}; allowed: >= {data.meta.num_classes} "
                        f"(the classes of {config.dataset})")
  spec = task_lib.with_head(base, config, num_classes)
  total = config_lib.total_steps(config, len(data.train))
  log(f"model {spec.name} ({'from ' + str(spec.checkpoint) if spec.checkpoint else 'scratch'})"
      f", {config.dataset}: {len(data.train)} train / {len(data.test)} test examples, "
      f"{total} steps of {config.batch_size}, {jax.device_count()} device(s), "
      f"--parallel={config.parallel}")

  variables = task_lib.init_variables(spec, config.seed, log)
  model = spec.build(config.dtype)
  opt = optim.make_optimizer(
      config.optimizer, learning_rate=config.lr, schedule=config.schedule,
      warmup_steps=config.warmup, total_steps=total, momentum=config.momentum,
      weight_decay=config.weight_decay, clip_norm=config.clip_norm, freeze=config.freeze,
      lr_mults=config.lr_mult)
  loss_fn, batch_fn = task_lib.loss_and_batch_fn(config, data, spec)
  state0 = create_train_state(variables, opt.tx, config.seed)
  del variables
  wd.check_free_space(_nbytes(state0) * (config.keep_checkpoints + 1) + _nbytes(state0.params))
  if lead:
    _write_run_files(wd, config)

  par = parallel.make_parallel(config.parallel, model=model, tx=opt.tx, loss_fn=loss_fn,
                               lr_fn=opt.lr_fn, batch_fn=batch_fn, example_state=state0,
                               inputs_fn=spec.descriptor.inputs)
  state = par.put_state(state0)
  del state0
  ckpt = checkpoint_lib.Checkpointer(wd.path, max_to_keep=config.keep_checkpoints)
  tb = metrics_lib.TensorBoard(wd.path, enabled=lead)
  with ckpt, tb:  # closed on every path; a failing one does not raise a failed save again
    return _train(config, wd, stop, hooks, log, lead, t_start, spec, data, model, par, state,
                  ckpt, batch_fn, total, run_record, tb=tb)


def _fingerprint(config: JobConfig) -> dict:
  from jaxpretrain.data import loaders  # noqa: PLC0415 -- TFDS import is slow

  try:
    return loaders.fingerprint(config.dataset, config.data_dir)
  except (OSError, ValueError) as e:
    raise ConfigError(f"--dataset={config.dataset!r}: cannot fingerprint its files: "
                      f"{type(e).__name__}: {e}") from None


def _train(config, wd, stop, hooks, log, lead, t_start, spec, data, model, par, state, ckpt,
           batch_fn, total, run_record, *, tb) -> Result:
  from jaxpretrain.data import pipeline  # noqa: PLC0415

  mlog = workdir_lib.MetricsLog(wd / workdir_lib.METRICS, enabled=lead)

  def write(record):  # metrics.jsonl and TensorBoard
    mlog.write(record)
    tb.write(record)

  train_it = pipeline.train_iterator(data.train, data.preprocess,
                                     global_batch_size=config.batch_size, seed=config.seed,
                                     num_threads=2, prefetch_buffer_size=4)
  skipped: set[int] = set()
  restored_state: dict = {}  # the data state of the last restore (its "wall_s")

  def check(step_now, data_state):
    record = data_state.get("run")
    if not isinstance(record, dict):
      return  # written before checkpoints held their run record
    if isinstance(record.get("flags"), dict):
      _refuse(wd, config_lib.key_differences(record["flags"], config),
              f"stored in checkpoint {step_now}")
    _check_data(config, step_now, record, run_record["data"])

  def restore():
    got = ckpt.restore_latest(par.global_state(state), check=check, log=log)
    if got is None:
      return None
    restored, data_state = got
    restored_state.clear()
    restored_state.update(data_state)
    train_it.set_state(data_state)
    skipped.update(data_state.get("skipped", []))
    return par.put_state(restored), int(data_state.get("train_step", 0))

  def save(step_now):
    data_state = {**train_it.get_state(), "skipped": sorted(skipped), "train_step": step_now,
                  "run": run_record, "wall_s": wall_before + time.perf_counter() - t_start}
    ckpt.save(step_now, par.global_state(state), data_state=data_state)

  step, resumed_from, wall_before = 0, None, 0.0
  got = restore()
  if got is not None:
    state, step = got
    resumed_from = step
    wall_before = _wall_s(restored_state.get("wall_s"))
    log(f"resuming from the checkpoint of step {step} in {ckpt.directory}")
    mlog.truncate_after(step, final_step=total)  # a final evaluation logged is done again
    tb.resume(step)
    write({"kind": "resume", "step": step, "time": time.time()})
  elif config.on_nan == "skip":
    save(0)  # something to roll back to
  elif mlog.path.exists():
    mlog.truncate_after(0)

  predict = make_predict(par, model, spec.family) if config.task == "classification" else None
  # Periodic evaluations use the validation split (the test split when there is none); the
  # test split is evaluated once, at the end.
  splits = {"test": (data.test, data.test_meta),
            "validation": (data.validation, data.validation_meta)
            if data.validation is not None else (data.test, data.test_meta)}
  to_train = {}
  if predict is not None:  # each split's label names -> the train split's class ids
    to_train = {s: evaluation_lib.label_mapping(
        m.class_names, data.meta.class_names,
        what=f"--dataset={config.dataset!r} ({s} split)", warn=log)
        for s, (_, m) in splits.items()}

  def evaluate(state_now, split="test", what=None):
    source = splits[split][0]
    if predict is None:
      return mlm_evaluate(par, state_now, source, data.eval_preprocess, batch_fn,
                          config.batch_size, config.seed, what)
    logits, labels = evaluation_lib.predict_split(predict, state_now, source,
                                                  data.eval_preprocess, config.batch_size, what)
    if split == "test":
      evaluation_lib.warn_single_class(labels, f"--dataset={config.dataset!r} test split", log)
    names = model_record.class_names(data.meta.class_names, logits.shape[-1])
    return metrics_lib.classification_metrics(logits, to_train[split][labels], names)

  progress = report_lib.Progress(step, total, config.progress)
  sums, count, t_log, timed = {}, 0, time.perf_counter(), 0
  train_time, train_steps, t_first = 0.0, 0, None
  while step < total:
    requested = multihost.agreed_stop(stop.requested)  # all processes stop at one step
    if requested:
      ckpt.wait()
      if step not in ckpt.all_steps():
        save(step)
      ckpt.wait()
      progress.close()
      raise Stopped(step, requested, wd.path)
    position = train_it.get_state()["step"]
    batch = next(train_it)
    if position in skipped:
      continue
    if hooks.batch is not None:
      batch = hooks.batch(position, batch)
    t0 = time.perf_counter()
    state, metrics = par.train_step(state, par.put_batch(batch))
    host = {k: float(v) for k, v in par.get_metrics(metrics).items()}
    if t_first is None:
      t_first = time.perf_counter() - t0  # compilation included
      t_log = time.perf_counter()  # steps/s starts after it, also after a resume
    else:
      train_time += time.perf_counter() - t0
      train_steps += 1
      timed += 1
    bad = [k for k in ("loss", "grad_norm") if not math.isfinite(host[k])]
    if bad:
      what = ", ".join(f"{k}={host[k]}" for k in bad)
      where = f"non-finite {what} at step {step + 1} (training batch {position})"
      if config.on_nan == "stop":
        progress.close()
        raise NonFiniteError(f"{where}; stopped (--on_nan=stop), the bad state was not saved. "
                             "Lower --lr, set --clip_norm, or use --on_nan=skip")
      skipped.add(position)
      if len(skipped) > config.max_skips:
        raise NonFiniteError(f"{where}; {len(skipped)} batches skipped so far, more than "
                             f"--max_skips={config.max_skips}: the run diverges")
      log(f"{where}; rolling back to the last checkpoint and skipping that batch "
          f"(--on_nan=skip, {len(skipped)} skipped)")
      ckpt.wait()
      state, step = restore()
      mlog.truncate_after(step)  # the replayed steps are logged again
      progress = report_lib.Progress(step, total, config.progress)
      sums, count = {}, 0
      continue
    step += 1
    for k, v in host.items():
      sums[k] = sums.get(k, 0.0) + v
    count += 1
    progress.update(step)
    if hooks.after_step is not None:
      hooks.after_step(step)
    if step % config.log_every == 0 or step == total:
      now = time.perf_counter()
      record = {"kind": "train", "step": step, **{k: v / count for k, v in sums.items()},
                "time": time.time()}
      if timed:  # a window holding only the compiling first step has no rate
        record["steps_per_s"] = timed / max(now - t_log, 1e-9)
      write(record)
      progress.log(f"step {step}/{total}  " + report_lib.format_metrics(
          record, ["loss", "accuracy", "lr", "grad_norm"]) + f"  {progress.rate(step):.2f} "
          f"steps/s  ETA {progress.eta(step)}")
      sums, count, t_log, timed = {}, 0, now, 0
    if config.eval_every and step % config.eval_every == 0 and step != total:
      m = evaluate(state, "validation")
      on = "validation" if data.validation is not None else "test"
      rec = {"kind": "eval", "step": step, **{k: m[k] for k in (
          "loss", "accuracy", "macro_f1", "perplexity") if k in m}, "split": on,
          "time": time.time()}
      write(rec)
      progress.log(f"eval ({on}) at step {step}: " + report_lib.format_metrics(rec, [
          "loss", "accuracy", "macro_f1", "perplexity"]))
    if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == total:
      save(step)
  progress.close()
  train_it.close()
  ckpt.wait()

  final = evaluate(state, "test", "final evaluation" if lead else None)
  write({"kind": "eval", "step": step, **{k: final[k] for k in (
      "loss", "accuracy", "macro_f1", "perplexity") if k in final}, "split": "test",
      "time": time.time()})
  export = pathlib.Path(config.export_dir or wd / "model").absolute()
  if lead:
    _export(config, spec, data, par, state, export, final, step)
  steps_per_s = train_steps / train_time if train_time > 0 else float("nan")
  init = _init_name(config)
  wall = time.perf_counter() - t_start
  named = f"{init} ({spec.name})" if spec.checkpoint else spec.name
  summary = {
      "title": f"{_kind(config, spec)}: {named} on {config.dataset}",
      "model": spec.name,
      "init": f"{init} ({spec.checkpoint})" if spec.checkpoint else "scratch",
      "new head": spec.new_head, "dataset": config.dataset, "task": config.task,
      "steps": step, "batch size": config.batch_size, "parallel": config.parallel,
      "devices": jax.device_count(),
      "resumed from step": resumed_from if resumed_from is not None else "-",
      "wall time (this invocation)": f"{wall:.1f} s",
      "wall time (all invocations)": f"{wall_before + wall:.1f} s",
      "first step (compilation)": f"{t_first:.1f} s" if t_first else "-",
      "steps/s (after the first step)": f"{steps_per_s:.3f}",
      "skipped batches": sorted(skipped) or "-",
      "git revision": workdir_lib.git_revision(), "exported model": str(export),
  }
  result = Result(workdir=str(wd.path), steps=step, metrics=final, report=str(wd / REPORT),
                  model_dir=str(export), wall_time_s=time.perf_counter() - t_start,
                  steps_per_s=steps_per_s, resumed_from=resumed_from, summary=summary)
  if lead:
    records = mlog.read()
    report_lib.plot_curves(records, wd / CURVES, summary["title"],
                           baseline=final.get("majority_baseline"), log_every=config.log_every)
    (wd / REPORT).write_text(report_lib.run_report(summary=summary, final=final, curves=CURVES))
    _write_atomic(wd / RESULT, json.dumps(dataclasses.asdict(result), indent=1, default=str))
  return result


def _wall_s(value) -> float:
  """A checkpoint's stored wall time (untrusted): a finite number >= 0, else 0."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  return float(value) if ok and value >= 0 else 0.0


def _init_name(config: JobConfig) -> str:
  """The init checkpoint as its user named it: the packaged MiniLM's model name, else the
  file or folder name given to --init_checkpoint."""
  if config.init_checkpoint is None:
    return "scratch"
  if config.init_checkpoint == config_lib.MINILM:
    return "all-MiniLM-L6-v2"
  return pathlib.Path(config.init_checkpoint.rstrip("/")).name or config.init_checkpoint


def _kind(config: JobConfig, spec: task_lib.ModelSpec) -> str:
  if config.task == "mlm":
    return "Masked-LM pretraining"
  return "Fine-tuning" if spec.checkpoint else "Training from scratch"


def _export(config, spec, data, par, state, export: pathlib.Path, final, step) -> None:
  """<workdir>/model: weights, class names, tokenizer files and what ports.export needs."""
  host = par.get_state(state)
  variables = {"params": host.params}
  if jax.tree.leaves(host.batch_stats):
    variables["batch_stats"] = host.batch_stats
  preprocessing = {**data.preprocessing, "dataset": config.dataset}
  names = None
  if config.task == "classification":
    names = model_record.class_names(data.meta.class_names,
                                     config.num_classes or data.meta.num_classes)
  pretrained.save_pretrained(
      export, spec.name, spec.kwargs, variables,
      source={"format": "jaxpretrain-run", "workdir": str(pathlib.Path(config.workdir).absolute()),
              "init_checkpoint": str(spec.checkpoint) if spec.checkpoint else None,
              "dataset": config.dataset, "task": config.task,
              "base": model_record.base_source(spec.checkpoint),
              "run": model_record.run_record(config.to_json(), step, final)},
      preprocessing=preprocessing, files=model_record.carried_files(spec.files, data.tokenizer),
      overwrite=True, class_names=names)
