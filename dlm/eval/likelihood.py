"""Likelihood on a held-out split: nats per token, perplexity (exact for AR, an upper bound for diffusion) and
bits per byte of the decoded text (comparable across tokenizers).

Deterministic for a given seed: the Monte Carlo draws of batch k come from a generator seeded with (seed, k),
whatever the number of processes.
"""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext

import torch

from dlm.data.packing import PackedDataset
from dlm.data.tokenizer import Tokenizer
from dlm.objectives.base import Objective
from dlm.train.distributed import DistInfo, all_reduce_sum


def batch_seed(seed: int, k: int) -> int:
    """The seed of the Monte Carlo generator of batch ``k`` (also the lm-eval adapter's, so the two agree)."""
    return seed * 1_000_003 + k


@torch.no_grad()
def evaluate(
    model,
    objective: Objective,
    dataset: PackedDataset,
    tokenizer: Tokenizer,
    *,
    num_samples: int = 4,
    seed: int = 0,
    max_sequences: int | None = None,
    batch_size: int = 16,
    dist_info: DistInfo | None = None,
    autocast=nullcontext,
) -> dict:
    """The report of ``dlm eval`` over the first ``max_sequences`` sequences (all by default): nats_per_token,
    ppl, bits_per_byte, tokens, mc_draws, is_bound. ``objective`` is a built one (``OBJECTIVES.build(run_config,
    tokenizer)``): its ``nll`` scores each batch. Batches are shared out over the processes of a DDP run."""
    info = dist_info or DistInfo()
    device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    n = len(dataset) if max_sequences is None else min(max_sequences, len(dataset))
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    total = torch.zeros((), dtype=torch.float64, device=device)
    # FSDP: every process must call the model as often as the others (each call gathers weights from all): one
    # past the last batch scores the last batch again and drops the result
    fsdp = sys.modules.get("torch.distributed.fsdp")  # (not imported: no FSDP model)
    lockstep = fsdp is not None and isinstance(model, fsdp.FSDPModule)
    rounds = -(-len(batches) // info.world_size) * info.world_size if lockstep else len(batches)
    for k in range(info.rank, rounds, info.world_size):
        x0 = dataset.batch(batches[min(k, len(batches) - 1)]).to(device)
        generator = torch.Generator(device=device).manual_seed(batch_seed(seed, k))
        with autocast():
            nll = objective.nll(model, x0, num_samples, generator)  # (B,) nats per sequence
        if k < len(batches):
            total += nll.double().sum()
    total = all_reduce_sum(total, info).item()
    if was_training:
        model.train()
    tokens = n * dataset.seq_len
    text_bytes = len(tokenizer.decode(dataset.tokens[:tokens]).encode("utf-8"))
    nats = total / tokens
    return {
        "objective": objective.name,
        "nats_per_token": nats,
        "ppl": math.exp(nats) if nats < 700 else math.inf,  # a loose bound early in training can exceed e^709
        "bits_per_byte": total / math.log(2) / max(1, text_bytes),
        "is_bound": objective.is_bound,
        "tokens": tokens,
        "sequences": n,
        "bytes": text_bytes,
        "mc_draws": num_samples if objective.is_bound else 0,
        "seed": seed,
    }
