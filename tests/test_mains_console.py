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
