"""LLaDA's semi-autoregressive confidence sampler, with Fast-dLLM's caches and threshold decoding.

1. x = prompt + gen_length masks, cut into blocks of ``block_length``; each block gets steps / num_blocks steps.
2. A block with n masks at its start commits floor(n / S) tokens per step, plus one in the first (n mod S) steps
   (LLaDA); or, with ``threshold``, every masked position whose confidence is >= tau, at least one (Fast-dLLM).
3. Each step: logits of the block (with CFG: logits_u + (cfg_scale + 1) (logits_c - logits_u), logits_u from x with
   the prompt masked); candidates x0_hat = argmax(logits + temperature * Gumbel) in float64; confidence from the
   remasking policy; commit the most confident masked positions of the block.
4. Committed tokens never change; blocks run left to right.

Infilling (``SampleBatch.from_canvases``): the generated region runs from the first hole to the end, fixed text
inside it is never a candidate (only masks are), every hole sees both sides; a block with no mask costs nothing.
A time-conditioned model is given the fraction of the holes still masked.

Caches (Fast-dLLM): at the first step of each block the whole canvas runs and its keys and values are stored;
the block's other steps re-run only the block and everything after it (``prefix``) or only the block (``dual``),
reusing the stored keys and values elsewhere. ``none`` runs the whole canvas at every step.

The mask token is never a candidate (SUBS: its logit is set to -inf before the draw); a model trained with SUBS
leaves that logit untrained, and a model that never predicts the mask is unaffected. Random draws are made for the
block only (LLaDA draws them for the whole canvas and uses the block's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlm.errors import DlmError, DlmTypeError
from dlm.models.transformer import CanvasCache
from dlm.noise.categorical import filter_logits, gumbel_noise, uniform
from dlm.noise.schedules import get_schedule
from dlm.registry import Registry
from dlm.samplers.base import MODEL, SampleBatch, SampleOutput, SamplerConfig, SampleState, report

CACHES = ("none", "prefix", "dual")

# Remasking policies: (logits float64 [B, L, V], candidates [B, L], generator, rows) -> confidence [B, L] float64
REMASKING: Registry = Registry("remasking policy")


@REMASKING.register("low_confidence")
def low_confidence(logits: torch.Tensor, x0_hat: torch.Tensor, generator, rows=None) -> torch.Tensor:
    """The model's probability of its own candidate: commit the most certain positions first."""
    return logits.softmax(-1).gather(-1, x0_hat[..., None]).squeeze(-1)


@REMASKING.register("random")
def random_confidence(logits: torch.Tensor, x0_hat: torch.Tensor, generator, rows=None) -> torch.Tensor:
    """Uniform random scores: commit positions in a random order."""
    return uniform(x0_hat.shape, generator=generator, device=x0_hat.device, rows=rows)


def num_transfer_tokens(num_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] masks in a block -> [B, steps] commits per step: floor(n/S), plus one in the first n mod S steps."""
    base, rest = num_masked // steps, num_masked % steps  # (B,)
    return base[:, None] + (torch.arange(steps, device=num_masked.device)[None, :] < rest[:, None]).long()


@REMASKING.register("margin")
def margin_confidence(logits: torch.Tensor, x0_hat: torch.Tensor, generator, rows=None) -> torch.Tensor:
    """Top-1 minus top-2 probability (Dream): commit where the model is least torn between two tokens."""
    top2 = logits.softmax(-1).topk(2, dim=-1).values  # (B, L, 2)
    return top2[..., 0] - top2[..., 1]


@REMASKING.register("entropy")
def negative_entropy(logits: torch.Tensor, x0_hat: torch.Tensor, generator, rows=None) -> torch.Tensor:
    """Negative entropy of the position's distribution (Dream): commit the most peaked positions first."""
    log_p = logits.log_softmax(-1)
    return (log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)


def commit_top_k(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Commit the k[b] most confident positions of each row: bool [B, L] (one sort for the whole batch: the
    positions whose rank in their row's descending order is below k)."""
    order = confidence.argsort(dim=-1, descending=True, stable=True)  # (B, L)
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
    )
    return rank < k[:, None]


def commit_threshold(confidence: torch.Tensor, tau: float) -> torch.Tensor:
    """Fast-dLLM: commit every eligible position with confidence >= tau, and always the most confident one."""
    eligible = confidence.isfinite()  # (B, L)
    chosen = eligible & (confidence >= tau)
    rows = eligible.any(-1)  # rows with something left to commit in the block
    chosen[rows, confidence[rows].argmax(-1)] = True
    return chosen


def check_blocks(gen_length: int, steps: int, block_length: int) -> int:
    """Validate the block layout; return the number of steps per block."""
    if gen_length <= 0 or block_length <= 0 or steps <= 0:
        raise DlmError("gen_length, steps and block_length must be positive")
    if gen_length % block_length:
        raise DlmError(f"gen_length {gen_length} must be divisible by block_length {block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise DlmError(
            f"steps {steps} must be divisible by the number of blocks {num_blocks} (gen_length / block_length)"
        )
    return steps // num_blocks


def _propose(logits, block, mask_id, temperature, top_k, top_p, confidence_of, generator):
    """Candidates for the block [B, K] (the current token where already clean) and their confidence [B, K] (-inf
    where nothing may be committed). Rows with no mask left in the block draw nothing."""
    masked = block == mask_id  # (B, K)
    active = masked.any(1)
    logits = logits.index_fill(-1, torch.tensor([mask_id], device=block.device), float("-inf"))  # SUBS
    if temperature > 0.0:  # argmax(logits / T + G) = argmax(logits + T G): LLaDA's draw, within top-k / top-p
        filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
        x0_hat = (filtered + gumbel_noise(logits.shape, generator=generator, device=block.device, rows=active)).argmax(
            -1
        )
    else:
        x0_hat = logits.argmax(-1)  # (B, K)
    confidence = confidence_of(logits, x0_hat, generator, active)  # (B, K)
    confidence = torch.where(masked, confidence, torch.full_like(confidence, float("-inf")))
    return torch.where(masked, x0_hat, block), confidence  # committed tokens never change


@dataclass(frozen=True)
class ConfidenceConfig(SamplerConfig):
    steps: int | None = None  # denoising steps of the whole generation, a multiple of the blocks (default: one
    #                           per token); with a threshold, the cap
    block_length: int | None = None  # semi-autoregressive blocks (default: one block, pure diffusion)
    temperature: float = 0.0  # LLaDA's default: greedy candidates
    top_k: int = 0
    top_p: float = 1.0
    remasking: str = "low_confidence"  # commit order, see REMASKING
    cfg_scale: float = 0.0  # classifier-free guidance: cond + s (cond - uncond); 0 is the conditional model
    threshold: float | None = None  # Fast-dLLM: commit every position with confidence >= threshold
    cache: str = "none"  # Fast-dLLM's approximate KV cache: none, prefix or dual
    refresh_every: int | None = None  # with a cache: also refresh it every n steps inside a block
    schedule: str = field(default="loglinear", metadata=MODEL)
    time_conditioned: bool = field(default=False, metadata=MODEL)
    logits_shift: bool = field(default=False, metadata=MODEL)  # a cache window then starts one token early

    def __post_init__(self):
        super().__post_init__()
        REMASKING.get(self.remasking)
        if self.cache not in CACHES:
            raise DlmError(
                f"unknown cache {self.cache!r} for the confidence sampler; choose one of: {', '.join(CACHES)}"
            )


@torch.no_grad()
def confidence_sample(
    model, batch: SampleBatch, config: ConfidenceConfig, generators=None, on_step=None
) -> SampleOutput:
    """``model(x [B, L], [t,] attn_mask=, positions=, kv_cache=) -> logits`` -> the denoised canvas; one model
    call per step (CFG: twice the rows in that call)."""
    c = config
    gen_length = batch.gen_length
    block_length = gen_length if c.block_length is None else c.block_length
    steps_per_block = check_blocks(gen_length, c.steps or gen_length, block_length)
    confidence_of = REMASKING.get(c.remasking)
    mask_id, prompt_len = batch.mask_id, batch.prompt_len
    x = batch.tokens.clone()
    B, total = x.shape
    keys, positions = batch.attention()
    hidden = batch.fixed if keys is None else batch.fixed & keys  # what CFG's unconditional rows do not see
    movable = ~batch.fixed  # (B, L) what the sampler may change: the generated region, or the holes
    if c.cfg_scale > 0.0 and keys is not None:
        keys, positions = keys.repeat(2, 1), positions.repeat(2, 1)
    canvas = CanvasCache() if c.cache != "none" else None
    schedule = get_schedule(c.schedule) if c.time_conditioned else None
    nfe, step = 0, 0

    def block_logits(start: int, end: int, refresh: bool) -> torch.Tensor:
        """float64 logits [B, K, V] of the block from one model call."""
        rows = torch.cat([x, torch.where(hidden, mask_id, x)]) if c.cfg_scale > 0.0 else x
        lo, hi = (0, total) if refresh else (start - c.logits_shift, total if c.cache == "prefix" else end)
        kw = {}
        if canvas is not None:
            canvas.window = None if refresh else (lo, hi)
            kw["kv_cache"] = canvas
        if keys is not None:
            kw["attn_mask"], kw["positions"] = keys[:, None, :], positions[:, lo:hi]
        if schedule is None:
            args = (rows[:, lo:hi],)
        else:
            still_masked = ((x == mask_id) & movable).sum(1).double() / movable.sum(1).double()  # (B,) 1 - alpha(t)
            still_masked = still_masked.repeat(rows.shape[0] // B)  # CFG's rows: the conditional rows' time
            args = (rows[:, lo:hi], schedule.time_of(1.0 - still_masked).float())
        logits = model(*args, **kw)[:, start - lo : end - lo].double()
        if c.cfg_scale > 0.0:  # LLaDA's guidance: cond + s (cond - uncond)
            conditional, unconditional = logits.chunk(2, dim=0)
            logits = conditional + c.cfg_scale * (conditional - unconditional)
        return logits

    for b in range(gen_length // block_length):
        start, end = prompt_len + b * block_length, prompt_len + (b + 1) * block_length
        if c.threshold is None:
            commits = num_transfer_tokens((x[:, start:end] == mask_id).sum(1), steps_per_block)  # (B, S)
        stop = False
        for i in range(steps_per_block):
            if not (x[:, start:end] == mask_id).any():
                break  # threshold decoding filled the block early
            refresh = canvas is None or i == 0 or bool(c.refresh_every and i % c.refresh_every == 0)
            logits = block_logits(start, end, refresh)
            nfe, step = nfe + 1, step + 1
            x0_hat, confidence = _propose(
                logits, x[:, start:end], mask_id, c.temperature, c.top_k, c.top_p, confidence_of, generators
            )
            if c.threshold is None:
                chosen = commit_top_k(confidence, commits[:, i])
            elif i == steps_per_block - 1:  # the cap: the block's last step commits what is left
                chosen = confidence.isfinite()
            else:
                chosen = commit_threshold(confidence, c.threshold)
            x[:, start:end] = torch.where(chosen, x0_hat, x[:, start:end])

            def state():
                provisional, score = x.clone(), torch.full(x.shape, float("nan"), dtype=torch.float64)
                open_ = x[:, start:end] == mask_id
                provisional[:, start:end] = torch.where(open_, x0_hat, x[:, start:end])
                score[:, start:end] = torch.where(open_, confidence, float("nan"))
                return SampleState(
                    x, x != mask_id, step, nfe, masked=x == mask_id, provisional=provisional, confidence=score
                )

            if not report(on_step, state):
                stop = True
                break
        if stop:
            break
    return SampleOutput(x, nfe)


def check_generate_inputs(model, prompt, mask_id, gen_length) -> None:
    """``dlm.generate``'s arguments: one-line errors for a prompt that is not [B, Lp] token ids of the model's
    vocabulary, a mask id outside it, or a canvas longer than the model's context."""
    from dlm.models.transformer import check_token_ids, unwrap

    config = getattr(unwrap(model), "config", None)
    vocab, context = getattr(config, "vocab_size", None), getattr(config, "max_seq_len", None)
    check_token_ids(prompt, vocab, "prompt")
    for name, value in (("mask_id", mask_id), ("gen_length", gen_length)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise DlmTypeError(f"{name} must be an int, got {value!r}")
    if gen_length <= 0:
        raise DlmError(f"gen_length must be positive, got {gen_length}")
    if vocab is not None and not 0 <= mask_id < vocab:
        raise DlmError(f"mask_id {mask_id} is outside the model's vocabulary [0, {vocab})")
    if context is not None and prompt.shape[1] + gen_length > context:
        raise DlmError(
            f"prompt ({prompt.shape[1]} tokens) + gen_length ({gen_length}) exceeds the model's context of "
            f"{context} tokens"
        )


def confidence_generate(
    model,
    prompt: torch.Tensor,
    *,
    mask_id: int,
    gen_length: int,
    steps: int | None = None,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    threshold: float | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    cache: str = "none",
    refresh_every: int | None = None,
    prompt_mask=None,
    eos_id: int | None = None,
    schedule=None,
    generator=None,
    history: list | None = None,
) -> torch.Tensor:
    """LLaDA's ``generate``: prompt [B, Lp] -> tokens [B, Lp + gen_length] (``dlm.generate``, the public API; the
    sampler is ``confidence_sample`` under ``run_sampler``).

    ``steps`` (default: gen_length) must be a multiple of gen_length / block_length (default block: the whole
    generation); with ``threshold`` it is the cap. ``cfg_scale`` s >= 0 guides with cond + s (cond - uncond).
    ``prompt_mask`` [B, Lp] marks the real tokens of left-padded prompts; ``eos_id`` ends each row at its first
    ``<|endoftext|>`` (what follows is returned as ``<|endoftext|>``); ``schedule`` (a name) for time-conditioned
    models; ``generator``: one, or one per row; ``history`` (a list) receives the canvas [B, L] after every step."""
    check_generate_inputs(model, prompt, mask_id, gen_length)
    batch = SampleBatch.from_tensor(prompt, gen_length, mask_id=mask_id, prompt_mask=prompt_mask, eos_id=eos_id)
    name = None if schedule is None else getattr(schedule, "name", schedule)
    config = ConfidenceConfig(
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        remasking=remasking,
        cfg_scale=cfg_scale,
        threshold=threshold,
        top_k=top_k,
        top_p=top_p,
        cache=cache,
        refresh_every=refresh_every,
        schedule=name or "loglinear",
        time_conditioned=schedule is not None,
    )
    from dlm.samplers import SAMPLERS
    from dlm.samplers.base import run_sampler

    out = run_sampler(
        SAMPLERS.get("confidence"),
        model,
        batch,
        config,
        generator,
        stop_at_eos=eos_id is not None,
        history=history is not None,
    )
    if history is not None:
        history.extend(torch.stack(states) for states in zip(*out.history))
    return out.tokens
