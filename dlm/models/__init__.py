"""Diffusion-agnostic backbones."""

from dlm.models.transformer import KVCache, Transformer

__all__ = ["KVCache", "Transformer"]
