"""Datasets (offline TFDS builders, user folders/CSV/npz) and grain input pipelines."""

from jaxpretrain.data.builders import BUILDERS, build, default_data_dir, ensure_built
from jaxpretrain.data.loaders import DatasetMeta, load_dataset
from jaxpretrain.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataIterator,
    ImagePreprocess,
    TextPreprocess,
    eval_iterator,
    split_for_devices,
    train_iterator,
)
from jaxpretrain.data.sources import minilm_tokenizer_path

__all__ = [
    "BUILDERS", "DataIterator", "DatasetMeta", "IMAGENET_MEAN", "IMAGENET_STD",
    "ImagePreprocess", "TextPreprocess", "build", "default_data_dir", "ensure_built",
    "eval_iterator", "load_dataset", "minilm_tokenizer_path", "split_for_devices",
    "train_iterator",
]
