"""Fail fast: a bad --dataset, --init_checkpoint or select candidate is one line on stderr,
exit status 2, within FAIL_FAST_S, before any conversion, extraction or compilation (and
before anything is written: the workdir is not even created).

Each case is a real subprocess, as a user would meet it; most of the time is Python importing
JAX and the job (~3-5 s on two shared cores), not the check.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FAIL_FAST_S = 10.0  # the bound for a refused input, imports included
TIMEOUT_S = 60  # a hang fails the test instead of blocking the suite


def _run(module, flags, tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
         "TFDS_DATA_DIR": str(tmp_path / "default_tfds")}
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", module, *flags], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=TIMEOUT_S)
  elapsed = time.perf_counter() - start
  print(f"{module} {flags[0]}...: {elapsed:.1f} s")  # shown with -s: the measured time
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  return proc.returncode, lines, elapsed


@pytest.fixture
def gpt2_folder(tmp_path):
  folder = tmp_path / "gpt2"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
  return folder


def test_finetune_misspelled_dataset(tmp_path):
  workdir = tmp_path / "run"
  status, lines, elapsed = _run("jaxpretrain.finetune", [
      "--dataset=tweets_sentimnt", "--init_checkpoint=minilm", f"--workdir={workdir}",
      "--steps=1"], tmp_path)
  assert status == 2 and len(lines) == 1, lines
  assert "did you mean 'tweets_sentiment'?" in lines[0] and "known: [" in lines[0]
  assert elapsed < FAIL_FAST_S and not workdir.exists()


def test_finetune_unsupported_hf_folder(tmp_path, gpt2_folder):
  workdir = tmp_path / "run"
  status, lines, elapsed = _run("jaxpretrain.finetune", [
      "--dataset=digits_local", f"--init_checkpoint={gpt2_folder}", f"--workdir={workdir}",
      "--steps=1"], tmp_path)
  assert status == 2 and len(lines) == 1, lines
  assert "model_type 'gpt2', which has no port; supported: bert" in lines[0]
  assert elapsed < FAIL_FAST_S and not (workdir / "init_checkpoint").exists()


def test_select_missing_candidate(tmp_path):
  workdir = tmp_path / "select"
  status, lines, elapsed = _run("jaxpretrain.select", [
      "--candidates=random:resnet_tiny,gone=/no/such/checkpoint", "--dataset=digits_local",
      f"--workdir={workdir}"], tmp_path)
  assert status == 2 and len(lines) == 1, lines
  assert "candidate 'gone=/no/such/checkpoint'" in lines[0] and "no such file" in lines[0]
  assert elapsed < FAIL_FAST_S and not workdir.exists()


def test_select_unsupported_hf_folder_and_misspelled_dataset(tmp_path, gpt2_folder):
  workdir = tmp_path / "select"
  status, lines, _ = _run("jaxpretrain.select", [
      f"--candidates={gpt2_folder}", "--dataset=digits_local", f"--workdir={workdir}"],
      tmp_path)
  assert status == 2 and len(lines) == 1 and "model_type 'gpt2'" in lines[0], lines
  status, lines, elapsed = _run("jaxpretrain.select", [
      "--candidates=random:resnet_tiny", "--dataset=digits_locl", f"--workdir={workdir}"],
      tmp_path)
  assert status == 2 and len(lines) == 1, lines
  assert "did you mean 'digits_local'" in lines[0]
  assert elapsed < FAIL_FAST_S and not workdir.exists()


def test_select_accepts_what_finetune_accepts(tmp_path):
  """A run's workdir and FILE@ARCH pass the candidate check (no conversion happens here)."""
  from jaxpretrain.select import features
  from tests.job.test_evaluate_workdir import _checkpoint

  run = tmp_path / "run"
  _checkpoint(run / "model")
  weights = tmp_path / "r18.pth"
  weights.write_bytes(b"not read by the check")
  features.check_candidates([str(run), f"w={weights}@resnet18", "minilm", "random:resnet_tiny"])
  assert features.split_arch(f"{weights}@resnet18") == (str(weights), "resnet18")
  with pytest.raises(ValueError, match="is a weights file: name its architecture"):
    features.check_candidates([str(weights)])
