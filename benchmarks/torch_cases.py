"""The torch side of the CPU and GPU suites: the same models, inputs and steps, torch at its best.

torchvision ResNets in NCHW and channels_last (the CPU suite keeps the faster; the GPU suite
uses channels_last, what NVIDIA's and torchvision's recipes use), Hugging Face BertModel /
BertForSequenceClassification with SDPA attention (transformers' default: flash or
memory-efficient kernels on a GPU), `torch.inference_mode()` for inference, fused optimizers
(SGD momentum 0.9, AdamW weight decay 0.01) for training, and optionally `torch.compile` of the
model. On a GPU (`device="cuda"`, `bf16=True`) parameters stay float32 and the forward runs
under `torch.autocast(dtype=bfloat16)` -- the same mixed precision as jaxpretrain's
`dtype=bfloat16, param_dtype=float32`. Inputs are the NumPy arrays of `jax_cases.make_batch`,
so both frameworks see the same numbers.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.jax_cases import ADAMW, SGD, Case, make_batch


def set_threads(n: int) -> None:
  torch.set_num_threads(n)


def _resnet(case: Case, channels_last: bool) -> torch.nn.Module:
  import torchvision  # noqa: PLC0415

  model = getattr(torchvision.models, case.model)(weights=None, num_classes=case.num_classes)
  return model.to(memory_format=torch.channels_last) if channels_last else model


def _bert(case: Case, train: bool) -> torch.nn.Module:
  import transformers  # noqa: PLC0415

  from jaxpretrain import models  # noqa: PLC0415

  jm = models.build_model(case.model)  # the same architecture fields as the JAX model
  config = transformers.BertConfig(
      vocab_size=jm.vocab_size, hidden_size=jm.hidden_size,
      num_hidden_layers=jm.num_hidden_layers, num_attention_heads=jm.num_attention_heads,
      intermediate_size=jm.intermediate_size, hidden_act=jm.hidden_act,
      hidden_dropout_prob=jm.hidden_dropout_prob,
      attention_probs_dropout_prob=jm.attention_probs_dropout_prob,
      max_position_embeddings=jm.max_position_embeddings, type_vocab_size=jm.type_vocab_size,
      layer_norm_eps=jm.layer_norm_eps, num_labels=case.num_classes, attn_implementation="sdpa")
  cls = transformers.BertForSequenceClassification if train else transformers.BertModel
  return cls(config)


def _inputs(case: Case, channels_last: bool, device: str = "cpu") -> dict[str, torch.Tensor]:
  batch = make_batch(case)
  if case.family == "resnet":
    x = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    if channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    out = {"x": x, "label": torch.from_numpy(batch["label"]).long()}
  else:
    out = {"input_ids": torch.from_numpy(batch["input_ids"]).long(),
           "attention_mask": torch.from_numpy(batch["attention_mask"]).long(),
           "label": torch.from_numpy(batch["label"]).long()}
  return {k: v.to(device) for k, v in out.items()}


def model_and_inputs(case: Case, train: bool, channels_last: bool = False, device: str = "cpu"):
  model = _resnet(case, channels_last) if case.family == "resnet" else _bert(case, train)
  return model.to(device).train(train), _inputs(case, channels_last, device)


def _forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor], bf16: bool = False
             ) -> torch.Tensor:
  device = inputs["label"].device.type
  with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
    if "x" in inputs:
      return model(inputs["x"])
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
  return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _optimizer(case: Case, model: torch.nn.Module) -> torch.optim.Optimizer:
  if case.family == "resnet":
    return torch.optim.SGD(model.parameters(), lr=SGD["learning_rate"],
                           momentum=SGD["momentum"], fused=True)
  return torch.optim.AdamW(model.parameters(), lr=ADAMW["learning_rate"],
                           weight_decay=ADAMW["weight_decay"], fused=True)


def _compile(model: torch.nn.Module, mode: str | None) -> Callable[..., Any]:
  return torch.compile(model, mode=mode) if mode else torch.compile(model)


def inference(case: Case, channels_last: bool = False, compile_limit_s: float | None = None,
              *, device: str = "cpu", bf16: bool = False, compile_mode: str | None = None
              ) -> tuple[Callable[[], Any], dict[str, float]]:
  """One forward pass under inference_mode; with compile_limit_s, torch.compile'd first.

  On a GPU the call only launches the work (timing syncs once per block, `sync`).
  """
  model, inputs = model_and_inputs(case, train=False, channels_last=channels_last,
                                   device=device)
  fwd = model
  info: dict[str, float] = {}
  if compile_limit_s is not None:
    fwd = _compile(model, compile_mode)

  def run():
    with torch.inference_mode():
      return _forward(fwd, inputs, bf16)

  if compile_limit_s is not None:
    info["compile_s"] = _first_call(run, compile_limit_s)
  return run, info


def train(case: Case, channels_last: bool = False, compile_limit_s: float | None = None,
          *, device: str = "cpu", bf16: bool = False, compile_mode: str | None = None
          ) -> tuple[Callable[[], Any], dict[str, float]]:
  """One train step: zero_grad(set_to_none), forward, cross-entropy, backward, fused step.

  With bf16, the forward and the loss run under autocast; parameters, gradients and the
  optimizer state stay float32 (no GradScaler: bf16 has float32's exponent range).
  """
  model, inputs = model_and_inputs(case, train=True, channels_last=channels_last, device=device)
  opt = _optimizer(case, model)
  fwd = _compile(model, compile_mode) if compile_limit_s is not None else model
  info: dict[str, float] = {}

  def run():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(_forward(fwd, inputs, bf16).float(), inputs["label"])
    loss.backward()
    opt.step()
    return loss

  if compile_limit_s is not None:
    info["compile_s"] = _first_call(run, compile_limit_s)
  return run, info


def matmul(n: int) -> tuple[Callable[[], Any], dict[str, float]]:
  g = torch.Generator().manual_seed(1)
  a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
  out = torch.empty(n, n)

  def run():
    return torch.mm(a, b, out=out)

  return run, {"flops": 2.0 * n**3}


def sync(_out: Any = None) -> None:
  """Waits for the GPU's queued work (a no-op without CUDA)."""
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def _first_call(run: Callable[[], Any], limit_s: float) -> float:
  """Runs the first (compiling) call under a wall-clock limit; returns its seconds."""
  t0 = time.perf_counter()
  with time_limit(limit_s):
    run()
    sync()
  return time.perf_counter() - t0


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
  """Raises TimeoutError in the main thread after `seconds` (SIGALRM; Unix only)."""
  def handler(signum, frame):
    raise TimeoutError(f"gave up after {seconds:.0f} s")

  old = signal.signal(signal.SIGALRM, handler)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
