"""The low-data regime's draw: N labelled examples per class, seeded, nested across N."""

import numpy as np
import pytest

from jaxpretrain.data import sources


def _labels(seed=0):
  rng = np.random.default_rng(seed)
  return rng.permutation(np.repeat(np.arange(7), rng.integers(120, 200, size=7)))


def test_per_class_subset_keeps_n_of_every_class_in_source_order():
  labels = _labels()
  idx = sources.per_class_subset(labels, 10, seed=3)
  assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), np.full(7, 10))
  np.testing.assert_array_equal(idx, sources.per_class_subset(labels, 10, seed=3))
  assert not np.array_equal(idx, sources.per_class_subset(labels, 10, seed=4))


def test_smaller_regime_is_inside_the_larger_one():
  labels = _labels(1)
  small, large = (sources.per_class_subset(labels, n, seed=0) for n in (10, 100))
  assert np.isin(small, large).all() and len(large) == 700


@pytest.mark.parametrize("n, match", [(0, "per_class=0"), (-1, "per_class=-1"),
                                      (2.5, "per_class=2.5"), (True, "per_class=True"),
                                      (500, "class 0 has 1\\d\\d training examples")])
def test_bad_per_class_names_the_value(n, match):
  with pytest.raises(ValueError, match=match):
    sources.per_class_subset(_labels(), n)
