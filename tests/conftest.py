"""Test-wide JAX set-up: 8 fake CPU devices and a persistent compilation cache.

XLA_FLAGS must be set before JAX is first imported, so it happens here, at collection.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("JAX_CACHE_DIR", str(REPO / ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def highest_precision():
  """Parity checks run float32 matmuls at full precision."""
  with jax.default_matmul_precision("highest"):
    yield
