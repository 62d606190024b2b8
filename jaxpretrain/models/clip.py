"""CLIP (Radford et al. 2021) as Hugging Face's CLIPModel computes it, with zero-shot labels.

Fields carry the names of Hugging Face's CLIPTextConfig and CLIPVisionConfig with a `text_` or
`vision_` prefix (module fields stay flat and hashable), plus CLIPConfig's projection_dim and
logit_scale_init_value. Images are NHWC.

- Image tower (`vision_model`): patch embedding (conv without bias), a class embedding, learned
  position embeddings (resized bicubically for other image sizes, as transformers'
  `interpolate_pos_encoding`), `pre_layrnorm` (sic), a pre-LN encoder, `post_layernorm` on the
  [CLS] token -> pooled.
- Text tower (`text_model`): token + position embeddings, a causal pre-LN encoder,
  `final_layer_norm`, pooled at the end-of-text token: the highest token id when the config's
  eos_token_id is 2 (the original OpenAI configs), else the first `eos_token_id`.
- `visual_projection` / `text_projection` (no bias) give the joint embeddings; logits are
  cosine similarities times exp(logit_scale).

Head "classification" (CLIPForImageClassification) keeps only the image tower plus a dense
layer on the mean of the patch tokens.

    model = clip.build("clip_vit_base_patch32")
    logits_per_image, aux = model.apply(v, images, input_ids=ids, attention_mask=mask)
    image_features = model.apply(v, images, method="get_image_features")  # [b, projection_dim]
    text_features = model.apply(v, ids, mask, method="get_text_features")

Zero-shot classification (`zero_shot_weights`, `zero_shot_logits`): embed one prompt per label
("a photo of a {label}"), normalize, and classify an image by the softmax of its cosine
similarities times exp(logit_scale) - usable by `predict` and as a `select` baseline.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpretrain.models import registry, vit
from jaxpretrain.models.transformer import Dtype, Encoder, dot_2d, layer_norm

HEADS = (None, "classification")
LEGACY_EOS_TOKEN_ID = 2  # configs before transformers PR #24773 pool at argmax(input_ids)
PROMPT = "a photo of a {label}"  # CLIP's basic ImageNet prompt (Radford et al. 2021, Sec. 3.1.4)

# Literal variant table; every other field keeps the CLIPConfig defaults (ViT-B/32 widths).
VARIANTS: dict[str, dict[str, Any]] = {
    # Generic entry the Hugging Face port writes with every field from config.json.
    "clip": {},
    # openai/clip-vit-base-patch32 config.json (its text eos_token_id is the legacy 2).
    "clip_vit_base_patch32": dict(text_eos_token_id=2, vision_patch_size=32),
    # openai/clip-vit-base-patch16 config.json.
    "clip_vit_base_patch16": dict(text_eos_token_id=2, vision_patch_size=16),
}


class TextTower(nn.Module):
  """CLIPTextTransformer: embeddings, causal pre-LN encoder, final LayerNorm, EOS pooling."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  max_position_embeddings: int
  hidden_act: str
  layer_norm_eps: float
  attention_dropout: float
  eos_token_id: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """[batch, seq] ids -> (pooled [batch, hidden_size], aux of the tower)."""
    b, s = input_ids.shape
    if s > self.max_position_embeddings:
      raise ValueError(f"sequence length {s} exceeds text max_position_embeddings="
                       f"{self.max_position_embeddings}")
    x = TextEmbeddings(self.vocab_size, self.hidden_size, self.max_position_embeddings,
                       self.param_dtype, self.init_std, name="embeddings")(input_ids)
    x = x.astype(self.dtype)
    aux = {"embeddings": x}
    x, layers = Encoder(
        self.num_hidden_layers, self.num_attention_heads, self.intermediate_size,
        pre_norm=True, act=self.hidden_act, attention_dropout_rate=self.attention_dropout,
        layer_norm_eps=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
        init_std=self.init_std, causal=True, name="encoder",
    )(x, attention_mask, train=train)
    aux.update(layers)
    x = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype,
                   name="final_layer_norm")(x)
    aux["last_hidden_state"] = x
    if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
      eos = jnp.argmax(input_ids, axis=-1)  # the end-of-text id is the largest in the vocab
    else:
      eos = jnp.argmax((input_ids == self.eos_token_id).astype(jnp.int32), axis=-1)
    aux["pooled"] = x[jnp.arange(b), eos]
    return aux["pooled"], aux


class TextEmbeddings(nn.Module):
  """Token + position embeddings (no LayerNorm, no dropout in CLIP)."""
  vocab_size: int
  hidden_size: int
  max_position_embeddings: int
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    init = nn.initializers.normal(self.init_std)
    tokens = self.param("token_embedding", init, (self.vocab_size, self.hidden_size),
                        self.param_dtype)
    pos = self.param("position_embedding", init,
                     (self.max_position_embeddings, self.hidden_size), self.param_dtype)
    return jnp.take(tokens, input_ids, axis=0) + pos[:input_ids.shape[1]]


class VisionEmbeddings(nn.Module):
  """Patch embedding (no bias), class embedding, (resized) position embeddings."""
  hidden_size: int
  image_size: int
  patch_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """[batch, height, width, channels] -> [batch, 1 + patches, hidden_size]."""
    p, d = self.patch_size, self.hidden_size
    init = nn.initializers.normal(self.init_std)
    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, kernel_init=init, name="patch_embedding")(images)
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, d)
    grid = (self.image_size // p, self.image_size // p)
    cls = self.param("class_embedding", init, (d,), self.param_dtype)
    pos = self.param("position_embedding", init, (1 + grid[0] * grid[1], d), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    return x + vit.resize_pos_embed(pos[None], grid, (gh, gw))[0].astype(x.dtype)


class VisionTower(nn.Module):
  """CLIPVisionTransformer: embeddings, pre_layrnorm, pre-LN encoder, post_layernorm on [CLS]."""
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_channels: int
  image_size: int
  patch_size: int
  hidden_act: str
  layer_norm_eps: float
  attention_dropout: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """[batch, height, width, channels] -> (pooled [batch, hidden_size], aux of the tower)."""
    if images.shape[-1] != self.num_channels:
      raise ValueError(f"images have {images.shape[-1]} channels (NHWC expected); the model "
                       f"takes vision_num_channels={self.num_channels}")
    norm = functools.partial(layer_norm, self.layer_norm_eps, self.dtype, self.param_dtype)
    x = VisionEmbeddings(self.hidden_size, self.image_size, self.patch_size, dtype=self.dtype,
                         param_dtype=self.param_dtype, init_std=self.init_std,
                         name="embeddings")(images)
    aux = {"embeddings": x}
    x = norm(name="pre_layrnorm")(x)
    aux["pre_layrnorm"] = x
    x, layers = Encoder(
        self.num_hidden_layers, self.num_attention_heads, self.intermediate_size,
        pre_norm=True, act=self.hidden_act, attention_dropout_rate=self.attention_dropout,
        layer_norm_eps=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
        init_std=self.init_std, name="encoder",
    )(x, None, train=train)
    aux.update(layers)
    aux["last_hidden_state"] = x
    aux["pooled"] = norm(name="post_layernorm")(x[:, 0])
    return aux["pooled"], aux


class CLIP(nn.Module):
  """CLIP's two towers, projections and logit scale; or the image tower with a classifier."""
  text_vocab_size: int = 49408
  text_hidden_size: int = 512
  text_intermediate_size: int = 2048
  text_num_hidden_layers: int = 12
  text_num_attention_heads: int = 8
  text_max_position_embeddings: int = 77
  text_hidden_act: str = "quick_gelu"
  text_layer_norm_eps: float = 1e-5
  text_attention_dropout: float = 0.0
  text_eos_token_id: int = 49407  # 2 (legacy configs): pool at the largest token id instead
  text_pad_token_id: int = 1
  vision_hidden_size: int = 768
  vision_intermediate_size: int = 3072
  vision_num_hidden_layers: int = 12
  vision_num_attention_heads: int = 12
  vision_num_channels: int = 3
  vision_image_size: int = 224  # the size the position embeddings were learned for
  vision_patch_size: int = 32
  vision_hidden_act: str = "quick_gelu"
  vision_layer_norm_eps: float = 1e-5
  vision_attention_dropout: float = 0.0
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592  # log(1 / 0.07)
  initializer_range: float = 0.02
  head: str | None = None  # None (CLIPModel) | "classification" (CLIPForImageClassification)
  num_labels: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.head not in HEADS:
      raise ValueError(f"unknown head {self.head!r}; known: {HEADS}")
    std = self.initializer_range
    self.vision_model = VisionTower(
        self.vision_hidden_size, self.vision_intermediate_size, self.vision_num_hidden_layers,
        self.vision_num_attention_heads, self.vision_num_channels, self.vision_image_size,
        self.vision_patch_size, self.vision_hidden_act, self.vision_layer_norm_eps,
        self.vision_attention_dropout, dtype=self.dtype, param_dtype=self.param_dtype,
        init_std=std)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              dot_general=dot_2d, kernel_init=nn.initializers.normal(std))
    if self.head == "classification":
      self.classifier = dense(self.num_labels)
      return
    self.text_model = TextTower(
        self.text_vocab_size, self.text_hidden_size, self.text_intermediate_size,
        self.text_num_hidden_layers, self.text_num_attention_heads,
        self.text_max_position_embeddings, self.text_hidden_act, self.text_layer_norm_eps,
        self.text_attention_dropout, self.text_eos_token_id, dtype=self.dtype,
        param_dtype=self.param_dtype, init_std=std)
    self.visual_projection = dense(self.projection_dim, use_bias=False)
    self.text_projection = dense(self.projection_dim, use_bias=False)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(
        self.logit_scale_init_value), (), self.param_dtype)

  def get_image_features(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """[batch, h, w, c] -> projected image embeddings [batch, projection_dim] (unnormalized)."""
    pooled, _ = self.vision_model(images, train=train)
    return self.visual_projection(pooled)

  def get_text_features(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                        *, train: bool = False) -> jax.Array:
    """[batch, seq] ids -> projected text embeddings [batch, projection_dim] (unnormalized)."""
    pooled, _ = self.text_model(input_ids, attention_mask, train=train)
    return self.text_projection(pooled)

  def __call__(self, images: jax.Array, *, input_ids: jax.Array | None = None,
               attention_mask: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Embeds images, and texts when given, and scores every image against every text.

    Args:
      images: [batch, height, width, vision_num_channels].
      input_ids: optional [texts, seq] token ids (CLIPModel only).
      attention_mask: [texts, seq], 1 for tokens and 0 for padding; None means no padding.
      train: enables dropout (needs a 'dropout' rng).
    Returns:
      (out, aux). out: logits_per_image [batch, texts] with texts, else the image features
      [batch, projection_dim]; with head "classification" the logits [batch, num_labels].
      aux: the image tower's "embeddings", "pre_layrnorm", "layer_{i}", "last_hidden_state",
      "pooled"; with the projections "image_features" (get_image_features); with texts
      "text_features", the text tower's intermediates prefixed "text_" ("text_layer_{i}",
      "text_pooled", ...), "logits_per_image" and "logits_per_text"; with the head
      "pre_logits" (mean of the patch tokens) and "logits".
    """
    pooled, aux = self.vision_model(images, train=train)
    if self.head == "classification":
      aux["pre_logits"] = aux["last_hidden_state"][:, 1:].mean(axis=1)
      aux["logits"] = self.classifier(aux["pre_logits"])
      return aux["logits"], aux
    aux["image_features"] = self.visual_projection(pooled)
    if input_ids is None:
      return aux["image_features"], aux
    text_pooled, text_aux = self.text_model(input_ids, attention_mask, train=train)
    aux.update({f"text_{k}": v for k, v in text_aux.items()})
    aux["text_features"] = self.text_projection(text_pooled)
    aux["logits_per_image"] = self.similarity(aux["image_features"], aux["text_features"])
    aux["logits_per_text"] = aux["logits_per_image"].T
    return aux["logits_per_image"], aux

  def similarity(self, image_features: jax.Array, text_features: jax.Array) -> jax.Array:
    """Cosine similarities times exp(logit_scale): [images, d], [texts, d] -> [images, texts]."""
    img, txt = normalize(image_features), normalize(text_features)
    return (img @ txt.T) * jnp.exp(self.logit_scale).astype(img.dtype)


def normalize(x: jax.Array) -> jax.Array:
  """x / ||x||_2 along the last axis (CLIPModel's _get_vector_norm: no epsilon)."""
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


def build(name: str, **kwargs: Any) -> CLIP:
  """The variant `name` of VARIANTS with fields overridden by `kwargs`."""
  if name not in VARIANTS:
    raise ValueError(f"unknown CLIP variant '{name}'; known: {sorted(VARIANTS)}")
  return CLIP(**{**VARIANTS[name], **kwargs})


def dummy_inputs(model: CLIP, batch: int = 1) -> dict[str, Any]:
  """{"x": zero images at vision_image_size} and, for CLIPModel, token ids and a mask."""
  s = model.vision_image_size
  inputs = {"x": jnp.zeros((batch, s, s, model.vision_num_channels), jnp.float32)}
  if model.head is None:
    seq = max(1, min(8, model.text_max_position_embeddings))
    inputs["input_ids"] = jnp.full((batch, seq), model.text_pad_token_id + 1, jnp.int32)
    inputs["attention_mask"] = jnp.ones((batch, seq), jnp.int32)
  return inputs


def prompts(labels: Sequence[str], template: str = PROMPT) -> list[str]:
  """One prompt per label: template.format(label=...)."""
  return [template.format(label=label) for label in labels]


def zero_shot_weights(model: CLIP, variables: Any, input_ids: jax.Array,
                      attention_mask: jax.Array | None = None) -> jax.Array:
  """Normalized text features of tokenized label prompts: the zero-shot classifier.

  Args:
    model, variables: a CLIPModel (head None) and its variables.
    input_ids: [labels, seq] token ids of `prompts(labels)`, tokenized by the checkpoint's
      tokenizer (padded; the end-of-text token present in every row).
    attention_mask: [labels, seq], 1 for tokens, 0 for padding.
  Returns:
    [labels, projection_dim] unit vectors.
  """
  return normalize(model.apply(variables, input_ids, attention_mask,
                               method="get_text_features"))


def zero_shot_logits(model: CLIP, variables: Any, images: jax.Array,
                     weights: jax.Array) -> jax.Array:
  """[batch, h, w, c] images, `zero_shot_weights` -> logits [batch, labels] (softmax: probs).

  The logits are CLIPModel's logits_per_image against the label prompts: cosine similarity
  times exp(logit_scale).
  """
  feats = model.apply(variables, images, method="get_image_features")
  return zero_shot_logits_of_features(variables, feats, weights)


def zero_shot_logits_of_features(variables: Any, image_features: jax.Array,
                                 weights: jax.Array) -> jax.Array:
  """`zero_shot_logits` from projected image features [batch, projection_dim] (unnormalized:
  `get_image_features`, or aux["image_features"] of the forward pass `select` already makes)."""
  scale = jnp.exp(variables["params"]["logit_scale"])
  return (normalize(image_features) @ weights.T) * scale


def zero_shot_classify(model: CLIP, variables: Any, images: jax.Array, labels: Sequence[str],
                       tokenize: Callable[[list[str]], tuple[Any, Any]],
                       template: str = PROMPT) -> jax.Array:
  """Probabilities [batch, len(labels)] that each image shows each label, without training.

  `tokenize(texts) -> (input_ids, attention_mask)`, e.g. from the checkpoint's tokenizer.json.
  """
  ids, mask = tokenize(prompts(labels, template))
  weights = zero_shot_weights(model, variables, jnp.asarray(ids), jnp.asarray(mask))
  return jax.nn.softmax(zero_shot_logits(model, variables, images, weights), axis=-1)


# What a family descriptor needs (jaxpretrain/models/registry.py, to come), stated once.
FAMILY_INFO = {
    "modality": "image",  # fine-tuning and features use the image tower; texts are for zero-shot
    # A new head is CLIPForImageClassification: everything but the image tower is not loaded.
    "heads": [r"params/classifier/.*", r"params/text_model/.*", r"params/text_projection/.*",
              r"params/visual_projection/.*", r"params/logit_scale"],
    "num_classes": {"head": "classification", "field": "num_labels"},
    "pooling": "cls",  # features: aux["pooled"], post_layernorm([CLS]) (text: "eos")
    # openai/clip-vit-base-patch32 preprocessor_config.json: resize shortest edge 224
    # (bicubic), centre crop 224, rescale 1/255, CLIP's mean/std.
    "preprocessing": {"image_size": [224, 224], "mean": [0.48145466, 0.4578275, 0.40821073],
                      "std": [0.26862954, 0.26130258, 0.27577711], "rescale": 1 / 255,
                      "layout": "NHWC"},
    # predict/select baseline without training: zero_shot_classify(model, variables, images,
    # class names, tokenize) with PROMPT.
    "zero_shot": "jaxpretrain.models.clip.zero_shot_classify",
}


# The family descriptor (jaxpretrain/models/registry.py): fine-tuning and features use the
# image tower (CLIPForImageClassification); texts serve zero-shot classification
# (`zero_shot_classify`). A new head leaves the text tower and projections unloaded.
FAMILY = registry.register(registry.Family(
    name="clip", modality="image", build=build, variants=VARIANTS, dummy_inputs=dummy_inputs,
    heads={"classification": registry.Head(
        patterns=tuple(FAMILY_INFO["heads"]),
        set=lambda kw, n: ({**kw, "head": None} if n is None else
                           {**kw, "head": "classification", "num_labels": n}),
        size=lambda kw: kw.get("num_labels") if kw.get("head") == "classification" else None)},
    size_kwarg="vision_image_size",
    preprocessing=lambda model: {"image_size": model.vision_image_size,
                                 "mean": FAMILY_INFO["preprocessing"]["mean"],
                                 "std": FAMILY_INFO["preprocessing"]["std"]},
    ports={"huggingface": "ports.hf_clip"}, hf_model_types=("clip",)))
