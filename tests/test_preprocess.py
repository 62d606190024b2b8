"""jaxpretrain.preprocess against torchvision's transforms and Hugging Face's image processors.

Images: the two photos scikit-learn ships (as arrays, as its JPEG files, and saved again as
PNG) and odd-sized synthetic images in RGB, L and RGBA, some smaller than the crop. The
references get each image as torchvision's ImageFolder loader gives it (`.convert("RGB")`).
Also: old records translate, bad records fail naming the key, and the ports record what
torchvision and Hugging Face apply.
"""

import json
import pathlib

import numpy as np
import PIL.Image
import pytest

from jaxpretrain import preprocess
from jaxpretrain.data import ImagePreprocess
from jaxpretrain.preprocess import PreprocessingError

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
transforms = pytest.importorskip("torchvision.transforms")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

# Errors are measured in [0, 1] pixel units (before dividing by std). References that resize
# with PIL (torchvision's transforms on PIL images, Hugging Face's PIL backend) round to the
# same uint8 values: only float32 rounding of (x / 255 - mean) / std is left.
EXACT_ATOL = 1e-6
# The bound, one uint8 level (plus that rounding): Hugging Face's default
# ViTImageProcessor resizes uint8 tensors with torchvision's own antialiased kernel, which
# rounds some pixels to the neighbouring level (measured: exactly one level at worst).
PIXEL_ATOL = 1 / 255 + EXACT_ATOL
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _photos():
  """The two sklearn photos as arrays, as their JPEG files, and as PNG copies (name, input)."""
  data = sklearn_datasets.load_sample_images()
  out = []
  for array, path in zip(data.images, data.filenames, strict=True):
    out.append((pathlib.Path(path).name + ":array", array))
    out.append((pathlib.Path(path).name, path))
  return out


def _synthetic():
  """Odd sizes, every mode; 150x97 and 31x263 are smaller than the crop on one side."""
  rng = np.random.default_rng(0)
  return [
      ("rgb_301x257", rng.integers(0, 256, (301, 257, 3), np.uint8)),
      ("l_150x97", rng.integers(0, 256, (150, 97), np.uint8)),
      ("rgba_255x333", rng.integers(0, 256, (255, 333, 4), np.uint8)),
      ("l1_31x263", rng.integers(0, 256, (31, 263, 1), np.uint8)),
      ("rgb_17x13", rng.integers(0, 256, (17, 13, 3), np.uint8)),
  ]


def _as_pil(value):
  """What torchvision's ImageFolder loader gives: the decoded image converted to RGB."""
  if isinstance(value, (str, pathlib.Path)):
    with PIL.Image.open(value) as im:
      return im.convert("RGB")
  x = value[..., 0] if value.ndim == 3 and value.shape[-1] == 1 else value
  return PIL.Image.fromarray(x).convert("RGB")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Every test image, with the photos also saved as PNG files and the synthetic ones as PNG."""
  folder = tmp_path_factory.mktemp("images")
  out = _photos() + _synthetic()
  for name, value in list(out):
    if not isinstance(value, str):
      path = folder / f"{name.replace(':', '_')}.png"
      arr = value[..., 0] if value.ndim == 3 and value.shape[-1] == 1 else value
      PIL.Image.fromarray(arr).save(path)
      out.append((path.name, str(path)))
  return out


def _pixel_error(ours, ref_nchw, std):
  """max |ours - ref| in [0, 1] pixel units; ours NHWC, ref NCHW, both normalized."""
  ref = np.transpose(np.asarray(ref_nchw), (1, 2, 0))
  return float((np.abs(ours - ref) * np.asarray(std)).max())


@pytest.mark.parametrize("resize,crop", [(256, 224), (232, 224), (64, 56)])
def test_matches_torchvision_transforms(inputs, resize, crop):
  ref_tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop),
                               transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
  record = preprocess.image_record(shorter=resize, crop=crop, mean=MEAN, std=STD)
  errors = {name: _pixel_error(preprocess.image(record, value), ref_tf(_as_pil(value)), STD)
            for name, value in inputs}
  assert max(errors.values()) <= EXACT_ATOL, errors


def test_torchvision_weights_transforms_and_the_port_record(inputs):
  """ResNet18_Weights.IMAGENET1K_V1.transforms() against what the port records for the file."""
  from ports import torchvision_resnet as tvr  # noqa: PLC0415

  weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
  ref_tf = weights.transforms()
  record = preprocess.normalize_record(tvr.eval_preprocessing(
      "resnet50", pathlib.Path(weights.url).name))
  assert record["resize"] == {"shorter": 232} and record["crop"] == [224, 224]
  for name, value in inputs[:4]:
    ref = ref_tf(_as_pil(value))
    assert _pixel_error(preprocess.image(record, value), ref, STD) <= EXACT_ATOL, name


def test_port_resize_table_matches_torchvision():
  """FILE_RESIZE_SIZE/ARCH_RESIZE_SIZE hold exactly torchvision's non-default transforms."""
  from ports import torchvision_resnet as tvr  # noqa: PLC0415

  for arch in tvr.ARCHS:
    enum = torchvision.models.get_model_weights(arch)
    for w in enum:
      preset = w.transforms()
      stem = pathlib.Path(w.url).name.split(".")[0]
      record = tvr.eval_preprocessing(arch, pathlib.Path(w.url).name)
      assert record["resize"] == {"shorter": preset.resize_size[0]}, stem
      assert record["crop"] == list(preset.crop_size) * 2, stem
      assert preset.interpolation.value == record["interpolation"], stem
      assert list(preset.mean) == record["mean"] and list(preset.std) == record["std"]
    v1 = pathlib.Path(enum.IMAGENET1K_V1.url).name
    assert tvr.eval_preprocessing(arch) == tvr.eval_preprocessing(arch, v1), arch
  record = tvr.eval_preprocessing("resnet18", "mine.pth", resize_size=160, crop_size=128)
  assert record["resize"] == {"shorter": 160} and record["crop"] == [128, 128]


def test_imagenet_class_names_equal_torchvision():
  from torchvision.models._meta import _IMAGENET_CATEGORIES  # noqa: PLC0415

  from ports import torchvision_resnet as tvr  # noqa: PLC0415

  assert tvr.imagenet_classes() == list(_IMAGENET_CATEGORIES)


@pytest.mark.parametrize("config", [
    {"size": {"height": 224, "width": 224}},  # ViTImageProcessor's defaults
    {"size": {"height": 61, "width": 47}, "resample": 3, "image_mean": MEAN, "image_std": STD},
    {"size": {"shortest_edge": 72}, "do_center_crop": True,
     "crop_size": {"height": 64, "width": 63}},
])
def test_matches_hugging_face_vit_image_processor(inputs, config, tmp_path):
  """Both of Hugging Face's backends for bilinear (what ViT checkpoints use); for bicubic only
  the PIL one: the torchvision one is itself 2 levels from it on the noise images (torch's
  uint8 bicubic keeps more precision between its two passes than PIL)."""
  transformers = pytest.importorskip("transformers")
  from ports import hf_vit  # noqa: PLC0415

  transformers.ViTImageProcessor(**config).save_pretrained(tmp_path)
  record = preprocess.normalize_record(hf_vit.folder_preprocessing(tmp_path))
  std = record["std"]
  backends = [(transformers.ViTImageProcessorPil, EXACT_ATOL)]
  if record["interpolation"] == "bilinear":
    backends.append((transformers.ViTImageProcessor, PIXEL_ATOL))
  for cls, atol in backends:
    processor = cls.from_pretrained(tmp_path)
    for name, value in inputs:
      ref = processor(_as_pil(value), return_tensors="np")["pixel_values"][0]
      err = _pixel_error(preprocess.image(record, value), ref, std)
      assert err <= atol, (cls.__name__, name, err)


def test_old_records_translate():
  torchvision_v1 = {"image_size": 224, "resize_size": 256, "interpolation": "bilinear",
                    "layout": "NHWC", "scale": 1 / 255, "mean": MEAN, "std": STD}
  r = preprocess.normalize_record(torchvision_v1)
  assert (r["kind"], r["resize"], r["crop"], r["image_size"]) == (
      "image", {"shorter": 256}, [224, 224], 224)
  job = {"image_size": 32, "channels": 3, "mean": MEAN, "std": STD, "resize": "resize",
         "dataset": "mnist_local", "class_names": ["0", "1"]}
  r = preprocess.normalize_record(job)
  assert (r["resize"], r["crop"], r["channels"]) == ({"size": [32, 32]}, None, 3)
  assert "dataset" not in r and "class_names" not in r  # only the schema's keys
  vit = {"image_size": [16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "rescale": 1 / 255}
  assert preprocess.normalize_record(vit)["resize"] == {"size": [16, 16]}
  text = preprocess.normalize_record({"tokenizer": "tokenizer.json", "max_len": 512,
                                      "pad_token_id": 0})
  assert (text["kind"], text["max_len"], text["pooling"], text["normalize"]) == (
      "text", 512, None, False)
  assert preprocess.normalize_record({}, modality="image", default_size=24)["resize"] == {
      "size": [24, 24]}
  assert preprocess.normalize_record(r) == r  # normalizing twice changes nothing


@pytest.mark.parametrize("bad,key", [
    ({"resize": {"shorter": 0}}, "resize.shorter"),
    ({"resize": {"size": [10**9, 3]}}, "resize.size"),
    ({"resize": {"shorter": 8, "size": [8, 8]}}, "resize"),
    ({"crop": [224]}, "crop"),
    ({"interpolation": "cubic"}, "interpolation"),
    ({"antialias": False}, "antialias"),
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"std": [0.5, 0.0, 0.5]}, "std"),
    ({"rescale": float("nan")}, "rescale"),
    ({"channels": 4}, "channels"),
    ({"crop_offset": "ceil"}, "crop_offset"),
])
def test_bad_image_records_name_the_key(bad, key):
  record = {"kind": "image", "resize": {"size": [8, 8]}, **bad}
  with pytest.raises(PreprocessingError, match=f"^{key}="):
    preprocess.normalize_record(record)


@pytest.mark.parametrize("bad,key", [
    ({"tokenizer": "../../etc/passwd"}, "tokenizer"), ({"max_len": 10**9}, "max_len"),
    ({"max_len": "128"}, "max_len"), ({"pooling": "sum"}, "pooling"),
    ({"normalize": "yes"}, "normalize"),
])
def test_bad_text_records_name_the_key(bad, key):
  with pytest.raises(PreprocessingError, match=f"^{key}="):
    preprocess.normalize_record({"kind": "text", **bad})
  with pytest.raises(PreprocessingError, match="must be a JSON object"):
    preprocess.normalize_record(["not", "a", "dict"])


def test_bad_images_name_the_problem(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(preprocess.ImageError, match="notes.txt: not a readable image"):
    preprocess.open_image(tmp_path / "notes.txt")
  with pytest.raises(preprocess.ImageError, match="dtype float32"):
    preprocess.to_pil(np.zeros((4, 4, 3), np.float32))
  with pytest.raises(preprocess.ImageError, match=r"shape \(4, 4, 2\)"):
    preprocess.to_pil(np.zeros((4, 4, 2), np.uint8))


def test_job_preprocess_uses_the_record_and_keeps_augmentation():
  from ports import torchvision_resnet as tvr  # noqa: PLC0415

  rng = np.random.default_rng(0)
  examples = [{"image": rng.integers(0, 256, (300, 260, 3), np.uint8), "label": 1},
              {"image": rng.integers(0, 256, (28, 28, 1), np.uint8), "label": 2}]
  pre = ImagePreprocess.from_record(tvr.PREPROCESSING)
  out = pre.batch(examples, None)
  assert out["image"].shape == (2, 224, 224, 3) and pre.image_size == 224
  want = np.stack([preprocess.image(pre.record, ex["image"]) for ex in examples])
  np.testing.assert_array_equal(out["image"], want)
  aug = ImagePreprocess.from_record(tvr.PREPROCESSING, crop_padding=8, flip=True)
  bits = np.asarray([1 << 40 | 3, 5 << 20], np.uint64)  # flip + shift, and shift only
  moved = aug.batch(examples, bits)["image"]
  assert moved.shape == out["image"].shape and not np.array_equal(moved, out["image"])
  small = ImagePreprocess.from_record(tvr.PREPROCESSING, image_size=32)  # --image_size
  assert small.record["resize"] == {"size": [32, 32]} and small.record["crop"] is None
  assert small.batch(examples, None)["image"].shape == (2, 32, 32, 3)
  legacy = ImagePreprocess(image_size=16, channels=3)  # the fields still make a record
  assert legacy.record["resize"] == {"size": [16, 16]}


def test_hf_id2label_and_sentence_transformers_folders(tmp_path):
  from ports import hf_bert, hf_common  # noqa: PLC0415
  from ports.rules import PortError  # noqa: PLC0415

  assert hf_common.class_names({"id2label": {"1": "pos", "0": "neg"}}, 2) == ["neg", "pos"]
  assert hf_common.class_names({}, 2) is None
  for bad, match in [({"0": "a", "2": "b"}, "exactly the ids 0..1"),
                     ({"0": "a", "x": "b"}, "not a class id"),
                     ({"0": "a", "1": 7}, "string"), ({"0": "a"}, "exactly the ids 0..1")]:
    with pytest.raises(PortError, match=match):
      hf_common.class_names({"id2label": bad}, 2)

  def st_folder(modules, pooling):
    folder = tmp_path / f"st{len(list(tmp_path.iterdir()))}"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
         for i, (t, p) in enumerate(modules)]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 128, '
                                                      '"do_lower_case": true}')
    return folder

  base = [("Transformer", ""), ("Pooling", "1_Pooling")]
  got = hf_bert.folder_preprocessing(st_folder(base, {"pooling_mode_cls_token": True}))
  assert got == {"max_len": 128, "lowercase": True, "pooling": "cls", "normalize": False}
  got = hf_bert.folder_preprocessing(st_folder(base + [("Normalize", "2_Normalize")],
                                               {"pooling_mode_max_tokens": True}))
  assert (got["pooling"], got["normalize"]) == ("max", True)
  dense = hf_bert.folder_preprocessing(st_folder(base + [("Dense", "2_Dense")],
                                                 {"pooling_mode_mean_tokens": True}))
  assert "pooling" not in dense  # a module jaxpretrain does not port: no embedding recipe
  with pytest.raises(PortError, match="pooling modes"):
    hf_bert.folder_preprocessing(st_folder(base, {"pooling_mode_mean_tokens": True,
                                                  "pooling_mode_max_tokens": True}))
  with pytest.raises(PortError, match="'..'|outside"):
    hf_bert.folder_preprocessing(st_folder([("Pooling", "../../x")], {}))
  assert hf_bert.folder_preprocessing(tmp_path / "nothing") == {}


@pytest.mark.parametrize("config,match", [
    ({"size": {"height": 10**9, "width": 4}}, "resize.size="),
    ({"size": "224"}, "size='224'"),
    ({"do_resize": "yes"}, "do_resize='yes'"),
    ({"resample": 9}, "resample=9"),
    ({"image_mean": [0.5, "x", 0.5]}, "mean="),
    ({"crop_pct": 0.875}, "crop_pct=0.875 is not supported"),
    (["not", "an", "object"], "expected a JSON object"),
])
def test_crafted_preprocessor_configs_fail_naming_the_file(config, match, tmp_path):
  from ports import hf_vit  # noqa: PLC0415
  from ports.rules import PortError  # noqa: PLC0415

  (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
  with pytest.raises(PortError, match=f"preprocessor_config.json: .*{match}"):
    hf_vit.folder_preprocessing(tmp_path)
