"""jaxpretrain: pretrained vision and language models in JAX — port, fine-tune, choose."""

from jaxpretrain.pretrained import load_pretrained, save_pretrained

__all__ = ["load_pretrained", "save_pretrained"]
