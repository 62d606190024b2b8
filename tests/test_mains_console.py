"""evaluate, select and predict mains: --help lists each main's own flags by purpose, and a bad
flag is one line with no library log lines around it."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A main imports JAX (and TFDS for evaluate/select) before parsing: a few seconds on 2 cores.
TIMEOUT_S = 120
LIBRARY_LOG = re.compile(r"^[IWEF]\d{4} |\b(INFO|WARNING)\b")


def _run(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("main, groups, flag", [
    ("jaxpretrain.evaluate", ("what to evaluate:", "data:"), "--checkpoint:"),
    ("jaxpretrain.select", ("candidates and data:", "features and scores:", "cost and budgets:",
                            "fine-tuning check:"), "--finetune_seeds:"),
    ("jaxpretrain.predict", ("model:", "output:", "speed:"), "--top_k:"),
])
def test_help_lists_the_mains_flags_by_purpose(main, groups, flag):
  out = _run(main, "--help")
  assert out.returncode == 0, out.stderr[-2000:]
  for group in groups:
    assert f"\n{group}\n" in out.stdout, out.stdout
  assert flag in out.stdout and "--verbosity=0 shows library logs" in out.stdout
  assert "other flags:" not in out.stdout  # every flag of the main is in a group
  assert "--jax_" not in out.stdout and "--only_check_args" not in out.stdout  # --helpfull's


def test_evaluate_bad_checkpoint_is_one_line_without_library_logs(tmp_path):
  out = _run("jaxpretrain.evaluate", f"--checkpoint={tmp_path / 'missing'}")
  assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr[-2000:]
  assert not [line for line in out.stderr.splitlines() if LIBRARY_LOG.search(line)]


def test_no_main_uses_absl_required_flags():
  """absl's required=True / mark_flag_as_required registers a validator on the global FLAGS:
  every other main parsed in the same process then fails on it (the 2026-11-30 CI run failed
  63 flag tests on select's). Mains check their required flags with console.missing_flags."""
  import ast
  import pathlib

  offenders = []
  for path in sorted(pathlib.Path(REPO, "jaxpretrain").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        continue
      name = node.func.attr
      required = any(k.arg == "required" and getattr(k.value, "value", None) is True
                     for k in node.keywords)
      if (name.startswith("DEFINE_") and required) or name.startswith("mark_flag"):
        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
  assert not offenders, offenders


@pytest.mark.parametrize("main, argv, named", [
    ("jaxpretrain.select", ["--dataset=digits_local"], "--candidates, --workdir are required"),
    ("jaxpretrain.evaluate", [], "--checkpoint is required"),
])
def test_missing_required_flag_is_one_line(main, argv, named):
  out = _run(main, *argv)
  assert out.returncode == 2 and out.stderr.strip() == f"error: {named}", out.stderr[-2000:]


def test_verbosity_brings_library_logs_back():
  """Quiet by default; --verbosity (or -v) leaves the library loggers and TF's C++ level as
  they are, so orbax/TFDS/XLA lines show again (in a subprocess: the levels are global)."""
  code = (
      "import logging, os, sys\n"
      "from jaxpretrain import console\n"
      "console.quiet_logs(sys.argv)\n"
      "print(logging.getLogger('orbax').level, logging.getLogger('jax').level,"
      " os.environ.get('TF_CPP_MIN_LOG_LEVEL', '-'))\n")
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  outs = [subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
          for args in ([], ["--verbosity=0"], ["-v", "1"])]
  assert [o.returncode for o in outs] == [0, 0, 0], [o.stderr[-2000:] for o in outs]
  assert outs[0].stdout.split() == ["40", "40", "3"]  # ERROR
  assert outs[1].stdout.split() == outs[2].stdout.split() == ["0", "0", "-"]  # untouched
