"""The training loop of fine-tuning and pretraining: one function, `run(config)`.

    result = run(JobConfig(workdir=..., dataset="digits_local", model="resnet_tiny",
                           steps=100))
    result.metrics["accuracy"], result.report

Order of work (everything that can fail on a bad flag fails before data is built or a step
compiled): validate flags -> devices -> workdir writable + lock -> flags equal to the
workdir's earlier run -> model (checkpoint converted if needed) -> `--freeze`/`--lr_mult`
regexes -> data -> free disk space -> compile and train. In code: `_run_locked` sets up a
`_Run` (the invocation's context and state); `_train` loops over a training step and the
periodic actions due after it (log, validation, checkpoint); `_finish` evaluates on test,
exports the model and writes the report.

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
  - a non-finite loss or gradient norm (every step's metrics are checked, in order, before
    anything is logged, evaluated or saved; `MAX_UNCHECKED_STEPS`):
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
  # Closed on every path (also when the event file cannot be created); a failing path does
  # not raise a failed save or write again.
  with ckpt, metrics_lib.TensorBoard(wd.path, enabled=lead) as tb:
    return _train(_Run(config=config, wd=wd, stop=stop, hooks=hooks, log=log, lead=lead,
                       t_start=t_start, spec=spec, data=data, model=model, par=par,
                       state=state, ckpt=ckpt, tb=tb, batch_fn=batch_fn, total=total,
                       run_record=run_record))


def _fingerprint(config: JobConfig) -> dict:
  from jaxpretrain.data import loaders  # noqa: PLC0415 -- TFDS import is slow

  try:
    return loaders.fingerprint(config.dataset, config.data_dir)
  except (OSError, ValueError) as e:
    raise ConfigError(f"--dataset={config.dataset!r}: cannot fingerprint its files: "
                      f"{type(e).__name__}: {e}") from None


EVAL_KEYS = ("loss", "accuracy", "macro_f1", "perplexity")  # of an evaluation, logged


# Train steps dispatched before their metrics are read back: the host reads and places the
# next batches while the device computes, and syncs once per log line, evaluation, checkpoint
# or this many steps. A non-finite step is still found exactly (the first, in order), and no
# state after it is logged or saved.
MAX_UNCHECKED_STEPS = 16


@dataclasses.dataclass
class _Window:
  """Training metrics summed since the last log line, and this invocation's step timing
  (steps/s excludes the first step, which compiles, and the logging, evaluations and
  checkpoints between steps)."""
  sums: dict[str, float] = dataclasses.field(default_factory=dict)
  count: int = 0
  t_log: float = dataclasses.field(default_factory=time.perf_counter)
  timed: int = 0  # timed steps since the last log line
  train_time: float = 0.0
  train_steps: int = 0
  t_first: float | None = None  # the first step's seconds, compilation included
  t_mark: float = 0.0  # when the steps being timed started (the last sync or action)

  def first_step(self, t0: float) -> None:
    self.t_first = time.perf_counter() - t0
    self.t_log = self.t_mark = time.perf_counter()  # steps/s starts after it, also on resume

  def timed_steps(self, n: int) -> None:
    """`n` steps ran since `t_mark` (their metrics just read back)."""
    now = time.perf_counter()
    self.train_time += now - self.t_mark
    self.train_steps += n
    self.timed += n
    self.t_mark = now

  def add(self, host: dict[str, float]) -> None:
    for k, v in host.items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.count += 1


@dataclasses.dataclass(eq=False)
class _Run:
  """One invocation of a run: what `_run_locked` set up, and the state the loop advances
  (`state`, `step`, the skipped batches). Its methods are the loop's actions."""
  config: JobConfig
  wd: workdir_lib.Workdir
  stop: workdir_lib.StopSignal
  hooks: Hooks
  log: Callable[[str], None]
  lead: bool  # process 0: writes the files
  t_start: float
  spec: task_lib.ModelSpec
  data: task_lib.Data
  model: Any
  par: parallel.Parallel
  state: Any  # the TrainState, on the devices
  ckpt: checkpoint_lib.Checkpointer
  tb: metrics_lib.TensorBoard
  batch_fn: Any
  total: int
  run_record: dict
  step: int = 0
  skipped: set[int] = dataclasses.field(default_factory=set)
  resumed_from: int | None = None
  wall_before: float = 0.0  # the wall time of the invocations before this one
  restored: dict = dataclasses.field(default_factory=dict)  # the data state last restored
  window: _Window = dataclasses.field(default_factory=_Window)
  # Dispatched steps whose metrics are not read back yet: (step, data position, metrics).
  unchecked: list = dataclasses.field(default_factory=list)

  def __post_init__(self):
    from jaxpretrain.data import pipeline  # noqa: PLC0415

    self.mlog = workdir_lib.MetricsLog(self.wd / workdir_lib.METRICS, enabled=self.lead)
    self.train_it = pipeline.train_iterator(
        self.data.train, self.data.preprocess, global_batch_size=self.config.batch_size,
        seed=self.config.seed, num_threads=2, prefetch_buffer_size=4)
    self.progress = None

  def write(self, record: dict) -> None:  # metrics.jsonl and TensorBoard
    self.mlog.write(record)
    self.tb.write(record)

  # --- checkpoints

  def _check(self, step: int, data_state: dict) -> None:
    record = data_state.get("run")
    if not isinstance(record, dict):
      return  # written before checkpoints held their run record
    if isinstance(record.get("flags"), dict):
      _refuse(self.wd, config_lib.key_differences(record["flags"], self.config),
              f"stored in checkpoint {step}")
    _check_data(self.config, step, record, self.run_record["data"])

  def restore(self) -> tuple[Any, int] | None:
    got = self.ckpt.restore_latest(self.par.global_state(self.state), check=self._check,
                                   log=self.log)
    if got is None:
      return None
    restored, data_state = got
    self.restored = dict(data_state)
    self.train_it.set_state(data_state)
    self.skipped.update(data_state.get("skipped", []))
    return self.par.put_state(restored), int(data_state.get("train_step", 0))

  def save(self, step: int) -> None:
    data_state = {**self.train_it.get_state(), "skipped": sorted(self.skipped),
                  "train_step": step, "run": self.run_record,
                  "wall_s": self.wall_before + time.perf_counter() - self.t_start}
    self.ckpt.save(step, self.par.global_state(self.state), data_state=data_state)

  def resume_or_start(self) -> None:
    """From the workdir's newest checkpoint, else from step 0 (saved if it may be rolled
    back to)."""
    got = self.restore()
    if got is not None:
      self.state, self.step = got
      self.resumed_from = self.step
      self.wall_before = _wall_s(self.restored.get("wall_s"))
      self.log(f"resuming from the checkpoint of step {self.step} in {self.ckpt.directory}")
      # A final evaluation logged is done again.
      self.mlog.truncate_after(self.step, final_step=self.total)
      self.tb.resume(self.step)
      self.write({"kind": "resume", "step": self.step, "time": time.time()})
    elif self.config.on_nan == "skip":
      self.save(0)  # something to roll back to
    elif self.mlog.path.exists():
      self.mlog.truncate_after(0)

  # --- evaluation

  def prepare_evaluation(self) -> None:
    """Periodic evaluations use the validation split (the test split when there is none);
    the test split is evaluated once, at the end. Each split's label names are mapped onto
    the train split's class ids."""
    config, data = self.config, self.data
    self.predict = (make_predict(self.par, self.model, self.spec.family)
                    if config.task == "classification" else None)
    self.splits = {"test": (data.test, data.test_meta),
                   "validation": (data.validation, data.validation_meta)
                   if data.validation is not None else (data.test, data.test_meta)}
    self.to_train = {}
    if self.predict is not None:
      self.to_train = {s: evaluation_lib.label_mapping(
          m.class_names, data.meta.class_names,
          what=f"--dataset={config.dataset!r} ({s} split)", warn=self.log)
          for s, (_, m) in self.splits.items()}

  def evaluate(self, split: str = "test", what: str | None = None) -> dict[str, Any]:
    config, data = self.config, self.data
    source = self.splits[split][0]
    if self.predict is None:
      return mlm_evaluate(self.par, self.state, source, data.eval_preprocess, self.batch_fn,
                          config.batch_size, config.seed, what)
    logits, labels = evaluation_lib.predict_split(self.predict, self.state, source,
                                                  data.eval_preprocess, config.batch_size, what)
    if split == "test":
      evaluation_lib.warn_single_class(labels, f"--dataset={config.dataset!r} test split",
                                       self.log)
    names = model_record.class_names(data.meta.class_names, logits.shape[-1])
    return metrics_lib.classification_metrics(logits, self.to_train[split][labels], names)

  # --- the loop's actions

  def stop_if_asked(self) -> None:
    """SIGTERM/SIGINT: a checkpoint of this step, then Stopped (all processes at one step)."""
    requested = multihost.agreed_stop(self.stop.requested)
    if requested:
      self.check_steps()  # never save a state after a non-finite step
      self.ckpt.wait()
      if self.step not in self.ckpt.all_steps():
        self.save(self.step)
      self.ckpt.wait()
      self.progress.close()
      raise Stopped(self.step, requested, self.wd.path)

  def train_step(self) -> bool:
    """Dispatches one batch's step, its metrics unchecked (`check_steps`); False when it did
    not advance the run (a skipped batch, a rollback)."""
    position = self.train_it.get_state()["step"]
    batch = next(self.train_it)
    if position in self.skipped:
      return False
    if self.hooks.batch is not None:
      batch = self.hooks.batch(position, batch)
    t0 = time.perf_counter()
    self.state, metrics = self.par.train_step(self.state, self.par.put_batch(batch))
    self.step += 1
    self.unchecked.append((self.step, position, metrics))
    # The compiling step is timed on its own; hooks.after_step is called as each is checked.
    if self.window.t_first is None or self.hooks.after_step is not None:
      first = self.window.t_first is None
      finite = self.check_steps()
      if first:
        self.window.first_step(t0)
      if not finite:  # rolled back: the run did not advance
        return False
    self.progress.update(self.step)
    return True

  def check_steps(self) -> bool:
    """Reads back the unchecked steps' metrics (one sync), in order; False when one was
    non-finite (--on_nan: stopped, or rolled back to the last checkpoint)."""
    pending, self.unchecked = self.unchecked, []
    if not pending:
      return True
    hosts = [{k: float(v) for k, v in self.par.get_metrics(m).items()} for _, _, m in pending]
    if self.window.t_first is not None:
      self.window.timed_steps(len(pending))
    for (step, position, _), host in zip(pending, hosts, strict=True):
      bad = [k for k in ("loss", "grad_norm") if not math.isfinite(host[k])]
      if bad:
        self._non_finite(host, bad, position, step)
        return False
      self.window.add(host)
      if self.hooks.after_step is not None:
        self.hooks.after_step(step)
    return True

  def _non_finite(self, host: dict[str, float], bad: list[str], position: int,
                  step: int) -> None:
    """--on_nan=stop: NonFiniteError; skip: roll back to the last checkpoint, and skip the
    batch at `position` from then on."""
    config = self.config
    what = ", ".join(f"{k}={host[k]}" for k in bad)
    where = f"non-finite {what} at step {step} (training batch {position})"
    if config.on_nan == "stop":
      self.progress.close()
      raise NonFiniteError(f"{where}; stopped (--on_nan=stop), the bad state was not saved. "
                           "Lower --lr, set --clip_norm, or use --on_nan=skip")
    self.skipped.add(position)
    if len(self.skipped) > config.max_skips:
      raise NonFiniteError(f"{where}; {len(self.skipped)} batches skipped so far, more than "
                           f"--max_skips={config.max_skips}: the run diverges")
    self.log(f"{where}; rolling back to the last checkpoint and skipping that batch "
             f"(--on_nan=skip, {len(self.skipped)} skipped)")
    self.ckpt.wait()
    self.state, self.step = self.restore()
    self.mlog.truncate_after(self.step)  # the replayed steps are logged again
    self.progress = report_lib.Progress(self.step, self.total, config.progress)
    self.window.sums, self.window.count = {}, 0

  def log_train(self) -> None:
    """The mean training metrics since the last line, and steps/s."""
    w, now = self.window, time.perf_counter()
    record = {"kind": "train", "step": self.step, **{k: v / w.count for k, v in w.sums.items()},
              "time": time.time()}
    if w.timed:  # a window holding only the compiling first step has no rate
      record["steps_per_s"] = w.timed / max(now - w.t_log, 1e-9)
    self.write(record)
    self.progress.log(f"step {self.step}/{self.total}  " + report_lib.format_metrics(
        record, ["loss", "accuracy", "lr", "grad_norm"]) + f"  {self.progress.rate(self.step):.2f} "
        f"steps/s  ETA {self.progress.eta(self.step)}")
    w.sums, w.count, w.t_log, w.timed = {}, 0, now, 0

  def log_validation(self) -> None:
    m = self.evaluate("validation")
    on = "validation" if self.data.validation is not None else "test"
    rec = {"kind": "eval", "step": self.step, **{k: m[k] for k in EVAL_KEYS if k in m},
           "split": on, "time": time.time()}
    self.write(rec)
    self.progress.log(f"eval ({on}) at step {self.step}: "
                      + report_lib.format_metrics(rec, list(EVAL_KEYS)))

  def checkpoint(self) -> None:
    self.save(self.step)


def _train(run: _Run) -> Result:
  """The loop: a training step, then the periodic actions due at the new step; the finish
  (final evaluation, export, report) apart."""
  run.resume_or_start()
  run.prepare_evaluation()
  c, total = run.config, run.total
  periodic = (  # (due at step s, action), in this order
      (lambda s: s % c.log_every == 0 or s == total, run.log_train),
      (lambda s: c.eval_every and s % c.eval_every == 0 and s != total, run.log_validation),
      (lambda s: (c.checkpoint_every and s % c.checkpoint_every == 0) or s == total,
       run.checkpoint),
  )
  run.progress = report_lib.Progress(run.step, total, c.progress)
  while run.step < total:
    run.stop_if_asked()
    if run.train_step():
      due = [action for is_due, action in periodic if is_due(run.step)]
      if due or len(run.unchecked) >= MAX_UNCHECKED_STEPS:
        if run.check_steps():  # before anything is logged or saved
          for action in due:
            action()
        run.window.t_mark = time.perf_counter()  # steps/s leaves the actions out
  run.progress.close()
  run.train_it.close()
  run.ckpt.wait()
  return _finish(run)


def _finish(run: _Run) -> Result:
  """The final test evaluation, the exported model, the report, curves.png and final.json."""
  config, spec, wd, step, w = run.config, run.spec, run.wd, run.step, run.window
  final = run.evaluate("test", "final evaluation" if run.lead else None)
  run.write({"kind": "eval", "step": step, **{k: final[k] for k in EVAL_KEYS if k in final},
             "split": "test", "time": time.time()})
  export = pathlib.Path(config.export_dir or wd / "model").absolute()
  if run.lead:
    _export(config, spec, run.data, run.par, run.state, export, final, step)
  steps_per_s = w.train_steps / w.train_time if w.train_time > 0 else float("nan")
  init = _init_name(config)
  wall = time.perf_counter() - run.t_start
  named = f"{init} ({spec.name})" if spec.checkpoint else spec.name
  summary = {
      "title": f"{_kind(config, spec)}: {named} on {config.dataset}",
      "model": spec.name,
      "init": f"{init} ({spec.checkpoint})" if spec.checkpoint else "scratch",
      "new head": spec.new_head, "dataset": config.dataset, "task": config.task,
      "steps": step, "batch size": config.batch_size, "parallel": config.parallel,
      "devices": jax.device_count(),
      "resumed from step": run.resumed_from if run.resumed_from is not None else "-",
      "wall time (this invocation)": f"{wall:.1f} s",
      "wall time (all invocations)": f"{run.wall_before + wall:.1f} s",
      "first step (compilation)": f"{w.t_first:.1f} s" if w.t_first else "-",
      "steps/s (after the first step)": f"{steps_per_s:.3f}",
      "skipped batches": sorted(run.skipped) or "-",
      "git revision": workdir_lib.git_revision(), "exported model": str(export),
  }
  result = Result(workdir=str(wd.path), steps=step, metrics=final, report=str(wd / REPORT),
                  model_dir=str(export), wall_time_s=time.perf_counter() - run.t_start,
                  steps_per_s=steps_per_s, resumed_from=run.resumed_from, summary=summary)
  if run.lead:
    records = run.mlog.read()
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
