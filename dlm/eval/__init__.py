"""Evaluation: likelihood (NELBO, perplexity bound, bits per byte)."""

from dlm.eval.likelihood import evaluate, sequence_nlls

__all__ = ["evaluate", "sequence_nlls"]
