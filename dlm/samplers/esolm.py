"""Eso-LM's sampler: a diffusion phase that reveals about alpha0 of the generated tokens in a random order, then a
sequential phase that fills the rest left to right, one token per model call, with an exact KV cache.

1. Order: the prompt's tokens are clean from the start and come first, in their order; the generated positions
   follow in a uniformly random permutation (one uniform per position). ``rank`` is the position in that order.
2. Diffusion phase on the grid t_i = 1 - i / steps with alpha_t = alpha0 (1 - t) (``HybridSchedule``): step t -> s
   reveals the next Binomial(#masked, (alpha_s - alpha_t) / (1 - alpha_t)) positions of the permutation (all the
   counts are drawn up front, as sums of uniforms < p), each drawn from p_theta(x^l | clean tokens) (SUBS,
   ``sample_categorical``: temperature, top-k, top-p, float64). About alpha0 of the generated tokens are then clean.
3. Sequential phase: the positions still masked, left to right, each from p_theta(x^l | z0, x^{<l}).

The model sees what training showed it (the masks of ``dlm.noise.hybrid``, which the objective uses too):
- ``cache="none"`` (the reference, any variant): every call runs the whole canvas [prompt, generated] under the
  diffusion pass's mask for the current clean set and ranks, or, in the sequential phase, [z0, x] (2L tokens)
  under the sequential pass's mask, and reads the logits of the positions being revealed.
- ``cache="kv"`` (default): each call feeds only the tokens revealed by the previous call (now clean: their keys and
  values are appended to the cache; causal among themselves in rank order, variant A: both ways) and the masks
  revealed now (attending to the cache, the new clean tokens, the masks before them in rank order and themselves;
  not stored). In the sequential phase a call feeds [the token decoded at the previous call, the next mask]. The
  cache is exact: the tokens are those of ``cache="none"`` for the same seed (the logits agree up to float
  rounding). Variant A's clean tokens attend both ways, so its diffusion phase cannot be cached: it runs as with
  ``cache="none"``, and the first sequential call feeds every clean token (both ways among themselves).

Rows of a batch reveal different numbers of tokens per step: the fed tokens of each call are padded to the widest
row, padding slots attend only to themselves and are never attended to (``valid`` masks them out of the cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlm.errors import DlmError
from dlm.models.transformer import KVCache
from dlm.noise.categorical import Generators, sample_categorical, uniform
from dlm.noise.hybrid import VARIANTS, HybridSchedule, esolm_diffusion_mask, esolm_sequential_mask
from dlm.noise.masked import MaskedProcess
from dlm.samplers.base import MODEL, SampleBatch, SampleOutput, SamplerConfig, SampleState, report

ESOLM_CACHES = ("kv", "none")


@dataclass(frozen=True)
class EsolmConfig(SamplerConfig):
    steps: int | None = None  # denoising steps of the whole generation, in expectation (default: one per token)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cache: str = "kv"  # kv: the exact KV cache (variant A: sequential phase only); none: every call runs all
    alpha0: float | None = field(default=None, metadata=MODEL)
    variant: str | None = field(default=None, metadata=MODEL)

    def __post_init__(self):
        super().__post_init__()
        if self.cache not in ESOLM_CACHES:
            raise DlmError(
                f"unknown cache {self.cache!r} for the esolm sampler; choose one of: {', '.join(ESOLM_CACHES)}"
            )
        if self.alpha0 is None or self.variant is None:
            raise DlmError(
                "the esolm sampler needs the model's alpha0 and variant: sample a model trained with --objective esolm"
            )
        if not 0.0 <= self.alpha0 <= 1.0 or self.variant not in VARIANTS:
            raise DlmError(
                f"the esolm sampler needs alpha0 in [0, 1] and variant A or B, got {self.alpha0} and {self.variant!r}"
            )

    def diffusion_steps(self, gen_length: int) -> int:
        """The diffusion phase's share of ``steps``: the sequential phase takes one step per token left masked,
        (1 - alpha0) gen_length in expectation."""
        steps = self.steps or gen_length
        return max(1, steps - round((1.0 - self.alpha0) * gen_length))


class AppendFirst:
    """A ``KVCache`` for one call that stores the keys and values of the call's first ``n`` tokens (newly clean)
    and lets all of its tokens attend to the cached ones, its own first n and the rest (masks, not stored)."""

    def __init__(self, cache: KVCache, n: int):
        self.cache, self.n = cache, n

    @property
    def offset(self) -> int:
        return self.cache.length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(layer, k, v, keep=self.n)  # (B, H, T + P + Q, Dh); the first n stay stored


def cached_call_mask(
    valid: torch.Tensor, new_ok: torch.Tensor, query_ok: torch.Tensor, *, both_ways: bool
) -> torch.Tensor:
    """bool [B, P + Q, T + P + Q] of a cached call that feeds P newly clean tokens then Q masks (True = attend).

    valid: [B, T], the real cached keys; new_ok: [B, P] and query_ok: [B, Q], the real fed tokens (the others are
    padding). A new clean token attends the cache and the new clean tokens before it (``both_ways``: all of them);
    a mask attends the cache, every new clean token and the masks before it and itself; padding attends itself."""
    B, T = valid.shape
    P, Q = new_ok.shape[1], query_ok.shape[1]
    dev = valid.device
    a, c = torch.arange(P, device=dev), torch.arange(Q, device=dev)
    new_new = torch.ones(P, P, dtype=torch.bool, device=dev) if both_ways else a[None, :] <= a[:, None]
    new_rows = torch.cat(
        [
            valid[:, None, :].expand(B, P, T),
            new_new & new_ok[:, None, :],
            torch.zeros(B, P, Q, dtype=torch.bool, device=dev),
        ],
        2,
    )  # (B, P, T + P + Q)
    query_rows = torch.cat(
        [
            valid[:, None, :].expand(B, Q, T),
            new_ok[:, None, :].expand(B, Q, P),
            (c[None, :] <= c[:, None]) & query_ok[:, None, :],
        ],
        2,
    )  # (B, Q, T + P + Q)
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


@torch.no_grad()
def esolm_generate(model, batch: SampleBatch, config: EsolmConfig, generators=None, on_step=None) -> SampleOutput:
    """An unpadded batch -> the canvas. ``model(x, None, *, attn_mask, positions, kv_cache=None) -> logits``
    (the cache needs ``model.new_cache``; ``cache="none"`` takes any callable of that signature). A row draws only
    for its own tokens, so with one generator per row its sample does not depend on the batch."""
    alpha0, variant, generator = config.alpha0, config.variant, generators
    temperature, top_k, top_p = config.temperature, config.top_k, config.top_p
    use_cache, mask_id, prompt = config.cache == "kv", batch.mask_id, batch.prompt
    gen_length, steps = batch.gen_length, config.diffusion_steps(batch.gen_length)
    process = MaskedProcess(HybridSchedule(alpha0), mask_id)
    B, Lp = prompt.shape
    G, L, dev = gen_length, prompt.shape[1] + gen_length, prompt.device
    x = torch.cat([prompt, torch.full((B, G), mask_id, dtype=prompt.dtype, device=dev)], 1)  # (B, L)
    clean = torch.cat(
        [torch.ones(B, Lp, dtype=torch.bool, device=dev), torch.zeros(B, G, dtype=torch.bool, device=dev)], 1
    )  # (B, L)
    # 1. the order: the prompt, then a random permutation of the generated positions
    order = Lp + uniform((B, G), generator=generator, device=dev).argsort(1)  # (B, G) positions in reveal order
    rank = torch.arange(L, device=dev).repeat(B, 1)
    rank.scatter_(1, order, Lp + torch.arange(G, device=dev).repeat(B, 1))  # (B, L)
    # 2. how many tokens each diffusion step reveals
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    counts, left = [], torch.full((B,), G, device=dev)
    for i in range(steps):
        counts.append(binomial(left, float(process.reveal_prob(times[i + 1], times[i])), generator))
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
            logits = model(
                tokens,
                None,
                attn_mask=attn_mask,
                positions=torch.cat([new_pos, q_pos], 1),
                kv_cache=AppendFirst(cache, P),
            )[:, P:]  # (B, Q, V)
            valid = torch.cat([valid, new_ok], 1)
            new_pos, new_ok = q_pos, q_ok  # clean after this call: into the cache at the next one
        else:
            if z0_clean is None:  # diffusion pass over the canvas
                attn_mask = esolm_diffusion_mask(clean, rank, variant)  # (B, L, L)
                logits = model(x, None, attn_mask=attn_mask, positions=torch.arange(L, device=dev))
            else:  # sequential pass over [z0, x]
                z0 = torch.where(z0_clean, x, mask_id)
                attn_mask = esolm_sequential_mask(z0_clean, rank, variant)  # (B, 2L, 2L)
                logits = model(
                    torch.cat([z0, x], 1), None, attn_mask=attn_mask, positions=torch.arange(L, device=dev).repeat(2)
                )[:, :L]
            logits = logits.gather(1, q_pos[..., None].expand(-1, -1, logits.shape[-1]))  # (B, Q, V)
        return process.log_probs(logits)

    def reveal(q_pos: torch.Tensor, q_ok: torch.Tensor) -> bool:
        """Draw the tokens at q_pos [B, Q] where q_ok (right-aligned: a row's real slots are its last ones); False
        when ``on_step`` says stop."""
        nonlocal nfe
        log_p = log_probs(q_pos, q_ok)
        nfe += 1
        draw = sample_categorical(
            log_p,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            rows=q_ok.any(1),
            starts=q_ok.shape[1] - q_ok.sum(1),
        )  # (B, Q)
        rows, slots = q_ok.nonzero(as_tuple=True)
        x[rows, q_pos[rows, slots]] = draw[rows, slots]
        clean[rows, q_pos[rows, slots]] = True
        return report(on_step, lambda: SampleState(x, clean.clone(), nfe, nfe, masked=~clean))

    revealed = torch.zeros(B, dtype=torch.long, device=dev)  # generated positions revealed so far
    # 3. diffusion phase: the next counts[i] positions of the order at step i
    for n in counts:
        if int(n.max()) == 0:
            continue
        slots = torch.arange(int(n.max()), device=dev)[None, :] - (int(n.max()) - n[:, None])  # (B, Q), < 0: padding
        if not reveal(order.gather(1, (revealed[:, None] + slots).clamp(0, G - 1)), slots >= 0):
            return SampleOutput(x, nfe)
        revealed = revealed + n
    # 4. sequential phase: the leftmost mask of each row, one per call
    z0_clean = clean.clone()
    if use_cache and variant == "A":  # every clean token, in rank order, into the cache with the first query
        width = int(z0_clean.sum(1).max())
        new_pos = rank.argsort(1)[:, :width]  # positions by rank: the clean ones first
        new_ok = torch.arange(width, device=dev)[None, :] < z0_clean.sum(1, keepdim=True)
    while True:
        todo = (~clean).any(1)  # (B,)
        if not todo.any() or not reveal((~clean).long().argmax(1, keepdim=True), todo[:, None]):
            break
    return SampleOutput(x, nfe)
