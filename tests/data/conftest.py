"""Builds the four offline datasets once per session into a temporary TFDS data dir.

Measured on 2 shared cores: fashion_mnist_local (70,000 PNG-encoded 28x28 images) ~7 s, the
other three ~3 s together, so every test that needs real data shares this one build.
"""

import pytest

from jaxpretrain.data import builders


@pytest.fixture(scope="session")
def built_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name in builders.BUILDERS:
    assert builders.build(name, data_dir), f"{name} was unexpectedly already built"
  return data_dir
