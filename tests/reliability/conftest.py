"""Shared set-up of the reliability tests: a generated dataset, the training CLI in a
subprocess, and time limits, so that a hang fails a test instead of blocking CI.

The runs are resnet_tiny on a 160-example 8x8 npz dataset: with the persistent compilation
cache a `python -m jaxpretrain.finetune` process reaches its first step in ~4 s and trains
40 steps (8 checkpoints) in ~2 s on two shared cores.

Time limits: every subprocess has a timeout (CLI_TIMEOUT_S, or the caller's), and every test
runs under an alarm (TEST_TIMEOUT_S, or `@pytest.mark.timeout_s(n)`) that raises in the test.
"""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from jaxpretrain.job import JobConfig

REPO = pathlib.Path(__file__).resolve().parents[2]
CACHE = os.environ.get("JAX_CACHE_DIR", str(REPO / ".jax_cache"))  # as tests/conftest.py
CLI_TIMEOUT_S = 120  # one training process; a hang fails the test instead of blocking CI
TEST_TIMEOUT_S = 180  # any one test, unless marked timeout_s
NUM_CLASSES = 4
# A run with a checkpoint every 5 of 40 steps: kills can land before, between and inside
# checkpoint writes, and during the final evaluation and export.
RUN_FLAGS = ("--model=resnet_tiny", "--image_size=8", "--batch_size=8", "--steps=40",
             "--checkpoint_every=5", "--log_every=1", "--lr=0.01", "--warmup=2",
             "--progress=log")


def pytest_configure(config):
  config.addinivalue_line("markers", "timeout_s(n): this test's time limit in seconds")


class TimeLimitExceeded(Exception):
  pass


@pytest.fixture(autouse=True)
def _time_limit(request):
  """Raises TimeLimitExceeded in the test after its limit (SIGALRM; main thread only)."""
  marker = request.node.get_closest_marker("timeout_s")
  limit = marker.args[0] if marker else TEST_TIMEOUT_S
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def expire(signum, frame):
    raise TimeLimitExceeded(f"{request.node.nodeid} ran past its {limit} s limit")
  old = signal.signal(signal.SIGALRM, expire)
  signal.setitimer(signal.ITIMER_REAL, limit)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def make_images(n: int, seed: int = 0, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """uint8 [n, size, size, 1] images whose brightness depends on the label, and labels [n]."""
  rs = np.random.RandomState(seed)
  labels = rs.randint(0, NUM_CLASSES, n)
  images = rs.rand(n, size, size, 1) * 60 + labels[:, None, None, None] * 40
  return images.astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="session")
def npz_dataset(tmp_path_factory) -> str:
  """`npz:PATH` of 160 examples (128 train / 32 test after the stratified split)."""
  path = tmp_path_factory.mktemp("reliability_data") / "tiny.npz"
  images, labels = make_images(160)
  np.savez(path, image=images, label=labels)
  return f"npz:{path}"


def cli_env() -> dict[str, str]:
  """The environment of a training subprocess: one CPU device, the shared compile cache."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": CACHE,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "TF_CPP_MIN_LOG_LEVEL": "3",
         "PYTHONUNBUFFERED": "1"}
  env.pop("XLA_FLAGS", None)  # tests/conftest.py's 8 fake devices would slow every step
  return env


@dataclasses.dataclass
class Cli:
  """Starts `python -m jaxpretrain.finetune` with the given flags, output to a log file."""
  dataset: str

  def args(self, workdir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxpretrain.finetune", f"--dataset={self.dataset}",
            *RUN_FLAGS, f"--workdir={workdir}", *extra]

  def start(self, workdir, log: pathlib.Path, *extra: str) -> subprocess.Popen:
    with log.open("w") as f:
      return subprocess.Popen(self.args(workdir, *extra), cwd=REPO, env=cli_env(), stdout=f,
                              stderr=subprocess.STDOUT, start_new_session=True)

  def run(self, workdir, *extra: str, timeout: float = CLI_TIMEOUT_S
          ) -> subprocess.CompletedProcess:
    return run_bounded(self.args(workdir, *extra), timeout)


def run_bounded(args: list[str], timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
  """subprocess.run with a timeout that kills the process and fails the test."""
  try:
    return subprocess.run(args, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"{args[2:4]} did not finish in {timeout} s:\n{(e.stdout or b'')[-2000:]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60) -> int:
  """Sends `sig` to `proc` (if alive) and reaps it; returns its exit status."""
  if proc.poll() is None:
    os.kill(proc.pid, sig)
  return proc.wait(timeout=timeout)


def wait_for(predicate, proc: subprocess.Popen, deadline: float, what: str,
             poll_s: float = 0.002):
  """Polls `predicate()` until it returns a truthy value; fails on exit or past `deadline`."""
  while True:
    got = predicate()
    if got:
      return got
    if proc.poll() is not None:
      pytest.fail(f"the run exited ({proc.returncode}) before {what}")
    if time.monotonic() > deadline:
      stop(proc)
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(poll_s)


def train_records(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


@pytest.fixture
def cli(npz_dataset) -> Cli:
  return Cli(npz_dataset)


@pytest.fixture(scope="session")
def reference(npz_dataset, tmp_path_factory) -> pathlib.Path:
  """The workdir of an uninterrupted run of RUN_FLAGS (shared by the interruption tests)."""
  wd = tmp_path_factory.mktemp("reference") / "run"
  out = Cli(npz_dataset).run(wd)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return wd


@pytest.fixture
def tiny_config(npz_dataset, tmp_path):
  """`tiny_config(**overrides)` -> the JobConfig of RUN_FLAGS, for in-process runs."""
  def make(**overrides):
    base = JobConfig(workdir=str(tmp_path / "run"), dataset=npz_dataset, model="resnet_tiny",
                     image_size=8, batch_size=8, steps=40, checkpoint_every=5, log_every=1,
                     lr=0.01, warmup=2, progress="log")
    return dataclasses.replace(base, **overrides)
  return make
