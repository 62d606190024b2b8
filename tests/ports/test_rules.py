"""The rule-table applier: placeholders, both directions, and its error messages."""

import numpy as np
import pytest

from ports import rules
from ports.rules import CONV, LINEAR, PortError, Rule

TABLE = [
    Rule("layer{i}.{j}.conv.weight", "params/layer{i}_{j}/conv/kernel", CONV),
    Rule("fc.weight", "params/fc/kernel", LINEAR),
    Rule("fc.bias", "params/fc/bias"),
]


def _state_dict():
  rng = np.random.default_rng(0)
  return {"layer1.0.conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
          "layer2.1.conv.weight": rng.normal(size=(4, 8, 1, 1)).astype(np.float32),
          "fc.weight": rng.normal(size=(10, 4)).astype(np.float32),
          "fc.bias": rng.normal(size=(10,)).astype(np.float32),
          "bn.num_batches_tracked": np.array(3)}


def test_convert_and_export_round_trip_bit_exact():
  sd = _state_dict()
  flat = rules.convert(TABLE, sd, ignored=[r".*num_batches_tracked"])
  assert flat["params/layer1_0/conv/kernel"].shape == (3, 3, 3, 8)  # OIHW -> HWIO
  assert flat["params/fc/kernel"].shape == (4, 10)
  back = rules.export(TABLE, flat)
  assert set(back) == set(sd) - {"bn.num_batches_tracked"}
  for k, v in back.items():
    assert v.dtype == sd[k].dtype
    np.testing.assert_array_equal(v, sd[k])


def test_unconsumed_key_named_with_shape():
  sd = _state_dict()
  sd["layer9.weird"] = np.zeros((2, 5))
  with pytest.raises(PortError, match=r"\+ layer9.weird \(2, 5\)"):
    rules.convert(TABLE, sd, ignored=[r".*num_batches_tracked"])


def test_placeholders_must_match():
  with pytest.raises(ValueError, match="placeholders differ"):
    Rule("a.{i}.w", "params/a/w")


def test_check_shapes_lists_everything():
  with pytest.raises(PortError) as e:
    rules.check_shapes({"params/a": np.zeros((2, 3)), "params/b": np.zeros(1)},
                       {"params/a": (3, 2), "params/c": (4,)})
  msg = str(e.value)
  assert "- params/c (4,)" in msg and "+ params/b (1,)" in msg
  assert "~ params/a: checkpoint (2, 3) vs model (3, 2)" in msg
