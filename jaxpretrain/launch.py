r"""Starts one multi-process run on this machine: N local processes of the same command.

  python -m jaxpretrain.launch --num_processes=2 --devices_per_process=2 --platform=cpu -- \
      --dataset=digits_local --model=resnet_tiny --steps=100 --workdir=workdirs/two

Everything after `--` is the command every process runs; when it starts with a flag, it is
`python -m jaxpretrain.finetune` with those flags. Each process gets the environment that
`jax.distributed` reads (`JAX_COORDINATOR_ADDRESS=127.0.0.1:<a free port>`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), `XLA_FLAGS` asking for `--devices_per_process` host
devices (CPU only; on GPUs set `CUDA_VISIBLE_DEVICES` yourself) and, with `--platform`,
`JAX_PLATFORMS`. Each line a process prints is shown prefixed with its rank (`[1] step
10/100 ...`).

SIGINT and SIGTERM are forwarded to every process (a SIGTERM makes the run checkpoint and
exit 143). When one process fails, the others are given `--grace_s` to exit on their own
(a run's processes notice a lost peer themselves: jaxpretrain/job/multihost.py), then they
are sent SIGTERM and, `--grace_s` later, SIGKILL. The launcher exits with the worst status:
the largest of the processes' statuses, a process killed by signal S counting as 128 + S.

The same run on several machines: start the same command on every machine with those
variables set (BUILD.md, "Running on many devices and hosts": SLURM, TPU pod slices).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
MAX_PROCESSES = 256  # a local launch beyond this is a typo, not a machine
POLL_S = 0.1


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port free on `host` now (the OS's pick; a tiny race with other programs)."""
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def child_env(base: dict[str, str], *, rank: int, num_processes: int, coordinator: str,
              devices_per_process: int | None, platform: str | None) -> dict[str, str]:
  """The environment of process `rank`: jax.distributed's variables, device count, platform."""
  env = dict(base)
  env.update(JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1")
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):  # ours, not an outer launcher's
    env.pop(name, None)
  if devices_per_process:
    flags = re.sub(rf"{DEVICE_COUNT_FLAG}=\S*", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_COUNT_FLAG}={devices_per_process}"])
  if platform:
    env["JAX_PLATFORMS"] = platform
  return env


def command(args: list[str]) -> list[str]:
  """The command after `--`; bare flags are flags of `python -m jaxpretrain.finetune`."""
  if args and args[0] == "--":
    args = args[1:]
  if not args:
    raise ValueError("no command after '--'; e.g. -- --dataset=... --workdir=...")
  if args[0].startswith("-"):
    return [sys.executable, "-m", "jaxpretrain.finetune", *args]
  return args


def _pump(rank: int, stream, out, lock: threading.Lock) -> None:
  """Copies `stream` line by line to `out`, each line prefixed with `[rank] `."""
  for line in iter(stream.readline, b""):
    text = line.decode(errors="replace").rstrip("\n")
    with lock:
      out.write(f"[{rank}] {text}\n")
      out.flush()
  stream.close()


def status_of(returncode: int) -> int:
  """A Popen return code as a shell reports it (killed by signal S -> 128 + S)."""
  return 128 - returncode if returncode < 0 else returncode


def launch(cmd: list[str], num_processes: int, *, devices_per_process: int | None = None,
           platform: str | None = None, port: int | None = None, grace_s: float = 60.0,
           out=None) -> int:
  """Runs `cmd` as `num_processes` processes of one jax.distributed run; the worst status."""
  out = out or sys.stdout
  coordinator = f"127.0.0.1:{port or free_port()}"
  lock = threading.Lock()
  procs: list[subprocess.Popen] = []
  pumps = []
  for rank in range(num_processes):
    env = child_env(os.environ, rank=rank, num_processes=num_processes,
                    coordinator=coordinator, devices_per_process=devices_per_process,
                    platform=platform)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    procs.append(p)
    t = threading.Thread(target=_pump, args=(rank, p.stdout, out, lock), daemon=True)
    t.start()
    pumps.append(t)

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    failed_at = None
    escalated = 0
    while any(p.poll() is None for p in procs):
      if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
        failed_at = time.monotonic()
      if failed_at is not None and time.monotonic() - failed_at > grace_s * (escalated + 1):
        sig = signal.SIGTERM if escalated == 0 else signal.SIGKILL
        alive = [i for i, p in enumerate(procs) if p.poll() is None]
        with lock:
          out.write(f"[launch] process(es) {alive} still running {grace_s * (escalated + 1):.0f}"
                    f" s after another failed; sending {sig.name}\n")
          out.flush()
        forward(sig, None)
        escalated += 1
      time.sleep(POLL_S)
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  for t in pumps:
    t.join(timeout=5)
  return max(status_of(p.returncode) for p in procs)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" in argv:
    i = argv.index("--")
    ours, theirs = argv[:i], argv[i + 1:]
  else:
    ours, theirs = argv, []
  ap = argparse.ArgumentParser(prog="python -m jaxpretrain.launch", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--num_processes", type=int, required=True)
  ap.add_argument("--devices_per_process", type=int, default=None,
                  help="host (CPU) devices per process, via XLA_FLAGS")
  ap.add_argument("--platform", default=None, help="JAX_PLATFORMS of the processes, e.g. cpu")
  ap.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  ap.add_argument("--grace_s", type=float, default=60.0,
                  help="after a process fails, how long the others get before SIGTERM")
  args = ap.parse_args(ours)
  if not 1 <= args.num_processes <= MAX_PROCESSES:
    print(f"error: --num_processes={args.num_processes}; allowed: 1..{MAX_PROCESSES}",
          file=sys.stderr)
    return 2
  if args.devices_per_process is not None and args.devices_per_process < 1:
    print(f"error: --devices_per_process={args.devices_per_process}; allowed: >= 1",
          file=sys.stderr)
    return 2
  if args.port is not None and not 0 < args.port < 65536:
    print(f"error: --port={args.port}; allowed: 1..65535", file=sys.stderr)
    return 2
  if args.grace_s <= 0:
    print(f"error: --grace_s={args.grace_s}; allowed: > 0", file=sys.stderr)
    return 2
  try:
    cmd = command(theirs)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return launch(cmd, args.num_processes, devices_per_process=args.devices_per_process,
                platform=args.platform, port=args.port, grace_s=args.grace_s)


if __name__ == "__main__":
  sys.exit(main())
