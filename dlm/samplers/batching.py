"""Batches of prompts of different lengths, and stopping at ``<|endoftext|>``.

Prompts are left-padded, so every row's generated region starts at the same column. The padding is invisible to
the model: padded keys are masked out of attention and RoPE positions count only real tokens. Together with one
generator per row (see ``categorical``) a row's sample is the same in any batch.
"""

from __future__ import annotations

import torch


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (tokens [B, Lmax], real-token mask [B, Lmax]), padding on the left."""
    width = max((len(p) for p in prompts), default=0)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for j, p in enumerate(prompts):
        if p:
            tokens[j, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[j, width - len(p):] = True
    return tokens, mask


def padding_inputs(prompt_mask: torch.Tensor | None, total: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(key mask [B, total], RoPE positions [B, total]) for a canvas whose first columns are the prompt; (None,
    None) when nothing is padded, so the model runs exactly as on unpadded input."""
    if prompt_mask is None or bool(prompt_mask.all()):
        return None, None
    B, lp = prompt_mask.shape
    keys = torch.cat([prompt_mask, prompt_mask.new_ones(B, total - lp)], dim=1)
    return keys, (keys.long().cumsum(1) - 1).clamp_min(0)


def end_at_eos(x: torch.Tensor, start: int, eos_id: int) -> torch.Tensor:
    """Rows of ``x`` holding ``eos_id`` at or after column ``start``: everything after their first one becomes
    ``eos_id`` (in place). Returns which rows ended."""
    is_eos = x[:, start:] == eos_id
    ended = is_eos.any(1)
    first = is_eos.long().argmax(1)  # first EOS column (0 where there is none; those rows are left alone)
    after = torch.arange(x.shape[1] - start, device=x.device)[None, :] > first[:, None]
    x[:, start:] = torch.where(after & ended[:, None], eos_id, x[:, start:])
    return ended


def row_by_row(generate, prompt: torch.Tensor, prompt_mask: torch.Tensor | None, generator, history, *,
               takes_generator_list: bool) -> torch.Tensor:
    """For samplers that cannot run left-padded rows together: ``generate(prompt [1, Lp_j], generator, history) ->
    [1, Lp_j + G]`` on each row's unpadded prompt with its own generator, the rows padded back on the left. A batch
    without padding runs at once when the sampler takes this generator (one, or a list when it takes lists)."""
    padded = prompt_mask is not None and not bool(prompt_mask.all())
    shared = generator is None or isinstance(generator, torch.Generator)
    if not padded and (shared or takes_generator_list):
        return generate(prompt, generator, history)
    rows = []
    for j in range(prompt.shape[0]):
        real = torch.ones_like(prompt[j], dtype=torch.bool) if prompt_mask is None else prompt_mask[j]
        out = generate(prompt[j : j + 1, real], generator if shared else generator[j], history if j == 0 else None)
        rows.append(torch.cat([prompt[j : j + 1, ~real], out], dim=1))
    return torch.cat(rows)
