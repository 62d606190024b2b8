"""2 processes x 2 CPU devices (jax.distributed on 127.0.0.1, gloo collectives) reach the same
parameters and BatchNorm statistics as 1 process x 4 devices, for jit, fsdp and pmap."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Same global batch and devices; only which collectives (in-process vs gloo) add the
# per-device sums, so float32 results differ by reduction order only.
REDUCTION_ORDER_RTOL = 1e-5
REDUCTION_ORDER_ATOL = 1e-6
TIMEOUT_S = 120


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(out, devices, num_processes=1, process_id=0, port=None):
  cmd = [sys.executable, "-m", "tests.train.multiprocess_worker", f"--out={out}",
         f"--devices={devices}", f"--num_processes={num_processes}",
         f"--process_id={process_id}"]
  if port is not None:
    cmd.append(f"--coordinator=127.0.0.1:{port}")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_hosts_match_one(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  one.mkdir()
  two.mkdir()
  port = _free_port()
  procs = [_launch(one, devices=4)]
  procs += [_launch(two, devices=2, num_processes=2, process_id=i, port=port) for i in (0, 1)]
  try:
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outputs, strict=True):
    assert p.returncode == 0, out[-3000:]
  for kind in ("jit", "fsdp", "pmap"):
    ref, got = np.load(one / f"{kind}.npz"), np.load(two / f"{kind}.npz")
    assert sorted(ref.files) == sorted(got.files)
    assert any(k.startswith("batch_stats/") for k in ref.files)
    for name in ref.files:
      np.testing.assert_allclose(got[name], ref[name], rtol=REDUCTION_ORDER_RTOL,
                                 atol=REDUCTION_ORDER_ATOL, err_msg=f"{kind}: {name}")
