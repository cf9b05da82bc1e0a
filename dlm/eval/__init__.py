"""Evaluation: likelihood (NELBO, perplexity bound, bits per byte)."""

from dlm.eval.likelihood import evaluate

__all__ = ["evaluate"]
