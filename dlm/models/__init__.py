"""Diffusion-agnostic backbones."""

from dlm.models.transformer import CanvasCache, KVCache, Transformer

__all__ = ["CanvasCache", "KVCache", "Transformer"]
