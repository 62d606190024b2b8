"""The jaxpretrain side of every benchmark: inputs, inference and train steps, compiled AOT.

Steps are the library's own (`jaxpretrain.train.step.train_step` with `optim.make_optimizer`),
so the numbers are what a user of the package gets, metrics (loss, accuracy, the global norms
of grads, updates and params) included; each is compiled with the XLA options the library
recommends for its kind (`jaxpretrain.perf.compiler_options`: on CPU, inference without
YNNPACK fusions) unless `compiler_options` is given. Each function is compiled ahead of time with
`jax.jit(...).lower(...).compile()`, which gives the compile time and the FLOPs per call from
XLA's cost analysis of the lowered (unoptimized, platform-independent) HLO.

Imports JAX, Flax, optax, NumPy and jaxpretrain only: the GPU suite runs it where torch is absent.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain import models, perf
from jaxpretrain.models import registry
from jaxpretrain.train import losses, optim
from jaxpretrain.train import state as state_lib
from jaxpretrain.train import step as step_lib

# Learning rates are irrelevant to speed; torch uses the same values.
SGD = dict(name="sgd", learning_rate=0.1, momentum=0.9)
ADAMW = dict(name="adamw", learning_rate=2e-5, weight_decay=0.01)


@dataclasses.dataclass(frozen=True)
class Case:
  """One model at one input size; `family` says how to make inputs and the torch twin."""
  name: str
  model: str  # registry name: "resnet50", "bert_base", "minilm_l6"...
  batch: int
  image: int = 224  # images: height = width
  seq: int = 128  # text: tokens per sequence
  num_classes: int = 1000  # images: classes of the head; text: labels of the classifier
  model_kwargs: tuple = ()  # extra constructor kwargs as (key, value) pairs (hashable)
  modes: tuple = ("infer", "train")  # what the suites time (the newer families: inference)

  @property
  def family(self) -> str:
    return models.family_of(self.model)

  @property
  def modality(self) -> str:
    return registry.get(self.family).modality

  @property
  def torch_twin(self) -> bool:
    """Whether benchmarks.torch_cases builds this model (torchvision ResNets, HF BERTs)."""
    return self.family in ("resnet", "bert")

  @property
  def unit(self) -> str:
    return "img/s" if self.modality == "image" else "seq/s"

  def kwargs(self, train: bool) -> dict[str, Any]:
    """Model constructor kwargs: the variant's, a head for training text models, extras.

    Families whose variants carry a classifier (the torchvision CNNs) keep one of
    num_classes outputs; the others (BERT, ViT, DINOv2, CLIP...) run bare for inference and
    with the family's classification head for training.
    """
    kw = dict(self.model_kwargs)
    if self.family == "resnet":
      kw.setdefault("num_classes", self.num_classes)
    elif self.family == "bert":
      if train:  # BertForSequenceClassification: pooler + dropout + classifier
        kw.update(head="classification", num_labels=self.num_classes)
    else:
      family = registry.get(self.family)
      if train or family.head_size(family.variants[self.model]) is not None:
        kw = family.set_head(kw, self.num_classes)
    return kw


def make_batch(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
  """Random inputs, identical for JAX and torch. Images NHWC float32, text int32 ids."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, case.num_classes, case.batch).astype(np.int32)
  if case.modality == "image":
    image = rng.standard_normal((case.batch, case.image, case.image, 3), np.float32)
    return {"image": image, "label": labels}
  vocab = models.build_model(case.model).vocab_size
  ids = rng.integers(1000, vocab, (case.batch, case.seq)).astype(np.int32)
  ids[:, 0] = 101  # [CLS]
  return {"input_ids": ids, "attention_mask": np.ones_like(ids), "label": labels}


def build(case: Case, train: bool, dtype: Any = jnp.float32):
  """(module, variables): parameters in float32, computation in `dtype`."""
  model = models.build_model(case.model, dtype=dtype, **case.kwargs(train))
  init = jax.jit(functools.partial(models.init_variables, case.model, model, batch=1))
  return model, init(jax.random.key(0))


def aot(fn, *args, donate: tuple[int, ...] = (), compiler_options: dict | None = None
        ) -> tuple[Any, dict[str, Any]]:
  """Compiles fn for args; returns (compiled, {lower_s, compile_s, flops, flops_source}).

  `compiler_options` are XLA debug options for this compilation only (the names of XLA_FLAGS
  without the dashes), so variants of a flag can be compared in one process.
  """
  jitted = jax.jit(fn, donate_argnums=donate)
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile(compiler_options=compiler_options or None)
  t2 = time.perf_counter()
  flops, source = count_flops(fn, args, lowered, compiled)
  return compiled, {"lower_s": t1 - t0, "compile_s": t2 - t1, "flops": flops,
                    "flops_source": source}


def count_flops(fn, args, lowered, compiled) -> tuple[float | None, str | None]:
  """FLOPs per call from XLA's HLO cost analysis, and where the count came from.

  The unoptimized HLO is preferred: it counts the model's own operations on every backend.
  Plugin backends (CUDA) cannot analyze it, so the same function is then lowered for the CPU
  (abstract arguments: no data moves) and analyzed there; the optimized module's analysis is
  the last resort (it may miss work inside library calls such as cuDNN convolutions).
  """
  flops = _flops(lowered.cost_analysis)
  if flops:
    return flops, "xla cost analysis of the lowered step"
  try:
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    with jax.default_device(jax.devices("cpu")[0]):
      flops = _flops(jax.jit(fn).lower(*abstract).cost_analysis)
  except Exception:  # noqa: BLE001 -- no CPU backend (JAX_PLATFORMS): try the next count
    flops = None
  if flops:
    return flops, "xla cost analysis of the step lowered for cpu"
  flops = _flops(compiled.cost_analysis)
  return (flops, "xla cost analysis of the optimized step") if flops else (None, None)


def _flops(cost_analysis) -> float | None:
  """The 'flops' of a cost analysis (a dict, or a list of one in older JAX), or None."""
  try:
    ca = cost_analysis()
  except Exception:  # noqa: BLE001 -- e.g. NotImplementedError on PJRT plugin backends
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  flops = (ca or {}).get("flops")
  return float(flops) if flops else None


def device_batch(case: Case, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
  """`make_batch` on the device; images in the compute dtype, as an input pipeline gives them."""
  batch = make_batch(case)
  if "image" in batch:
    batch["image"] = batch["image"].astype(dtype)
  return jax.device_put(batch)


def inference(case: Case, dtype: Any = jnp.float32, compiler_options: dict | None = None):
  """`run(block=True)` doing one forward pass, and its compile facts.

  `run(block=False)` only dispatches (for timing blocks of calls on an accelerator).
  """
  model, variables = build(case, train=False, dtype=dtype)
  batch = device_batch(case, dtype)
  args, kwargs = registry.get(case.family).inputs(batch)

  def forward(variables, args, kwargs):
    out, aux = model.apply(variables, *args, train=False, **kwargs)
    # Only what torch returns (logits; last hidden state and pooled output for BertModel):
    # returning the aux dict would make XLA keep every intermediate.
    return (out, aux["pooled"]) if "pooled" in aux else out

  if compiler_options is None:  # the library's recommendation for inference (jaxpretrain.perf)
    compiler_options = perf.compiler_options("inference", jax.devices()[0].platform)
  compiled, info = aot(forward, variables, args, kwargs, compiler_options=compiler_options)
  info["compiler_options"] = dict(compiler_options)

  def run(block: bool = True):
    out = compiled(variables, args, kwargs)
    return jax.block_until_ready(out) if block else out

  run.compiled = compiled  # for benchmarks.profile: the optimized HLO
  return run, info


def train(case: Case, dtype: Any = jnp.float32, compiler_options: dict | None = None):
  """`run(block=True)` doing one train step (state donated), and its compile facts.

  ResNets: SGD with momentum 0.9. BERT: AdamW with weight decay 0.01 (no decay on biases and
  norm scales, the library default), classification head, dropout 0.1 as configured.
  """
  model, variables = build(case, train=True, dtype=dtype)
  opt = optim.make_optimizer(**(SGD if case.family == "resnet" else ADAMW))
  state = state_lib.create_train_state(variables, opt.tx, 0)
  batch = device_batch(case, dtype)
  step = functools.partial(step_lib.train_step, model=model, tx=opt.tx,
                           loss_fn=losses.classification_loss_fn(), lr_fn=opt.lr_fn)
  if compiler_options is None:
    compiler_options = perf.compiler_options("train", jax.devices()[0].platform)
  compiled, info = aot(step, state, batch, donate=(0,), compiler_options=compiler_options)
  info["compiler_options"] = dict(compiler_options)
  holder = {"state": state}

  def run(block: bool = True):
    holder["state"], metrics = compiled(holder["state"], batch)
    out = (holder["state"], metrics)
    return jax.block_until_ready(out) if block else out

  run.compiled = compiled
  return run, info


def matmul(n: int, dtype: Any = jnp.float32):
  """`run(block=True)` for one [n, n] @ [n, n] product (2 n^3 FLOPs), and compile facts."""
  k1, k2 = jax.random.split(jax.random.key(1))
  a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
  compiled, info = aot(jnp.matmul, a, b)
  info.update(flops=2.0 * n**3, flops_source="2 n^3")  # exact; cost analysis says the same

  def run(block: bool = True):
    out = compiled(a, b)
    return jax.block_until_ready(out) if block else out

  return run, info
