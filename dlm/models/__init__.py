"""Diffusion-agnostic backbones."""

from dlm.models.transformer import CanvasCache, KVCache, Transformer, call_method, unwrap

__all__ = ["CanvasCache", "KVCache", "Transformer", "call_method", "unwrap"]
