"""Eso-LM's sampler: a diffusion phase that reveals about alpha0 of the generated tokens in a random order, then a
sequential phase that fills the rest left to right, one token per model call, with an exact KV cache.

1. Order: the prompt's tokens are clean from the start and come first, in their order; the generated positions
   follow in a uniformly random permutation (one uniform per position). ``rank`` is the position in that order.
2. Diffusion phase on the grid t_i = 1 - i / steps with alpha_t = alpha0 (1 - t) (``HybridSchedule``): step t -> s
   reveals the next Binomial(#masked, (alpha_s - alpha_t) / (1 - alpha_t)) positions of the permutation (all the
   counts are drawn up front, as sums of uniforms < p), each drawn from p_theta(x^l | clean tokens) (SUBS,
   ``sample_categorical``: temperature, top-k, top-p, float64). About alpha0 of the generated tokens are then clean.
3. Sequential phase: the positions still masked, left to right, each from p_theta(x^l | z0, x^{<l}).

The model sees what training showed it (``dlm.objectives.esolm``):
- ``use_cache=False`` (the reference, any variant): every call runs the whole canvas [prompt, generated] under the
  diffusion pass's mask for the current clean set and ranks, or, in the sequential phase, [z0, x] (2L tokens)
  under the sequential pass's mask, and reads the logits of the positions being revealed.
- ``use_cache=True``: each call feeds only the tokens revealed by the previous call (now clean: their keys and
  values are appended to the cache; causal among themselves in rank order, variant A: both ways) and the masks
  revealed now (attending to the cache, the new clean tokens, the masks before them in rank order and themselves;
  not stored). In the sequential phase a call feeds [the token decoded at the previous call, the next mask]. The
  cache is exact: the tokens are those of ``use_cache=False`` for the same seed (the logits agree up to float
  rounding). Variant A's clean tokens attend both ways, so its diffusion phase cannot be cached: it runs as with
  ``use_cache=False``, and the first sequential call feeds every clean token (both ways among themselves).

Rows of a batch reveal different numbers of tokens per step: the fed tokens of each call are padded to the widest
row, padding slots attend only to themselves and are never attended to (``valid`` masks them out of the cache).
"""

from __future__ import annotations

import torch

from dlm.errors import DlmError
from dlm.models.transformer import KVCache
from dlm.noise.schedules import HybridSchedule
from dlm.objectives.esolm import VARIANTS, esolm_diffusion_mask, esolm_sequential_mask
from dlm.objectives.masked import subs_log_probs
from dlm.samplers.batching import end_at_eos
from dlm.samplers.categorical import Generators, sample_categorical, uniform


class AppendFirst:
    """A ``KVCache`` for one call that stores the keys and values of the call's first ``n`` tokens (newly clean)
    and lets all of its tokens attend to the cached ones, its own first n and the rest (masks, not stored)."""

    def __init__(self, cache: KVCache, n: int):
        self.cache, self.n = cache, n

    @property
    def offset(self) -> int:
        return self.cache.length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(layer, k, v, keep=self.n)  # (B, H, T + P + Q, Dh), the first T + P stay


def cached_call_mask(valid: torch.Tensor, new_ok: torch.Tensor, query_ok: torch.Tensor, *,
                     both_ways: bool) -> torch.Tensor:
    """bool [B, P + Q, T + P + Q] of a cached call that feeds P newly clean tokens then Q masks (True = attend).

    valid: [B, T], the real cached keys; new_ok: [B, P] and query_ok: [B, Q], the real fed tokens (the others are
    padding). A new clean token attends the cache and the new clean tokens before it (``both_ways``: all of them);
    a mask attends the cache, every new clean token and the masks before it and itself; padding attends itself."""
    B, T = valid.shape
    P, Q = new_ok.shape[1], query_ok.shape[1]
    dev = valid.device
    a, c = torch.arange(P, device=dev), torch.arange(Q, device=dev)
    new_new = torch.ones(P, P, dtype=torch.bool, device=dev) if both_ways else a[None, :] <= a[:, None]
    new_rows = torch.cat([valid[:, None, :].expand(B, P, T), new_new & new_ok[:, None, :],
                          torch.zeros(B, P, Q, dtype=torch.bool, device=dev)], 2)  # (B, P, T + P + Q)
    query_rows = torch.cat([valid[:, None, :].expand(B, Q, T), new_ok[:, None, :].expand(B, Q, P),
                            (c[None, :] <= c[:, None]) & query_ok[:, None, :]], 2)  # (B, Q, T + P + Q)
    own = torch.zeros(P + Q, T + P + Q, dtype=torch.bool, device=dev)
    own[torch.arange(P + Q, device=dev), T + torch.arange(P + Q, device=dev)] = True
    ok = torch.cat([new_ok, query_ok], 1)  # (B, P + Q)
    return torch.where(ok[:, :, None], torch.cat([new_rows, query_rows], 1), own)


def binomial(n: torch.Tensor, p: float, generator: Generators = None) -> torch.Tensor:
    """Binomial(n_j, p) per row of n [B] (long), as the number of n_j uniforms below p (row j draws n_j)."""
    if p <= 0.0 or n.numel() == 0 or int(n.max()) == 0:
        return torch.zeros_like(n)
    if p >= 1.0:
        return n.clone()
    width = int(n.max())
    start = width - n  # (B,): row j uses its last n_j columns
    u = uniform((n.shape[0], width), generator=generator, device=n.device, rows=n > 0, starts=start)
    cols = torch.arange(width, device=n.device)
    return ((u < p) & (cols[None, :] >= start[:, None])).sum(1)


def _ended(x: torch.Tensor, clean: torch.Tensor, start: int, eos_id: int) -> torch.Tensor:
    """Rows with an ``eos_id`` after ``start`` and no mask before their first one: nothing left to generate."""
    is_eos = (x[:, start:] == eos_id) & clean[:, start:]
    first = is_eos.long().argmax(1)
    cols = torch.arange(is_eos.shape[1], device=x.device)
    return is_eos.any(1) & ~(~clean[:, start:] & (cols[None, :] < first[:, None])).any(1)


@torch.no_grad()
def esolm_generate(
    model,
    prompt: torch.Tensor,
    *,
    mask_id: int,
    alpha0: float,
    variant: str,
    gen_length: int,
    steps: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    use_cache: bool = True,
    eos_id: int | None = None,
    generator: Generators = None,
    history: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """prompt [B, Lp] (no padding) -> (tokens [B, Lp + gen_length], number of model calls).

    ``model(x, None, *, attn_mask, positions, kv_cache=None) -> logits`` is a ``dlm`` Transformer (the cache needs
    ``model.new_cache``; ``use_cache=False`` takes any callable of that signature). ``steps``: diffusion steps; the
    sequential phase adds one call per token it decodes. ``generator``: one for the batch or one per row (a row
    draws only for its own tokens, so its sample does not depend on the batch). With ``eos_id``, a row ends once it
    holds an ``<|endoftext|>`` with no mask before it; everything after it is returned as ``<|endoftext|>``.
    """
    if gen_length <= 0 or steps <= 0:
        raise DlmError("gen_length and steps must be positive")
    if not 0.0 <= alpha0 <= 1.0 or variant not in VARIANTS:
        raise DlmError(f"the esolm sampler needs alpha0 in [0, 1] and variant A or B, got {alpha0} and {variant!r}")
    schedule = HybridSchedule(alpha0)
    B, Lp = prompt.shape
    G, L, dev = gen_length, prompt.shape[1] + gen_length, prompt.device
    x = torch.cat([prompt, torch.full((B, G), mask_id, dtype=prompt.dtype, device=dev)], 1)  # (B, L)
    clean = torch.cat([torch.ones(B, Lp, dtype=torch.bool, device=dev),
                       torch.zeros(B, G, dtype=torch.bool, device=dev)], 1)  # (B, L)
    # 1. the order: the prompt, then a random permutation of the generated positions
    order = Lp + uniform((B, G), generator=generator, device=dev).argsort(1)  # (B, G) positions in reveal order
    rank = torch.arange(L, device=dev).repeat(B, 1)
    rank.scatter_(1, order, Lp + torch.arange(G, device=dev).repeat(B, 1))  # (B, L)
    # 2. how many tokens each diffusion step reveals
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    counts, left = [], torch.full((B,), G, device=dev)
    for i in range(steps):
        alpha_t, alpha_s = schedule.alpha(times[i]), schedule.alpha(times[i + 1])
        counts.append(binomial(left, float((alpha_s - alpha_t) / (1.0 - alpha_t)), generator))
        left = left - counts[-1]

    # the cache holds the prompt, every reveal call's padded width and the sequential phase's tokens (A: every clean
    # token once more), plus one call's masks: within L + G + (the widest reveal of each diffusion step) + G
    widest = sum(int(c.max()) for c in counts)
    cache = model.new_cache(B, L + 2 * G + widest) if use_cache else None
    valid = torch.zeros(B, 0, dtype=torch.bool, device=dev)  # the real keys of the cache
    new_pos = torch.arange(Lp, device=dev).repeat(B, 1)  # (B, P): clean tokens not yet in the cache
    new_ok = torch.ones(B, Lp, dtype=torch.bool, device=dev)
    z0_clean = None  # the clean positions when the sequential phase starts
    nfe = 0

    def log_probs(q_pos: torch.Tensor, q_ok: torch.Tensor) -> torch.Tensor:
        """log p_theta [B, Q, V] (SUBS) at the positions q_pos [B, Q] being revealed, one model call."""
        nonlocal valid, new_pos, new_ok
        if use_cache and (variant == "B" or z0_clean is not None):
            P = new_pos.shape[1]
            tokens = torch.cat([x.gather(1, new_pos), torch.full_like(q_pos, mask_id)], 1)  # (B, P + Q)
            attn_mask = cached_call_mask(valid, new_ok, q_ok, both_ways=variant == "A")
            logits = model(tokens, None, attn_mask=attn_mask, positions=torch.cat([new_pos, q_pos], 1),
                           kv_cache=AppendFirst(cache, P))[:, P:]  # (B, Q, V)
            valid = torch.cat([valid, new_ok], 1)
            new_pos, new_ok = q_pos, q_ok  # clean after this call: into the cache at the next one
        else:
            if z0_clean is None:  # diffusion pass over the canvas
                attn_mask = esolm_diffusion_mask(clean, rank, variant)  # (B, L, L)
                logits = model(x, None, attn_mask=attn_mask, positions=torch.arange(L, device=dev))
            else:  # sequential pass over [z0, x]
                z0 = torch.where(z0_clean, x, mask_id)
                attn_mask = esolm_sequential_mask(z0_clean, rank, variant)  # (B, 2L, 2L)
                logits = model(torch.cat([z0, x], 1), None, attn_mask=attn_mask,
                               positions=torch.arange(L, device=dev).repeat(2))[:, :L]
            logits = logits.gather(1, q_pos[..., None].expand(-1, -1, logits.shape[-1]))  # (B, Q, V)
        return subs_log_probs(logits, mask_id)

    def reveal(q_pos: torch.Tensor, q_ok: torch.Tensor) -> None:
        """Draw the tokens at q_pos [B, Q] where q_ok (right-aligned: a row's real slots are its last ones)."""
        nonlocal nfe
        log_p = log_probs(q_pos, q_ok)
        nfe += 1
        draw = sample_categorical(log_p, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                                  rows=q_ok.any(1), starts=q_ok.shape[1] - q_ok.sum(1))  # (B, Q)
        rows, slots = q_ok.nonzero(as_tuple=True)
        x[rows, q_pos[rows, slots]] = draw[rows, slots]
        clean[rows, q_pos[rows, slots]] = True
        if history is not None:
            history.append(x.clone())

    ended = torch.zeros(B, dtype=torch.bool, device=dev)
    revealed = torch.zeros(B, dtype=torch.long, device=dev)  # generated positions revealed so far
    # 3. diffusion phase: the next counts[i] positions of the order at step i
    for n in counts:
        n = torch.where(ended, 0, n)
        if int(n.max()) == 0:
            continue
        slots = torch.arange(int(n.max()), device=dev)[None, :] - (int(n.max()) - n[:, None])  # (B, Q), < 0: padding
        reveal(order.gather(1, (revealed[:, None] + slots).clamp(0, G - 1)), slots >= 0)
        revealed = revealed + n
        if eos_id is not None:
            ended |= _ended(x, clean, Lp, eos_id)
        if ended.all():
            break
    # 4. sequential phase: the leftmost mask of each row, one per call
    z0_clean = clean.clone()
    if use_cache and variant == "A":  # every clean token, in rank order, into the cache with the first query
        width = int(z0_clean.sum(1).max())
        new_pos = rank.argsort(1)[:, :width]  # positions by rank: the clean ones first
        new_ok = torch.arange(width, device=dev)[None, :] < z0_clean.sum(1, keepdim=True)
    while True:
        todo = (~clean).any(1) & ~ended  # (B,)
        if not todo.any():
            break
        reveal((~clean).long().argmax(1, keepdim=True), todo[:, None])
        if eos_id is not None:
            ended |= _ended(x, clean, Lp, eos_id)
    if eos_id is not None:
        end_at_eos(x, Lp, eos_id)
    return x, nfe
