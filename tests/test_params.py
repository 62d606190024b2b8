"""Parameter paths, regex selection and merge_params."""

import numpy as np
import pytest

from jaxpretrain import params


def _tree():
  return {"params": {"backbone": {"conv": {"kernel": np.ones((3, 3)), "bias": np.zeros(3)}},
                     "head": {"kernel": np.ones((3, 10)), "bias": np.zeros(10)}}}


def test_flatten_unflatten_round_trip():
  flat = params.flatten(_tree())
  assert sorted(flat) == ["params/backbone/conv/bias", "params/backbone/conv/kernel",
                          "params/head/bias", "params/head/kernel"]
  back = params.unflatten(flat)
  assert params.flatten(back).keys() == flat.keys()


def test_unflatten_rejects_duplicates_and_leaf_parents():
  with pytest.raises(ValueError, match="passes through leaf 'a'"):
    params.unflatten({"a": 1, "a/b": 2})


def test_path_mask_fullmatch():
  mask = params.path_mask(_tree(), r".*/bias")
  flat = params.flatten(mask)
  assert flat == {"params/backbone/conv/bias": True, "params/backbone/conv/kernel": False,
                  "params/head/bias": True, "params/head/kernel": False}


def test_bad_regex_named():
  with pytest.raises(ValueError, match=r"bad parameter regex '\('"):
    params.path_mask(_tree(), "(")


def test_merge_params_new_head():
  loaded = _tree()
  loaded["params"]["head"] = {"kernel": np.full((3, 1000), 2.0), "bias": np.zeros(1000)}
  init = _tree()
  merged = params.merge_params(loaded, init, dont_load=[r"params/head/.*"])
  assert merged["params"]["head"]["kernel"].shape == (3, 10)
  np.testing.assert_array_equal(merged["params"]["backbone"]["conv"]["kernel"], np.ones((3, 3)))


def test_merge_params_fails_loudly():
  loaded = _tree()
  loaded["params"]["head"]["kernel"] = np.ones((3, 1000))
  del loaded["params"]["backbone"]["conv"]["bias"]
  loaded["params"]["extra"] = np.ones(2)
  with pytest.raises(ValueError) as e:
    params.merge_params(loaded, _tree())
  msg = str(e.value)
  assert "- params/backbone/conv/bias" in msg
  assert "+ params/extra" in msg
  assert "~ params/head/kernel: checkpoint (3, 1000) vs model (3, 10)" in msg
