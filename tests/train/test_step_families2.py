"""One train step with a new classification head for each new family (DistilBERT, DINOv2,
CLIP), through `jaxpretrain.train.step` as the job runs it, on a digits batch or token ids.

The pretrained model (head None) is initialized, its variables merged into the head model with
the family's head regexes as `dont_load` (FAMILY_INFO["heads"]), and a few steps on one batch
lower the loss.
"""

import functools

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxpretrain import models, params
from jaxpretrain.models import clip, dinov2, distilbert
from jaxpretrain.train import losses, optim, step
from jaxpretrain.train.state import create_train_state

CASES = {
    "distilbert": (distilbert, dict(vocab_size=40, dim=16, n_layers=1, n_heads=2, hidden_dim=24,
                                    max_position_embeddings=12, dropout=0.0,
                                    attention_dropout=0.0, seq_classif_dropout=0.0)),
    "dinov2": (dinov2, dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            image_size=8, patch_size=4, mlp_ratio=2)),
    "clip": (clip, dict(text_vocab_size=40, text_hidden_size=16, text_intermediate_size=24,
                        text_num_hidden_layers=1, text_num_attention_heads=2,
                        text_max_position_embeddings=8, vision_hidden_size=16,
                        vision_intermediate_size=24, vision_num_hidden_layers=1,
                        vision_num_attention_heads=2, vision_image_size=8, vision_patch_size=4,
                        projection_dim=8)),
}


def _batch(family):
  x, y = load_digits(return_X_y=True)
  y = y[:32].astype(np.int32) % 3
  if family == "distilbert":  # token ids from the digit pixels, padded after 10 tokens
    ids = (x[:32, :12] + 1).astype(np.int32)
    mask = (np.arange(12)[None] < 10).astype(np.int32).repeat(32, 0)
    return {"input_ids": ids * mask, "attention_mask": mask, "label": y}
  images = np.repeat((x[:32] / 16.0).reshape(-1, 8, 8, 1), 3, axis=-1).astype(np.float32)
  return {"image": images, "label": y}


@pytest.mark.parametrize("family", sorted(CASES))
def test_new_head_trains(family):
  module, kw = CASES[family]
  pretrained = models.build_model(family, **kw)
  # The "checkpoint": the pretrained model's shapes (jax.eval_shape, nothing compiled), filled.
  loaded = jax.tree.map(lambda a: np.full(a.shape, 0.01, a.dtype),
                        models.variable_shapes(family, pretrained))
  model = models.build_model(family, **kw, head="classification", num_labels=3)
  fresh = jax.jit(lambda: models.init_variables(family, model, jax.random.key(2)))()
  merged = params.merge_params(loaded, fresh, dont_load=module.FAMILY_INFO["heads"])
  assert set(params.flatten(merged)) == set(params.flatten(fresh))
  opt = optim.make_optimizer("adamw", learning_rate=1e-2)
  state = create_train_state(merged, opt.tx, 0)
  fn = jax.jit(functools.partial(step.train_step, model=model, tx=opt.tx, lr_fn=opt.lr_fn,
                                 loss_fn=losses.classification_loss_fn()))
  batch = _batch(family)
  history = []
  for _ in range(3):
    state, metrics = fn(state, batch)
    history.append(float(metrics["loss"]))
  assert np.all(np.isfinite(history)) and history[-1] < history[0], history
