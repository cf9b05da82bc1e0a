"""Helpers shared by the test files: the CLI as a subprocess, and a small Transformer with context-dependent draws."""

from __future__ import annotations

import subprocess
import sys

import torch

from dlm.config import ModelConfig
from dlm.models.transformer import Transformer


def dlm(*args, check=True):
    """Run ``python -m dlm.cli ARGS``; with ``check``, a failure raises with the end of its stderr."""
    proc = subprocess.run([sys.executable, "-m", "dlm.cli", *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dlm {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    return proc


def sharp_transformer(seed=0, vocab=32):
    """A random bidirectional 2-layer Transformer whose head is scaled up from the 0.02 init, so that its draws
    depend on the context (for cached == uncached sampler tests)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    return model


def sample(
    name,
    model,
    prompt,
    *,
    mask_id,
    gen_length,
    prompt_mask=None,
    generator=None,
    eos_id=None,
    pad_id=None,
    stop_at_eos=False,
    history=False,
    on_step=None,
    **config,
):
    """Run the registered sampler ``name`` through ``run_sampler`` on a prompt tensor [B, Lp] (``prompt_mask``: its
    real tokens, left-padded); ``config``: the sampler config's fields (options and model facts alike).
    Returns the ``SampleOutput`` (tokens, nfe, history)."""
    from dlm.samplers import SAMPLERS, SampleBatch, run_sampler

    entry = SAMPLERS.get(name)
    batch = SampleBatch.from_tensor(
        prompt, gen_length, mask_id=mask_id, prompt_mask=prompt_mask, eos_id=eos_id, pad_id=pad_id
    )
    return run_sampler(
        entry, model, batch, entry.config(**config), generator, on_step, stop_at_eos=stop_at_eos, history=history
    )


def left_pad(prompts, pad_id):
    """Token lists -> (tokens [B, Lmax], real-token mask [B, Lmax]), padding on the left."""
    from dlm.samplers import SampleBatch

    batch = SampleBatch.from_prompts(prompts, 1, mask_id=pad_id, pad_id=pad_id)
    real = torch.ones_like(batch.prompt, dtype=torch.bool) if batch.real is None else batch.real[:, :-1]
    return batch.prompt, real


# --- exact models of the toy distribution (tests/toy.py), shared by the per-method tests and the contract suite ---


def absorb_ratios(toy):
    """SEDD, absorbing graph: logits whose SEDD scaling gives the toy's exact ratios, log(V - 1) + log p(x0^l = y |
    xt) (``model(xt, t) -> [B, L, vocab]``)."""
    import math

    return lambda xt, t=None, **_: toy.denoiser(xt).double() + math.log(toy.vocab - 1)


def uniform_ratios(toy, N, schedule="loglinear"):
    """SEDD, uniform graph over N ids: the toy's exact log p_t(xt with x^l = y) / p_t(xt) [B, L, N], by enumerating
    its support: p_t(x) = sum_x0 p(x0) prod_l (alpha [x^l = x0^l] + (1 - alpha) / N)."""
    from dlm.noise import get_schedule

    schedule = get_schedule(schedule)

    def log_marginal(x, alpha):  # x [B, M, L], alpha [B] -> log p_t(x) [B, M]
        # prod_l (alpha [x^l = x0^l] + (1 - alpha) / N) = ((1 - alpha) / N)^L (1 + alpha N / (1 - alpha))^matches
        matches = (x[:, :, None, :] == toy.seqs[None, None]).sum(-1).double()  # (B, M, S)
        a = alpha[:, None, None]
        log_q = x.shape[-1] * torch.log((1 - a) / N) + matches * torch.log1p(a * N / (1 - a))  # (B, M, S)
        return (log_q + toy.p.log()).logsumexp(-1)

    def model(xt, t, **_):
        alpha = schedule.alpha(t.double()).expand(xt.shape[0])  # (B,)
        B, L = xt.shape
        base = log_marginal(xt[:, None], alpha)  # (B, 1)
        out = torch.empty(B, L, N, dtype=torch.float64)
        for pos in range(L):
            edits = xt[:, None, :].repeat(1, N, 1)  # (B, N, L)
            edits[:, :, pos] = torch.arange(N)
            out[:, pos] = log_marginal(edits, alpha) - base
        return out

    return model


def uniform_x0_denoiser(toy, N, schedule="loglinear"):
    """UDLM: the exact x0 denoiser of the uniform process over N ids, x_theta(xt, t)_l = p(x0^l | xt^{-l}) as logits
    [B, L, N] (each position's conditional given the other noisy tokens, by enumerating the toy's support)."""
    from dlm.noise import get_schedule

    schedule = get_schedule(schedule)

    def model(xt, t, **_):
        alpha = schedule.alpha(t.double()).expand(xt.shape[0])[:, None, None, None]  # (B, 1, 1, 1)
        same = (xt[:, None, None, :] == toy.seqs[None, :, None, :]).double()  # (B, S, 1, L)
        kernel = alpha * same + (1 - alpha) / N  # (B, S, 1, L): q_t(xt^j | x0^j)
        L = xt.shape[1]
        others = ~torch.eye(L, dtype=torch.bool)  # (L, L): row l leaves position l out
        like = torch.where(others[None, None], kernel, torch.ones_like(kernel)).prod(-1)  # (B, S, L)
        w = toy.p[None, :, None] * like  # (B, S, L): p(x0) prod_{j != l} q_t(xt^j | x0^j)
        onehot = torch.nn.functional.one_hot(toy.seqs, N).double()  # (S, L, N)
        probs = torch.einsum("bsl,slv->blv", w, onehot) / w.sum(1)[..., None]
        return probs.clamp_min(1e-30).log()

    return model


def ar_oracle(toy):
    """AR: the toy's exact conditionals p(x^l | x^{<l}) as logits [B, n, vocab] for inputs [eos, x^0 .. x^{n-2}]
    (``toy.next_token`` vectorised over the batch: the masked denoiser with everything from l on masked)."""

    def model(inputs, **_):
        assert torch.all(inputs[:, 0] == toy.eos_id), "AR inputs must start with the EOS start token"
        B, n = inputs.shape
        out = []
        for l in range(n):
            canvas = torch.full((B, toy.L), toy.mask_id)
            canvas[:, :l] = inputs[:, 1 : l + 1]
            out.append(toy.denoiser(canvas)[:, l])
        return torch.stack(out, 1)

    return model


def esolm_oracle(toy, wrong: float = 0.0):
    """Eso-LM: the exact model of the toy that honours the attention mask: query row i (original position
    positions[i]) sees the tokens of the columns it attends to that are not the mask and returns log p(x^{pos_i} = v
    | those). ``wrong`` > 0 tempers the answer towards uniform (a deliberately wrong model)."""

    def model(x, t=None, *, attn_mask, positions, **_):
        assert t is None
        B, Lx = x.shape
        attn_mask = attn_mask.expand(B, Lx, Lx)
        positions = positions.expand(B, Lx) if positions.dim() == 1 else positions
        visible = attn_mask & (x != toy.mask_id)[:, None, :]  # (B, Lq, Lk)
        canvas = torch.full((B, Lx, toy.L), toy.mask_id)  # per query: the tokens it sees, at their positions
        for j in range(Lx):
            slot = canvas.gather(2, positions[:, None, j : j + 1].expand(B, Lx, 1))
            canvas.scatter_(
                2,
                positions[:, None, j : j + 1].expand(B, Lx, 1),
                torch.where(visible[:, :, j : j + 1], x[:, None, j : j + 1].expand(B, Lx, 1), slot),
            )
        logits = toy.denoiser(canvas.view(B * Lx, toy.L)).view(B, Lx, toy.L, toy.vocab)
        out = logits.gather(2, positions[:, :, None, None].expand(B, Lx, 1, toy.vocab)).squeeze(2)  # (B, Lx, V)
        return out * (1.0 - wrong)

    return model


def block_oracle(toy, block_size: int):
    """BD3-LM, the block sampler without a cache: for [clean blocks < b, noisy block b] under the block-causal mask,
    the toy's exact p(x0^l | xt^b, x0^{<b}) at every position (``model(x, t=None, *, attn_mask) -> [B, n, vocab]``)."""
    from dlm.noise.block import block_causal_mask

    def model(x, t=None, *, attn_mask, **_):
        assert torch.equal(attn_mask, block_causal_mask(x.shape[1], block_size))
        canvas = torch.cat([x, torch.full((x.shape[0], toy.L - x.shape[1]), toy.mask_id)], 1)
        return toy.denoiser(canvas)[:, : x.shape[1]]

    return model


def bd3_oracle(toy, block_size: int):
    """BD3-LM, the NELBO's 2L input [xt | x0] under ``bd3_attention_mask``: at an xt position of block b, the toy's
    exact p(x0^l | xt^b, x0^{<b}) (``model(x, t=None, *, attn_mask, positions) -> [B, 2L, vocab]``; the x0 half's
    logits are never read)."""
    from dlm.noise.block import bd3_attention_mask

    L = toy.L

    def model(x, t=None, *, attn_mask, positions, **_):
        assert t is None and torch.equal(attn_mask, bd3_attention_mask(L, block_size))
        assert torch.equal(positions, torch.arange(L).repeat(2))
        xt, x0 = x[:, :L], x[:, L:]
        logits = torch.zeros(x.shape[0], 2 * L, toy.vocab)
        for start in range(0, L, block_size):
            end = start + block_size
            canvas = torch.cat([x0[:, :start], xt[:, start:end], torch.full_like(x0[:, end:], toy.mask_id)], 1)
            logits[:, start:end] = toy.denoiser(canvas)[:, start:end]
        return logits

    return model


class CountingModel:
    """A model-contract wrapper that counts model calls (``model(...)`` and ``forward_embeds``) in ``calls`` and
    passes the rest of the contract through (``new_cache``, ``embed``, ``embedding_weight``, ``logits``,
    ``layers``). With ``favour=(token_id, mass)`` every position's output puts probability ``mass`` on that token
    (the others keep their proportions: the output becomes log-probabilities) and, on the continuous path, the
    predicted x0 moves that fraction of the way to the token's embedding; ``mass = 1``: all of it. ``offset`` is
    added to the steered log-probabilities, for models whose outputs are read on another scale (SEDD's absorbing
    graph reads log p + log(V - 1))."""

    def __init__(self, model, favour=None, offset=0.0):
        self.model, self.calls, self.favour, self.offset = model, 0, favour, offset

    def __call__(self, *args, **kwargs):
        self.calls += 1
        out = self.model(*args, **kwargs)
        if self.favour is None:
            return out
        token, mass = self.favour
        if mass >= 1.0:
            steered = torch.full_like(out, -1e4)
        else:
            others = out.index_fill(-1, torch.tensor([token], device=out.device), float("-inf"))
            steered = others.log_softmax(-1) + torch.log1p(torch.tensor(-mass, dtype=out.dtype))
        steered[..., token] = 0.0 if mass >= 1.0 else torch.log(torch.tensor(mass, dtype=out.dtype))
        return steered + self.offset

    def forward_embeds(self, z, t=None, **kwargs):
        self.calls += 1
        h = self.model.forward_embeds(z, t, **kwargs)
        if self.favour is None:
            return h
        token, mass = self.favour
        return (1 - mass) * h + mass * self.model.embedding_weight[token].to(h.dtype)

    def new_cache(self, batch, max_len):
        return self.model.new_cache(batch, max_len)

    def embed(self, ids):
        return self.model.embed(ids)

    @property
    def embedding_weight(self):
        return self.model.embedding_weight

    def logits(self, h):
        return self.model.logits(h)

    def layers(self):
        return self.model.layers()
