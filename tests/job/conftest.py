"""Shared set-up of the job tests: digits_local built once, a tiny fine-tuning config.

digits_local (1,797 8x8 images) builds in ~2 s; resnet_tiny at 16x16 compiles in seconds, so
an end-to-end run of a dozen steps takes ~10 s on two shared cores.
"""

import dataclasses

import pytest

from jaxpretrain.data import builders
from jaxpretrain.job import JobConfig


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds_job"))
  builders.build("digits_local", data_dir)
  return data_dir


@pytest.fixture
def tiny(digits_dir, tmp_path):
  """`tiny(**overrides)` -> a JobConfig: resnet_tiny on digits_local, 12 steps of 16."""
  def make(**overrides):
    base = JobConfig(workdir=str(tmp_path / "run"), dataset="digits_local", data_dir=digits_dir,
                     model="resnet_tiny", image_size=16, steps=12, batch_size=16, lr=0.01,
                     warmup=2, log_every=3, eval_every=6, checkpoint_every=4, progress="log")
    return dataclasses.replace(base, **overrides)
  return make
