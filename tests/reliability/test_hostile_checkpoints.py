"""Hostile checkpoints: nothing escapes the folder, nothing wrong loads, every refusal is one line.

Each case is one class of attack from issue 17, tried through the CLI a user runs
(`python -m ports.convert SRC DST`, `python -m ports.export CKPT OUT`; in-process through their
`main`, plus one real subprocess each) or through the reader every CLI shares. A refusal is
exit status 2 and a single `error: ...` line naming the file and the field; DST/OUT is never
written, and nothing outside them is touched.

The folders are a tiny BERT and ViT written without torch (tests/ports/test_hf_errors.py's
`write_folder`), made once per module and copied per test.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from absl import flags

from jaxpretrain import pretrained, safe_io
from ports import convert, export, readers, rules
from ports.readers import CheckpointError
from tests.ports.test_hf_errors import write_folder
from tests.reliability.conftest import REPO, cli_env

# An error line longer than this embeds a value it should have cut (a 1e6-entry list).
MAX_ERROR_CHARS = 600


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """Module-wide originals: a tiny BERT folder, a tiny ViT folder, and the BERT converted."""
  root = tmp_path_factory.mktemp("pristine")
  bert = write_folder(root / "bert")
  (bert / "tokenizer.json").write_text(_tokenizer_json())
  (bert / "vocab.txt").write_text("[PAD]\n[UNK]\na\n")
  vit = write_folder(root / "vit", family="vit")
  (vit / "preprocessor_config.json").write_text(json.dumps(
      {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": 16}))
  ckpt = convert.convert(bert, root / "ckpt")
  return {"bert": bert, "vit": vit, "ckpt": ckpt}


def _tokenizer_json() -> str:
  from tokenizers import Tokenizer
  from tokenizers.models import WordLevel
  return Tokenizer(WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).to_str()


@pytest.fixture
def bert(pristine, tmp_path):
  return pathlib.Path(shutil.copytree(pristine["bert"], tmp_path / "src"))


@pytest.fixture
def vit(pristine, tmp_path):
  return pathlib.Path(shutil.copytree(pristine["vit"], tmp_path / "src"))


@pytest.fixture
def ckpt(pristine, tmp_path):
  return pathlib.Path(shutil.copytree(pristine["ckpt"], tmp_path / "ckpt"))


def run_main(module, *args: str) -> tuple[int, str]:
  """`module.main(argv)` in this process (flags as the CLI parses them): (status, stderr)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    status = module.main([module.__name__, *map(str, args)])
  return status, err.getvalue()


def refused(module, src, dst, *needles: str) -> str:
  """Runs convert/export expecting one `error:` line holding every needle; DST never written."""
  status, err = run_main(module, src, dst)
  assert status == 2, f"exit {status}, stderr:\n{err}"
  assert err.startswith("error: ") and err.count("\n") == 1, err
  assert len(err) < MAX_ERROR_CHARS, f"{len(err)} chars: {err[:MAX_ERROR_CHARS]}..."
  for needle in needles:
    assert needle in err, f"{needle!r} not in: {err}"
  dst = pathlib.Path(dst)
  assert not dst.exists() and not dst.is_symlink()
  assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}")]
  return err


def edit_json(path, **changes):
  data = json.loads(path.read_text())
  data.update(changes)
  path.write_text(json.dumps(data))


def official_accepts(path) -> bool:
  """Whether the `safetensors` package opens the file."""
  from safetensors import safe_open
  try:
    with safe_open(str(path), "numpy"):
      return True
  except Exception:  # noqa: BLE001 -- SafetensorError and whatever else it raises
    return False


def raw_safetensors(header: dict, data: bytes, declared: int | None = None) -> bytes:
  h = json.dumps(header).encode()
  return struct.pack("<Q", len(h) if declared is None else declared) + h + data


def shard(folder, names):
  """Splits folder/model.safetensors into an index naming `names` (one per tensor group)."""
  weights = readers.SafetensorsFile(folder / "model.safetensors")
  keys = sorted(weights)
  arrays = {k: np.array(weights[k]) for k in keys}
  weight_map = {}
  for i, name in enumerate(names):
    part = {k: arrays[k] for k in keys[i::len(names)]}
    if isinstance(name, str) and "/" not in name and ".." not in name:
      readers.save_safetensors(part, folder / name)
    weight_map.update(dict.fromkeys(part, name))
  (folder / "model.safetensors").unlink()
  (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


# 1. Export never writes outside OUT.

@pytest.mark.parametrize("name", ["../.bashrc", "/etc/passwd", "sub/x.txt", "..", "x\0y", "",
                                  " tokenizer.json", 7, ["tokenizer.json"]])
def test_export_refuses_file_names_that_are_not_plain(ckpt, tmp_path, name):
  (tmp_path / ".bashrc").write_text("the user's own file\n")
  outdir = tmp_path / "outdir"
  outdir.mkdir()
  edit_json(ckpt / "config.json", files=[name])
  refused(export, ckpt, outdir / "OUT", "config.json", "files", "plain file name")
  assert (tmp_path / ".bashrc").read_text() == "the user's own file\n"
  assert list(outdir.iterdir()) == []


def test_export_refuses_a_listed_file_linked_outside(ckpt, tmp_path):
  secret = tmp_path / "secret.txt"
  secret.write_text("not for OUT")
  (ckpt / "tokenizer.json").unlink()
  (ckpt / "tokenizer.json").symlink_to(secret)
  refused(export, ckpt, tmp_path / "OUT", "tokenizer.json", "outside")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_export_refuses_a_listed_file_that_is_not_regular(ckpt, tmp_path, kind):
  (ckpt / "vocab.txt").unlink()
  os.mkfifo(ckpt / "vocab.txt") if kind == "fifo" else (ckpt / "vocab.txt").mkdir()
  refused(export, ckpt, tmp_path / "OUT", "vocab.txt", "not a regular file")


def test_export_copies_the_listed_files(ckpt, tmp_path):
  status, err = run_main(export, ckpt, tmp_path / "OUT")
  assert status == 0, err
  for name in json.loads((ckpt / "config.json").read_text())["files"]:
    assert (tmp_path / "OUT" / name).read_bytes() == (ckpt / name).read_bytes()


# 2. Convert never reads through links or '..' out of the source folder.

def test_convert_refuses_a_vocab_linked_to_the_environment(bert, tmp_path):
  (bert / "vocab.txt").unlink()
  (bert / "vocab.txt").symlink_to("/proc/self/environ")
  refused(convert, bert, tmp_path / "out", "vocab.txt", "outside")


def test_convert_refuses_a_relative_link_out_of_the_folder(bert, tmp_path):
  (tmp_path / "elsewhere.txt").write_text("[PAD]\n")
  (bert / "vocab.txt").unlink()
  (bert / "vocab.txt").symlink_to("../elsewhere.txt")
  refused(convert, bert, tmp_path / "out", "vocab.txt", "outside")


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "sub/s.safetensors",
                                 "..", 3])
def test_convert_refuses_shard_names_that_are_not_plain(bert, tmp_path, bad):
  shard(bert, ["s1.safetensors", bad])
  refused(convert, bert, tmp_path / "out", "model.safetensors.index.json", "weight_map",
          "plain file name")


def test_convert_refuses_a_shard_linked_outside(bert, tmp_path):
  shard(bert, ["s1.safetensors", "s2.safetensors"])
  shutil.move(bert / "s2.safetensors", tmp_path / "s2.safetensors")
  (bert / "s2.safetensors").symlink_to(tmp_path / "s2.safetensors")
  refused(convert, bert, tmp_path / "out", "s2.safetensors", "outside")


def _hf_cache(tmp_path, src, names) -> pathlib.Path:
  """src's files laid out as huggingface_hub caches them: snapshot links to ../../blobs/SHA."""
  repo = tmp_path / "hub" / "models--org--tiny"
  snap = repo / "snapshots" / "0123abc"
  (repo / "blobs").mkdir(parents=True)
  snap.mkdir(parents=True)
  for i, name in enumerate(names):
    blob = f"{i:040x}"
    shutil.copyfile(src / name, repo / "blobs" / blob)
    (snap / name).symlink_to(f"../../blobs/{blob}")
  return snap


def test_hugging_face_cache_layout_converts(bert, tmp_path):
  shard(bert, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
  names = [p.name for p in bert.iterdir()]
  snap = _hf_cache(tmp_path, bert, names)
  assert all((snap / n).is_symlink() for n in names)
  status, err = run_main(convert, snap, tmp_path / "out")
  assert status == 0, err
  copied = (tmp_path / "out" / "tokenizer.json").read_bytes()
  assert copied == (bert / "tokenizer.json").read_bytes()


def test_hugging_face_cache_link_out_of_the_blob_store_is_refused(bert, tmp_path):
  snap = _hf_cache(tmp_path, bert, [p.name for p in bert.iterdir() if p.name != "vocab.txt"])
  (tmp_path / "hub" / "stolen.txt").write_text("[PAD]\n")
  (snap / "vocab.txt").symlink_to("../../../stolen.txt")
  refused(convert, snap, tmp_path / "out", "vocab.txt", "outside")


# 3. Bounded reads: no FIFO, device, folder or oversized file; sizes range-checked first.

@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_config_that_is_not_a_regular_file(bert, tmp_path, kind):
  (bert / "config.json").unlink()
  os.mkfifo(bert / "config.json") if kind == "fifo" else (bert / "config.json").mkdir()
  refused(convert, bert, tmp_path / "out", "config.json", "not a regular file")


def test_weights_file_that_is_a_device(tmp_path):
  status, err = run_main_arch("/dev/zero", tmp_path / "out")
  assert status == 2 and "/dev/zero: is a device, not a regular file" in err, err


def run_main_arch(src, dst, arch="resnet18"):
  old = flags.FLAGS["arch"].value
  flags.FLAGS["arch"].value = arch
  try:
    return run_main(convert, src, dst)
  finally:
    flags.FLAGS["arch"].value = old


@pytest.mark.parametrize("name,cap", [("config.json", safe_io.MAX_CONFIG_BYTES),
                                      ("preprocessor_config.json", safe_io.MAX_CONFIG_BYTES),
                                      ("tokenizer.json", safe_io.MAX_TOKENIZER_BYTES)])
def test_oversized_side_file_refused_before_reading(vit, tmp_path, name, cap):
  with open(vit / name, "ab") as f:
    f.truncate(cap + 1)  # sparse: the size is refused from fstat, nothing is read
  refused(convert, vit, tmp_path / "out", name, f"more than the {cap}")


def test_oversized_safetensors_header_refused_before_reading(bert, tmp_path):
  path = bert / "model.safetensors"
  n = readers.MAX_HEADER_BYTES + 1
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", n))
    f.truncate(8 + n + 16)
  refused(convert, bert, tmp_path / "out", "model.safetensors", f"limit {readers.MAX_HEADER_BYTES}")


@pytest.mark.parametrize("text,needle", [
    ("[" * 100_000 + "]" * 100_000, "nested 100000 deep"),
    ('{"hidden_size": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
    ('{"hidden_size": 32, "hidden_size": 64}', "appears twice"),
])
def test_config_json_that_python_would_choke_on(bert, tmp_path, text, needle):
  (bert / "config.json").write_text(text)
  refused(convert, bert, tmp_path / "out", "config.json", needle)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json",
                                  "preprocessor_config.json", "tokenizer_config.json"])
def test_side_file_that_is_not_utf8(bert, tmp_path, name):
  if name == "model.safetensors.index.json":
    shard(bert, ["s1.safetensors", "s2.safetensors"])
  path = bert / name
  data = path.read_bytes() if path.exists() else b'{"a": "b"}'
  path.write_bytes(data[:-1] + b'"\xff\xfe"}' if data.endswith(b"}") else data)
  refused(convert, bert, tmp_path / "out", name, "not UTF-8")


@pytest.mark.parametrize("field,value", [
    ("num_hidden_layers", 10**6), ("num_hidden_layers", 0), ("hidden_size", 1e20),
    ("hidden_size", -32), ("hidden_size", 32.0), ("hidden_size", "32"), ("hidden_size", True),
    ("hidden_size", [32]), ("vocab_size", None), ("intermediate_size", 2**40),
    ("num_attention_heads", {"n": 4}), ("max_position_embeddings", 10**7),
    ("layer_norm_eps", float("nan")), ("hidden_dropout_prob", 2.0), ("type_vocab_size", 0),
    ("model_type", ["bert"]), ("hidden_act", ["gelu"]), ("architectures", "BertModel"),
    ("architectures", [["BertModel"]]), ("id2label", ["a", "b"]), ("id2label", {"x": "a"}),
    ("pad_token_id", -1), ("position_embedding_type", 1), ("is_decoder", "no"),
])
def test_config_values_range_checked_before_anything_is_built(bert, tmp_path, field, value):
  edit_json(bert / "config.json", **{field: value})
  refused(convert, bert, tmp_path / "out", "config.json", field)


@pytest.mark.parametrize("change,needle", [
    ({"num_attention_heads": 5}, "num_heads 5"),
    ({"model_type": "roberta", "architectures": ["RobertaModel"], "pad_token_id": 100},
     "position 101"),
])
def test_config_values_in_range_that_contradict_each_other(bert, tmp_path, change, needle):
  """Each value in range, together no model: the model's own check, as one line."""
  edit_json(bert / "config.json", **change)
  refused(convert, bert, tmp_path / "out", "config.json describes no valid 'bert'", needle)


@pytest.mark.parametrize("field,value", [
    ("image_size", 10**6), ("image_size", [16, 16, 16]), ("patch_size", 0), ("num_channels", 10**4),
    ("qkv_bias", "yes"), ("pooler_act", ["tanh"]),
])
def test_vit_config_values_range_checked(vit, tmp_path, field, value):
  edit_json(vit / "config.json", **{field: value})
  refused(convert, vit, tmp_path / "out", "config.json", field)


@pytest.mark.parametrize("field,value", [
    ("image_mean", [float("inf")] * 3), ("image_std", "0.5"), ("size", {"height": 10**9,
                                                                        "width": 16}),
    ("size", "16"), ("rescale_factor", 0), ("image_mean", list(range(10**5))),
])
def test_preprocessor_config_values_range_checked(vit, tmp_path, field, value):
  edit_json(vit / "preprocessor_config.json", **{field: value})
  refused(convert, vit, tmp_path / "out", "preprocessor_config.json")


@pytest.mark.parametrize("change,needle", [
    ({"model_kwargs": {"hidden_size": 10**6}}, "hidden_size"),
    ({"model_kwargs": {"num_hidden_layers": "2"}}, "num_hidden_layers"),
    ({"model_kwargs": {"weird": [[1]]}}, "model_kwargs.'weird'"),
    ({"model_kwargs": []}, "model_kwargs"),
    ({"preprocessing": {"tokenizer_path": "/etc/passwd"}}, "never names a path"),
    ({"preprocessing": {"mean": [float("nan")]}}, "mean"),
    ({"format_version": "1"}, "format_version"),
    ({"model": ["bert"]}, "model="),
    ({"source": {"format": "huggingface", "model_type": ["bert"]}}, "model_type"),
])
def test_checkpoint_config_checked(ckpt, tmp_path, change, needle):
  cfg = json.loads((ckpt / "config.json").read_text())
  cfg.update(change)
  (ckpt / "config.json").write_text(json.dumps(cfg))
  refused(export, ckpt, tmp_path / "OUT", "config.json", needle)
  if "source" not in change:  # the job's loaders read it through the same check
    with pytest.raises(ValueError, match="config.json"):
      pretrained.read_config(ckpt)


# 4. Safetensors: tensors must tile the data region exactly, as the official reader checks.

def _nudged(path, by: int):
  """The header padded with `by` spaces (as writers pad it), then its length declared without
  them: the JSON still parses, and without the coverage check every tensor is read `by` bytes
  early (the issue's ResNet converted with all 62 arrays wrong)."""
  data = path.read_bytes()
  n = struct.unpack("<Q", data[:8])[0]
  h = data[8:8 + n].rstrip()
  path.write_bytes(struct.pack("<Q", len(h)) + h + b" " * by + data[8 + n:])


def test_header_length_nudged_into_padding_is_refused(bert, tmp_path):
  _nudged(bert / "model.safetensors", 4)
  assert not official_accepts(bert / "model.safetensors")  # the official reader refuses it too
  refused(convert, bert, tmp_path / "out", "model.safetensors", "cover")


F4 = {"dtype": "F32", "shape": [1]}


@pytest.mark.parametrize("header,data,needle", [
    ({"a": {**F4, "data_offsets": [4, 8]}}, b"\0" * 8, "gap of 4 bytes"),
    ({"a": {**F4, "data_offsets": [0, 4]}, "b": {**F4, "data_offsets": [8, 12]}}, b"\0" * 12,
     "gap of 4 bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {**F4, "data_offsets": [4, 8]}}, b"\0" * 8, "overlaps"),
    ({"a": {**F4, "data_offsets": [0, 4]}}, b"\0" * 8, "cover 4 of the 8"),
    ({"a": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4,
     "no port converts"),
    ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "dtype ['F32']"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 12 bytes"),
    ({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
    ({"a": [1, 2]}, b"", "lacks dtype"),
    ({"__metadata__": {"format": 1}}, b"", "__metadata__"),
    ({"a": {**F4, "data_offsets": [0, 4]}, "__metadata__": {"k": "v"}, "x": "y"}, b"\0" * 4,
     "tensor 'x' lacks"),
])
def test_safetensors_validated_like_the_official_reader(tmp_path, header, data, needle):
  path = tmp_path / "w.safetensors"
  path.write_bytes(raw_safetensors(header, data))
  with pytest.raises(CheckpointError, match=None) as e:
    readers.SafetensorsFile(path)
  assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
  if "no port converts" not in needle:  # refused for its structure: so by the official reader
    assert not official_accepts(path)


def test_header_json_the_official_parser_reads_differently(tmp_path):
  """-0 is a float to serde_json (so not a size), NaN is not JSON to it."""
  for raw in (b'{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}',
              b'{"__metadata__":{"a":"b"},"x":{"dtype":"F32","shape":[NaN],"data_offsets":[0,0]}}'):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError):
      readers.SafetensorsFile(path)


# 5. Dtypes: a float's place takes only a float.

def test_integer_tensor_where_a_float_kernel_belongs(bert, tmp_path):
  weights = {k: np.array(v) for k, v in readers.SafetensorsFile(bert / "model.safetensors").items()}
  key = "encoder.layer.0.attention.self.query.weight"
  weights[key] = (weights[key] * 1e9).astype(np.int32)
  readers.save_safetensors(weights, bert / "model.safetensors")
  refused(convert, bert, tmp_path / "out", key, "int32", "float")


def test_conv_weight_of_the_wrong_rank(tmp_path):
  path = tmp_path / "r18.safetensors"
  readers.save_safetensors({"conv1.weight": np.zeros((64, 3), np.float32)}, path)
  status, err = run_main_arch(path, tmp_path / "out")
  assert status == 2 and err.count("\n") == 1, err
  assert "'conv1.weight' has shape (64, 3)" in err and "4-d float" in err


def test_rules_check_dtype_and_rank_in_both_directions():
  table = [rules.Rule("w", "params/w/kernel", rules.CONV)]
  with pytest.raises(rules.PortError, match=r"'w' has shape \(2, 2, 2, 2\) and dtype int64"):
    rules.convert(table, {"w": np.zeros((2, 2, 2, 2), np.int64)})
  with pytest.raises(rules.PortError, match=r"'params/w/kernel' has shape \(2,\)"):
    rules.export(table, {"params/w/kernel": np.zeros((2,), np.float32)})


# 13/14. Pickles from strangers, messages that stay short, tokenizers that must load.

@pytest.mark.parametrize("make,needle", [
    (lambda t: t.quantize_per_tensor(t.rand(3), 0.1, 0, t.qint8), "qint8"),
    (lambda t: t.rand(3).to(t.float8_e4m3fn), "float8_e4m3fn"),
    (lambda t: t.eye(3).to_sparse(), "sparse_coo"),
    (lambda t: t.empty(3, device="meta"), "device 'meta'"),
    (lambda t: t.rand(3).to(t.complex64), "complex64"),
])
def test_pickled_tensors_numpy_cannot_hold(tmp_path, make, needle):
  torch = pytest.importorskip("torch")
  path = tmp_path / "w.pth"
  torch.save({"conv1.weight": make(torch)}, path)
  status, err = run_main_arch(path, tmp_path / "out")
  assert status == 2 and err.count("\n") == 1, err
  assert "'conv1.weight'" in err and needle in err


_RNG = np.random.default_rng(17)


@pytest.mark.parametrize("content", [_RNG.bytes(4096), b"\x80\x02" + _RNG.bytes(200),
                                     b"PK\x03\x04" + _RNG.bytes(200), b"",
                                     pathlib.Path("/etc/passwd").read_bytes()],
                         ids=["random", "pickle_header", "zip_header", "empty", "etc_passwd"])
def test_random_bytes_are_not_called_a_code_running_pickle(tmp_path, content):
  pytest.importorskip("torch")
  path = tmp_path / "w.pth"
  path.write_bytes(content)
  status, err = run_main_arch(path, tmp_path / "out")
  assert status == 2 and err.count("\n") == 1, err
  assert "would run code" not in err and str(path) in err


def test_code_running_pickle_still_named_as_such(tmp_path):
  pytest.importorskip("torch")
  import pickle

  class Boom:
    def __reduce__(self):
      return (os.system, ("true",))
  path = tmp_path / "w.pth"
  path.write_bytes(pickle.dumps({"w": Boom()}, protocol=2))
  with pytest.raises(CheckpointError, match=r"would run code.*posix\.system"):
    readers.load_state_dict(path)


# A pickle declares each storage's element count, and torch allocates that many before reading
# the bytes: a file of a few hundred bytes declaring 2**40 floats asks for 4 TiB (8 GiB passed
# the allocator and failed only when the bytes were read). The files below are real torch.save
# output with the count in the pickle changed; the raw storages stay the real ones.
STORAGE_SCAN_PEAK_BYTES = 1 << 20  # the refusal reads a few hundred bytes of pickle


def _save_declaring(torch, path, numel, legacy: bool, values=None):
  """torch.save of {'conv1.weight': float32 [2, 3], 'fc.bias': int64 [3]} whose pickle declares
  `numel` elements for the float32 storage (legacy format or zip)."""
  values = torch.arange(6, dtype=torch.float32).reshape(2, 3) if values is None else values
  real_size = torch.storage.TypedStorage._size

  def size(storage):
    return numel if numel is not None and storage.dtype == torch.float32 else real_size(storage)
  with mock.patch.object(torch.storage.TypedStorage, "_size", size):
    torch.save({"conv1.weight": values, "fc.bias": torch.ones(3, dtype=torch.int64)}, path,
               _use_new_zipfile_serialization=not legacy)
  return path


def _refused_unloaded(path) -> str:
  """The CheckpointError message load_state_dict gives, asserting torch.load never ran and
  the refusal allocated under STORAGE_SCAN_PEAK_BYTES."""
  import tracemalloc
  tracemalloc.start()
  try:
    with mock.patch("torch.load", side_effect=AssertionError("torch.load ran")), \
         pytest.raises(CheckpointError) as e:
      readers.load_state_dict(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < STORAGE_SCAN_PEAK_BYTES, peak
  return str(e.value)


# Legacy: 5 pickles, then per storage an 8-byte count and its bytes (8 + 24, 8 + 24).
LEGACY_STORAGE_BYTES = 64


@pytest.mark.parametrize("numel", [2**31, 2**40, 17])
def test_legacy_pickle_declaring_storages_larger_than_the_file(tmp_path, numel):
  torch = pytest.importorskip("torch")
  path = _save_declaring(torch, tmp_path / "w.pth", numel, legacy=True)
  message = _refused_unloaded(path)
  assert re.fullmatch(
      rf"{re.escape(str(path))}: storage '\d+' declares {numel:,} FloatStorage elements "
      rf"\({4 * numel:,} bytes; {4 * numel + 24:,} for all 2 storages\), but the file holds "
      rf"{LEGACY_STORAGE_BYTES} bytes after its pickles; a corrupt or hostile file, refused "
      r"before allocating them", message), message
  status, err = run_main_arch(path, tmp_path / "out")
  assert status == 2 and err.count("\n") == 1 and f"{numel:,} FloatStorage" in err, err


def test_legacy_pickle_that_is_honest_still_loads(tmp_path):
  torch = pytest.importorskip("torch")
  path = _save_declaring(torch, tmp_path / "w.pth", None, legacy=True)
  out = readers.load_state_dict(path)
  np.testing.assert_array_equal(out["conv1.weight"], np.arange(6, dtype=np.float32).reshape(2, 3))
  assert out["fc.bias"].dtype == np.int64
  path = _save_declaring(torch, tmp_path / "n.pth", -1, legacy=True)  # not a count
  assert re.fullmatch(rf"{re.escape(str(path))}: storage '\d+' declares -1 elements, not a "
                      "count", _refused_unloaded(path))


def test_legacy_pickle_longer_than_the_scan_is_refused(tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  path = _save_declaring(torch, tmp_path / "w.pth", None, legacy=True)
  monkeypatch.setattr(readers, "MAX_PICKLE_SCAN_BYTES", 200)  # the data pickle ends past 200
  assert _refused_unloaded(path) == (
      f"{path}: its pickles run past the first MAX_PICKLE_SCAN_BYTES=200 bytes (more tensors "
      "than any real checkpoint), so the storages they declare cannot be checked; refused "
      "unread")


@pytest.mark.parametrize("numel", [7, 2**40])
def test_zip_pickle_declaring_a_storage_its_record_does_not_hold(tmp_path, numel):
  """With mmap, torch read a 7-float claim on a 6-float record from the next record's bytes."""
  torch = pytest.importorskip("torch")
  path = _save_declaring(torch, tmp_path / "w.pth", numel, legacy=False)
  assert _refused_unloaded(path) == (
      f"{path}: storage '0' declares {numel:,} FloatStorage elements ({4 * numel:,} bytes), "
      "but its record 'w/data/0' holds 24 bytes; a corrupt or hostile file, refused before "
      "loading")


def _rewrite_zip(src, dst, deflated: str):
  """src's members copied to dst, those whose names end with `deflated` compressed."""
  import zipfile
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
    for info in zin.infolist():
      kind = zipfile.ZIP_DEFLATED if info.filename.endswith(deflated) else zipfile.ZIP_STORED
      zout.writestr(info.filename, zin.read(info), compress_type=kind)
  return dst


def set_central_size(path, member: str, size: int):
  """Writes `size` as `member`'s uncompressed size in the central directory (what readers
  trust), leaving its bytes alone; returns `path` (also used by test_bad_data.py)."""
  data = bytearray(path.read_bytes())
  at = -1
  while True:
    at = data.index(b"PK\x01\x02", at + 1)
    n = struct.unpack_from("<H", data, at + 28)[0]
    if data[at + 46:at + 46 + n] == member.encode():
      struct.pack_into("<I", data, at + 24, size)
      path.write_bytes(bytes(data))
      return path


def test_zip_record_compressed_or_lying_about_its_size(tmp_path):
  torch = pytest.importorskip("torch")
  src = _save_declaring(torch, tmp_path / "src.pth", None, legacy=False,
                        values=torch.zeros(4096))  # 16 KiB of zeros: deflates to ~33 bytes
  path = _rewrite_zip(src, tmp_path / "w.pth", "/data/0")
  message = _refused_unloaded(path)
  assert re.fullmatch(rf"{re.escape(str(path))}: record 'src/data/0' is compressed \(16,384 "
                      r"bytes from \d\d\); torch writes records stored, and a compressed one "
                      "cannot be memory-mapped", message), message
  path = _rewrite_zip(src, tmp_path / "p.pth", "data.pkl")
  set_central_size(path, "src/data.pkl", 2**32 - 2)  # a ~150-byte member claiming 4 GiB
  message = _refused_unloaded(path)
  assert re.fullmatch(rf"{re.escape(str(path))}: member 'src/data.pkl' declares 4,294,967,294 "
                      r"bytes from \d+ compressed, more than deflate's 1032:1 allows; a zip "
                      "bomb or a corrupt archive", message), message


def test_etc_passwd_as_a_shard(bert, tmp_path):
  shard(bert, ["s1.safetensors", "/etc/passwd"])
  refused(convert, bert, tmp_path / "out", "'/etc/passwd' is not a plain file name")


@pytest.mark.parametrize("text", ["{}", '{"model": 3}', "not json", "[" * 200 + "]" * 200])
def test_malformed_tokenizer_json_refused_at_convert_time(bert, tmp_path, text):
  (bert / "tokenizer.json").write_text(text)
  refused(convert, bert, tmp_path / "out", "tokenizer.json")


def test_errors_never_embed_huge_values(bert, tmp_path):
  edit_json(bert / "config.json", architectures=["X"] * 500_000)
  err = refused(convert, bert, tmp_path / "out", "architectures", "500000 items")
  assert len(err) < MAX_ERROR_CHARS
  path = tmp_path / "w.safetensors"
  path.write_bytes(raw_safetensors({"a": {"dtype": "F32", "shape": [1] * 100_000,
                                          "data_offsets": [0, 4]}}, b"\0" * 4))
  with pytest.raises(CheckpointError) as e:
    readers.SafetensorsFile(path)
  assert len(str(e.value)) < MAX_ERROR_CHARS
  many = {f"stray.{i}": np.zeros(1, np.float32) for i in range(100_000)}
  with pytest.raises(rules.PortError) as e:
    rules.convert([], many)
  assert len(str(e.value)) < 50 * rules.MAX_LISTED * 2


# The CLIs themselves, as a user runs them: status 2, one line, no traceback.

@pytest.mark.parametrize("cli", ["convert", "export"])
def test_cli_subprocess_one_line_exit_2(ckpt, bert, tmp_path, cli):
  if cli == "convert":
    edit_json(bert / "config.json", num_hidden_layers=10**6)
    src = bert
  else:
    edit_json(ckpt / "config.json", files=["../../.bashrc"])
    src = ckpt
  dst = tmp_path / "dst"
  proc = subprocess.run([sys.executable, "-m", f"ports.{cli}", str(src), str(dst)], cwd=REPO,
                        env=cli_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not dst.exists()
