import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import sample

import dlm
from dlm.config import ModelConfig
from dlm.errors import DlmError
from dlm.models import Transformer
from dlm.noise.categorical import filter_logits
from dlm.samplers import gumbel_noise, num_transfer_tokens, sample_categorical

V, MASK = 12, 11


def random_model(seed=0, vocab=V):
    """A fixed random 'model': logits depend on the tokens and their positions (bidirectionally)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, vocab, generator=g) * 3
    pos = torch.randn(64, vocab, generator=g)

    def model(x, t=None):
        h = table[x]  # (B, L, V)
        ctx = h.mean(1, keepdim=True)  # every position sees every other
        return h.roll(1, dims=-1) + ctx + pos[: x.shape[1]]

    return model


def llada_reference(
    model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, generator, cfg_scale=0.0
):
    """LLaDA's generate written from its description, in its own style (exp / Gumbel^T in float64). LLaDA draws its
    noise for the whole canvas and uses the block's; like dlm, this draws it for the block only."""
    B = prompt.shape[0]
    x = torch.full((B, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        s, e = prompt.shape[1] + num_block * block_length, prompt.shape[1] + (num_block + 1) * block_length
        n = (x[:, s:e] == mask_id).sum(dim=1, keepdim=True)
        num_transfer = torch.zeros(B, steps, dtype=torch.long) + n // steps
        for j in range(B):
            num_transfer[j, : int(n[j] % steps)] += 1
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[:, : prompt.shape[1]] = mask_id
                logits, un_logits = torch.chunk(model(torch.cat([x, un_x])), 2, dim=0)
                logits = (un_logits + (cfg_scale + 1) * (logits - un_logits)).double()
            else:
                logits = model(x).double()
            logits[..., mask_id] = -np.inf
            if temperature == 0:
                x0 = torch.argmax(logits, dim=-1)
            else:
                noise = torch.full(logits.shape, 0.5, dtype=torch.float64)
                noise[:, s:e] = torch.rand((B, e - s, logits.shape[-1]), dtype=torch.float64, generator=generator)
                x0 = torch.argmax(logits.exp() / (-torch.log(noise)) ** temperature, dim=-1)
            if remasking == "low_confidence":
                x0_p = torch.gather(F.softmax(logits, dim=-1), -1, x0[..., None]).squeeze(-1)
            else:
                x0_p = torch.zeros(x0.shape, dtype=torch.float64)
                x0_p[:, s:e] = torch.rand((B, e - s), dtype=torch.float64, generator=generator)
            x0_p[:, e:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(-np.inf, dtype=torch.float64))
            for j in range(B):
                _, select = torch.topk(confidence[j], k=int(num_transfer[j, i]))
                x[j, select] = x0[j, select]
    return x


@pytest.mark.parametrize(
    "temperature,remasking,cfg_scale",
    [
        (0.0, "low_confidence", 0.0),
        (0.7, "low_confidence", 0.0),
        (0.0, "random", 0.0),
        (1.0, "random", 0.0),
        (0.5, "low_confidence", 1.5),
    ],
)
def test_confidence_sampler_matches_the_reference(temperature, remasking, cfg_scale):
    model = random_model()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    ours = dlm.generate(
        model,
        prompt,
        mask_id=MASK,
        gen_length=16,
        steps=12,
        block_length=4,
        temperature=temperature,
        remasking=remasking,
        cfg_scale=cfg_scale,
        generator=torch.Generator().manual_seed(1),
    )
    ref = llada_reference(
        model, prompt, 12, 16, 4, temperature, remasking, MASK, torch.Generator().manual_seed(1), cfg_scale=cfg_scale
    )
    assert torch.equal(ours, ref)


def test_num_transfer_tokens():
    out = num_transfer_tokens(torch.tensor([10, 3, 8]), 4)
    assert out.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [2, 2, 2, 2]]


def test_confidence_commit_counts_block_order_and_frozen_tokens():
    model = random_model(3)
    prompt = torch.tensor([[4, 5], [6, 7]])
    gen, steps, block = 12, 9, 4  # 3 blocks, 3 steps each, 4 masks per block: commits 2, 1, 1
    out = sample(
        "confidence",
        model,
        prompt,
        mask_id=MASK,
        gen_length=gen,
        steps=steps,
        block_length=block,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
        history=True,
    )
    x = out.tokens
    history = [torch.stack(states) for states in zip(*out.history)]  # step -> canvas [B, L]
    assert all(len(row) == steps for row in out.history) and torch.equal(history[-1], x)
    assert out.nfe == steps
    assert not (x == MASK).any()
    prev = torch.cat([prompt, torch.full((2, gen), MASK)], 1)
    expected = [2, 1, 1] * 3
    for i, state in enumerate(history):
        newly = (prev == MASK) & (state != MASK)
        assert newly.sum(1).tolist() == [expected[i]] * 2
        committed = prev != MASK
        assert torch.equal(state[committed], prev[committed]), "committed tokens changed"
        block_idx = i // 3
        cols = torch.nonzero(newly.any(0)).flatten() - 2
        assert torch.all(cols // block == block_idx), "a token was committed outside the current block"
        prev = state


def test_cfg_combines_conditional_and_unconditional_logits():
    scale, prompt = 2.0, torch.tensor([[1, 2]])
    c = torch.randn(V, generator=torch.Generator().manual_seed(0))
    u = torch.randn(V, generator=torch.Generator().manual_seed(1))
    calls = []

    def model(x):
        calls.append(x.clone())
        prompt_hidden = (x[:, :2] == MASK).all(1)  # (B,)
        return torch.where(prompt_hidden[:, None, None], u, c).expand(x.shape[0], x.shape[1], V).clone()

    x = dlm.generate(model, prompt, mask_id=MASK, gen_length=2, steps=1, block_length=2, cfg_scale=scale)
    guided = c + scale * (c - u)  # LLaDA's guidance: cond + s (cond - uncond)
    guided[MASK] = -np.inf
    assert x[0, 2:].tolist() == [guided.argmax().item()] * 2
    assert calls[0].shape[0] == 2 and torch.all(calls[0][1, :2] == MASK) and torch.equal(calls[0][0, :2], prompt[0])


def test_confidence_rejects_bad_block_layout():
    with pytest.raises(DlmError, match="divisible by block_length"):
        dlm.generate(random_model(), torch.tensor([[1]]), mask_id=MASK, gen_length=10, steps=10, block_length=4)
    with pytest.raises(DlmError, match="number of blocks"):
        dlm.generate(random_model(), torch.tensor([[1]]), mask_id=MASK, gen_length=8, steps=3, block_length=4)


def test_gumbel_and_categorical_draws_are_float64():
    g = torch.Generator().manual_seed(0)
    assert gumbel_noise((4, 5), generator=g).dtype == torch.float64
    logits = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float32)
    draws = torch.stack([sample_categorical(logits, generator=g) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=3).double() / 4000
    torch.testing.assert_close(freq, logits.double().softmax(-1)[0], atol=0.03, rtol=0)
    assert sample_categorical(logits, temperature=0.0).item() == 2
    sparse = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).expand(2000, 4)
    assert set(sample_categorical(sparse, generator=g).tolist()) == {0, 2}  # zero-probability tokens never drawn


def test_top_p_and_top_k_filters():
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    kept = filter_logits(logits, top_p=0.6).isfinite().tolist()
    assert kept == [True, True, False]
    assert filter_logits(logits, top_p=0.4).isfinite().tolist() == [True, False, False]
    assert filter_logits(logits, top_k=2).isfinite().tolist() == [True, True, False]
    assert filter_logits(logits, top_p=1e-9).isfinite().tolist() == [True, False, False]


def tiny_transformer(causal):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, causal=causal)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ar_with_kv_cache_equals_without(temperature):
    model = tiny_transformer(causal=True)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    kw = dict(mask_id=MASK, eos_id=10, gen_length=20, temperature=temperature)
    a = sample("ar", model, prompt, cache="kv", generator=torch.Generator().manual_seed(0), **kw)
    b = sample("ar", model, prompt, cache="none", generator=torch.Generator().manual_seed(0), **kw)
    assert a.tokens.shape == (2, 23) and torch.equal(a.tokens[:, :3], prompt)
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe == 20  # one call per token, prefill included


def test_ancestral_sampler_fills_every_mask_and_keeps_clean_tokens():
    model = tiny_transformer(causal=False)
    prompt = torch.tensor([[1, 2, MASK, 4]])  # a mask inside the prompt is infilled too
    calls = []

    def counted(x, t):
        calls.append(1)
        return model(x, t)

    out = sample(
        "ancestral",
        counted,
        prompt,
        mask_id=MASK,
        gen_length=12,
        steps=50,
        generator=torch.Generator().manual_seed(0),
        history=True,
    )
    x, nfe, history = out.tokens, out.nfe, out.history[0]
    assert not (x == MASK).any()
    assert x[0, [0, 1, 3]].tolist() == [1, 2, 4]
    assert nfe == len(calls) < 50, "the logits cache must skip calls when nothing changed"
    assert torch.equal(history[-1], x[0])
    for prev, cur in zip(history, history[1:]):
        clean = prev != MASK
        assert torch.equal(cur[clean], prev[clean])


def test_ancestral_reveal_probability():
    """From t to s a masked token stays masked w.p. (1 - alpha(s)) / (1 - alpha(t)) (0.75 for 1 -> 0.75, loglinear)."""
    model = tiny_transformer(causal=False)
    out = sample(
        "ancestral",
        model,
        torch.zeros(200, 0, dtype=torch.long),
        mask_id=MASK,
        gen_length=50,
        steps=4,
        generator=torch.Generator().manual_seed(0),
        history=True,
    )
    history = [torch.stack(states) for states in zip(*out.history)]  # step -> canvas [200, 50]
    still_masked = (history[0] == MASK).float().mean().item()
    assert still_masked == pytest.approx(0.75, abs=0.015)
    assert (history[1] == MASK).float().mean().item() == pytest.approx(0.5, abs=0.015)


@pytest.mark.parametrize("temperature,remasking", [(0.0, "low_confidence"), (1.0, "low_confidence"), (0.5, "margin")])
def test_threshold_one_equals_one_commit_per_step(temperature, remasking):
    """--threshold 1.0 commits only the most confident token: the fixed-count sampler with steps = gen_length."""
    model, prompt = random_model(5), torch.tensor([[1, 2], [3, 4]])
    kw = dict(mask_id=MASK, gen_length=12, block_length=4, temperature=temperature, remasking=remasking)
    fixed = sample("confidence", model, prompt, steps=12, generator=torch.Generator().manual_seed(2), **kw)
    tau = sample(
        "confidence",
        model,
        prompt,
        steps=None,
        threshold=1.0,
        history=True,
        generator=torch.Generator().manual_seed(2),
        **kw,
    )
    assert torch.equal(fixed.tokens, tau.tokens) and all(len(row) == 12 for row in tau.history)
    assert tau.nfe == fixed.nfe == 12


def test_threshold_adapts_the_number_of_model_calls():
    model, prompt = random_model(6), torch.tensor([[1, 2]])
    calls, outs = {}, {}
    for tau in (1e-6, 0.5, 0.9, 1.0):  # 1e-6 is below every confidence
        outs[tau] = out = sample(
            "confidence",
            model,
            prompt,
            mask_id=MASK,
            gen_length=16,
            steps=None,
            block_length=8,
            threshold=tau,
            history=True,
        )
        assert not (out.tokens == MASK).any()
        calls[tau] = len(out.history[0])
        assert out.nfe == calls[tau]
    assert calls[1e-6] == 2  # everything in one call per block
    assert calls[1.0] == 16
    assert calls[1e-6] <= calls[0.5] <= calls[0.9] <= calls[1.0]
    zero = sample("confidence", model, prompt, mask_id=MASK, gen_length=16, block_length=8, threshold=0.0)
    assert zero.nfe == 2 and torch.equal(zero.tokens, outs[1e-6].tokens)  # tau = 0: a whole block per step
    for bad in (-0.1, 2.0):  # a threshold is a probability
        with pytest.raises(DlmError, match=r"threshold must be in \[0, 1\]"):
            sample("confidence", model, prompt, mask_id=MASK, gen_length=16, threshold=bad)


@pytest.mark.parametrize("remasking", ["margin", "entropy"])
def test_dream_orderings(remasking):
    logits = torch.tensor([[[2.0, 1.9, -5.0], [3.0, -1.0, -1.0]]], dtype=torch.float64)
    x0_hat = logits.argmax(-1)
    from dlm.samplers import REMASKING

    score = REMASKING.get(remasking)(logits, x0_hat, None)
    assert score[0, 1] > score[0, 0]  # the peaked position beats the torn one
    x = dlm.generate(
        random_model(), torch.tensor([[1]]), mask_id=MASK, gen_length=8, steps=4, block_length=4, remasking=remasking
    )
    assert not (x == MASK).any()


def test_confidence_top_k_one_is_greedy_and_top_p_restricts():
    model, prompt = random_model(7), torch.tensor([[1, 2], [3, 4]])
    kw = dict(mask_id=MASK, gen_length=8, steps=8, block_length=4)
    greedy = sample("confidence", model, prompt, temperature=0.0, **kw).tokens

    def hot(**extra):
        return sample(
            "confidence", model, prompt, temperature=2.0, generator=torch.Generator().manual_seed(0), **kw, **extra
        ).tokens

    assert torch.equal(greedy, hot(top_k=1)) and torch.equal(greedy, hot(top_p=1e-9))
    assert not torch.equal(greedy, hot())
