"""Adaptation: start a training run from a pretrained model (``dlm train --init SOURCE``).

    dlm train --init models/SmolLM2-135M-Instruct --objective mdlm --max-steps 400 --out runs/smol-mdlm

The run keeps the source's shape and tokenizer. From an AR source to a diffusion objective the attention becomes
bidirectional and, by default, the prediction is shifted as in Dream (``model.logits_shift``: the logits at i - 1
score token i), so the starting point keeps the AR model's next-token knowledge; ``--set model.logits_shift=false``
predicts each token at its own position instead. A tokenizer without a mask token gets one (``<|mask|>``, the next
free id): the embedding table and head grow by a row when the model has no spare one, initialised to the mean of
the existing rows (the mask is an "unknown token", the average of what it might be).

``train.anneal_steps`` K > 0 anneals the attention from causal to full over the first K steps (DiffuLLaMA): at step
s every query attends to the keys before it and to each later key with probability s / K, drawn afresh every
micro-batch (``AnnealedAttention``); from step K on it is the model's own bidirectional attention.

``--set model.clean_causal=true`` (``dlm train --clean-causal``) adapts to clean-causal attention instead: an unmasked
token keeps attending causally to the unmasked tokens before it, and a masked token attends to every unmasked token
(both sides) and to itself. The source's causal view of the text it has is left intact, so a short adaptation keeps
far more of its English than full attention does (docs/REAL_MODELS.md, ``adapt_attention``); no annealing needed.
"""

from __future__ import annotations

import torch

from dlm.config import RunConfig
from dlm.errors import DlmError


def init_config(run_config: RunConfig, source: str) -> RunConfig:
    """Fit ``run_config`` to the source model before overrides: its model shape (and, from an AR source to a
    diffusion objective, ``logits_shift``), ``train.init`` = source."""
    from dlm.loader import load_config
    from dlm.objectives import OBJECTIVES

    src = load_config(source)
    objective = OBJECTIVES.get(run_config.train.objective)
    model = src.model
    if src.train.objective == "ar" and not objective.causal:
        model.logits_shift = objective.shifts  # Dream's shifted prediction, where the objective takes it
    model.causal = objective.causal
    run_config.model, run_config.train.init = model, str(source)
    run_config.preset = "init"
    return run_config


def init_model(run_config: RunConfig, device):
    """The source model of ``run_config.train.init`` and its tokenizer, fitted to the run: a mask token added when
    the objective needs one, the vocabulary grown to hold it. Returns (model, tokenizer); sets
    ``run_config.model.vocab_size``."""
    from dlm.loader import load
    from dlm.models.transformer import Transformer

    source, tokenizer, src_cfg = load(run_config.train.init, dtype="fp32")
    if tokenizer is None:
        raise DlmError(f"{run_config.train.init} has no tokenizer.json; adaptation keeps the source's tokenizer")
    if run_config.train.objective != "ar" and tokenizer.mask_id is None:
        tokenizer.add_mask_token()
    cfg = run_config.model
    shape = ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "arch", "qkv_bias", "tie_embeddings")
    changed = [k for k in shape if getattr(cfg, k) != getattr(src_cfg.model, k)]
    if changed:
        raise DlmError(f"--init keeps the source's shape; model.{changed[0]} cannot be changed")
    cfg.vocab_size = max(src_cfg.model.vocab_size, tokenizer.vocab_size)
    set_mask_id(cfg, tokenizer)
    state = source.state_dict()
    grow = cfg.vocab_size - src_cfg.model.vocab_size
    if grow > 0:
        for key in ("embed.weight", "head.weight"):
            if key in state:
                rows = state[key]
                state[key] = torch.cat([rows, rows.mean(0, keepdim=True).expand(grow, -1)])
    model = Transformer(cfg)
    model.load_state_dict(state)
    return model.to(device), tokenizer


def set_mask_id(model_config, tokenizer) -> None:
    """A clean-causal model (``model.clean_causal``) reads which tokens are masked: give it the tokenizer's mask id."""
    if model_config.clean_causal:
        if tokenizer.mask_id is None:
            raise DlmError("model.clean_causal needs a tokenizer with a mask token")
        model_config.mask_id = tokenizer.mask_id


class AnnealedAttention:
    """``model`` called with DiffuLLaMA's annealed mask: causal, plus each later key with probability ``ratio``
    (one [L, L] draw per call from ``generator``, shared by the batch and the heads). Other calls go through."""

    def __init__(self, model, ratio: float, generator: torch.Generator):
        self.model, self.ratio, self.generator = model, ratio, generator

    def __call__(self, x, t=None, **kw):
        if kw.get("attn_mask") is not None or kw.get("causal") is not None:
            return self.model(x, t, **kw)
        L = x.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        later = torch.rand((L, L), generator=self.generator, device=x.device) < self.ratio
        return self.model(x, t, attn_mask=causal | later, **kw)


def anneal_ratio(step: int, anneal_steps: int) -> float:
    """The share of later keys attended to at ``step``: step / K, 1 from K on (and without annealing)."""
    return 1.0 if anneal_steps <= 0 else min(1.0, step / anneal_steps)
