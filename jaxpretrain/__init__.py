"""jaxpretrain: pretrained vision and language models in JAX — port, fine-tune, choose."""

from jaxpretrain.api import Pretrained, load
from jaxpretrain.pretrained import load_pretrained, save_pretrained

__all__ = ["Pretrained", "load", "load_pretrained", "save_pretrained"]
