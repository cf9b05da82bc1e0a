"""Autoregressive sampling with a KV cache (or without, for checking and for models that have none).

The model sees ``<|endoftext|>`` + prompt, as in training (EOS doubles as the start token), and draws one token
per model call, left to right, into the batch's generated region.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import DlmError
from dlm.noise.categorical import sample_categorical
from dlm.samplers.base import SampleBatch, SampleOutput, SamplerConfig, SampleState, report

AR_CACHES = ("kv", "none")


@dataclass(frozen=True)
class ArConfig(SamplerConfig):
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cache: str = "kv"  # kv: prefill once, then one token per call (needs model.new_cache); none: re-run the prefix

    def __post_init__(self):
        super().__post_init__()
        if self.cache not in AR_CACHES:
            raise DlmError(f"unknown cache {self.cache!r} for the ar sampler; choose one of: {', '.join(AR_CACHES)}")


@torch.no_grad()
def ar_generate(model, batch: SampleBatch, config: ArConfig, generators=None, on_step=None) -> SampleOutput:
    """``model(x, attn_mask=, positions=, kv_cache=) -> logits`` (causal) -> the canvas with the generated region
    filled left to right. Without a cache any causal ``model(x) -> logits`` works."""
    if batch.start_id is None:
        raise DlmError("the ar sampler needs a start token: SampleBatch.bos_id or eos_id")
    use_cache = config.cache == "kv"
    B, prompt_len, G = batch.size, batch.prompt_len, batch.gen_length
    x = batch.tokens.clone()
    start = torch.full((B, 1), batch.start_id, dtype=x.dtype, device=x.device)
    seq = torch.cat([start, x], dim=1)  # (B, 1 + L): the model's input is seq[:, :n]
    real = None if batch.real is None else torch.cat([batch.real.new_ones(B, 1), batch.real], dim=1)
    keys, positions = (None, None) if real is None else (real, (real.long().cumsum(1) - 1).clamp_min(0))
    cache = model.new_cache(B, seq.shape[1]) if use_cache else None

    def next_logits(n: int, new_tokens: int) -> torch.Tensor:
        """Logits after token n - 1 of seq, running the new tokens (cache) or the whole prefix."""
        lo = n - new_tokens if use_cache else 0
        kw = {} if keys is None else {"attn_mask": keys[:, None, :n], "positions": positions[:, lo:n]}
        if use_cache:
            kw["kv_cache"] = cache
        return model(seq[:, lo:n], **kw)[:, -1]  # (B, V)

    n = 1 + prompt_len
    logits = next_logits(n, n)
    nfe = 1
    for i in range(G):
        token = sample_categorical(
            logits, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, generator=generators
        )  # (B,)
        seq[:, n] = token
        n += 1
        x = seq[:, 1:]
        committed = torch.arange(x.shape[1], device=x.device)[None, :].expand(B, -1) < n - 1
        if not report(on_step, lambda: SampleState(x, committed, i + 1, nfe, masked=~committed)):
            break
        if i + 1 < G:
            logits = next_logits(n, 1)
            nfe += 1
    return SampleOutput(seq[:, 1:], nfe)
