"""Fast inference: Fast-dLLM caches, batched generation with left padding, stopping at EOS, per-row draws."""

import pytest
import torch
from helpers import left_pad, sample

from dlm.config import ModelConfig
from dlm.models import Transformer
from dlm.noise.categorical import gumbel_noise, uniform

V, MASK, EOS, PAD = 40, 39, 0, 38


def random_transformer(causal=False, seed=0):
    """A random tiny backbone in float64, so batched and unbatched float sums agree far below any tie."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, causal=causal)
    model = Transformer(cfg).double().eval()
    for p in model.parameters():  # larger weights: peaked, position-dependent predictions
        p.data.mul_(4.0)
    return model


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [20]]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_cache_refreshed_every_step_equals_no_cache(cache, threshold):
    model = random_transformer()
    prompt = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    kw = dict(
        mask_id=MASK, gen_length=16, steps=16, block_length=4, temperature=1.0, threshold=threshold, cfg_scale=0.5
    )
    ref = sample("confidence", model, prompt, **kw, generator=torch.Generator().manual_seed(1))
    out = sample(
        "confidence", model, prompt, **kw, cache=cache, refresh_every=1, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(out.tokens, ref.tokens) and out.nfe == ref.nfe


def test_cache_reuses_stale_keys_between_refreshes():
    """With the normal refresh (block starts only) the cached sampler runs fewer tokens and may differ."""
    model = random_transformer()
    prompt = torch.tensor([[1, 2, 3, 4]])
    calls = []

    def counting(x, **kw):
        calls.append(x.shape[1])
        return model(x, **kw)

    kw = dict(mask_id=MASK, gen_length=16, steps=16, block_length=8)
    sample("confidence", counting, prompt, **kw, cache="dual")
    assert calls == [20] + [8] * 7 + [20] + [8] * 7  # whole canvas at each block start, the block otherwise
    calls.clear()
    sample("confidence", counting, prompt, **kw, cache="prefix")
    assert calls == [20] + [16] * 7 + [20] + [8] * 7  # the block and all after it


def test_cache_agreement_on_a_trained_tiny_model(tiny_mdlm_run):
    """Fast-dLLM's approximation on a real (tiny, trained) model: most tokens agree with the uncached sampler."""
    import dlm

    model, tok, _ = dlm.load(tiny_mdlm_run)
    prompt = torch.tensor([tok.encode("Anne was")] * 4)
    kw = dict(mask_id=tok.mask_id, gen_length=32, steps=32, block_length=8)
    ref = sample("confidence", model, prompt, **kw).tokens
    for cache in ("prefix", "dual"):
        out = sample("confidence", model, prompt, **kw, cache=cache).tokens
        agreement = (out == ref)[:, prompt.shape[1] :].double().mean().item()
        assert agreement >= 0.6, (cache, agreement)
        assert not (out == tok.mask_id).any()


def batch_vs_one_by_one(generate, prompts, seeds, **kw):
    tokens, mask = left_pad(prompts, PAD)
    batch = generate(tokens, prompt_mask=mask, generator=gens(seeds), **kw)
    width = tokens.shape[1]
    for j, (p, s) in enumerate(zip(prompts, seeds)):
        one = generate(torch.tensor([p]), generator=gens([s]), **kw)
        assert torch.equal(batch[j, width - len(p) :], one[0]), j
        assert torch.equal(batch[j, : width - len(p)], tokens[j, : width - len(p)])  # padding untouched
    return batch


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=1.0, steps=16, block_length=4),
        dict(temperature=0.7, steps=8, block_length=8, remasking="random", cfg_scale=1.0),
        dict(temperature=1.0, threshold=0.3, block_length=4, cache="dual", eos_id=EOS, stop_at_eos=True),
        dict(temperature=0.0, steps=16, block_length=8, cache="prefix"),
    ],
)
def test_confidence_batched_equals_one_by_one(options):
    model = random_transformer()

    def generate(prompt, **kw):
        return sample("confidence", model, prompt, mask_id=MASK, gen_length=16, pad_id=PAD, **options, **kw).tokens

    batch_vs_one_by_one(generate, PROMPTS, [3, 4, 5, 6])


@pytest.mark.parametrize("cache", ["kv", "none"])
def test_ar_batched_equals_one_by_one(cache):
    model = random_transformer(causal=True)

    def generate(prompt, **kw):
        return sample(
            "ar",
            model,
            prompt,
            mask_id=MASK,
            eos_id=EOS,
            pad_id=PAD,
            gen_length=12,
            temperature=1.0,
            cache=cache,
            stop_at_eos=True,
            **kw,
        ).tokens

    batch_vs_one_by_one(generate, PROMPTS, [7, 8, 9, 10])


def test_ancestral_batched_equals_one_by_one():
    model = random_transformer()

    def generate(prompt, **kw):
        return sample(
            "ancestral",
            model,
            prompt,
            mask_id=MASK,
            gen_length=12,
            steps=12,
            eos_id=EOS,
            pad_id=PAD,
            stop_at_eos=True,
            **kw,
        ).tokens

    batch_vs_one_by_one(generate, PROMPTS, [11, 12, 13, 14])


def eos_model(eos_from: int):
    """A bidirectional toy: token 3 everywhere before column ``eos_from``, EOS from there on (very confidently)."""

    def model(x, t=None, **_):
        logits = torch.zeros(*x.shape, V, dtype=torch.float64)
        logits[:, :eos_from, 3] = 10.0
        logits[:, eos_from:, EOS] = 10.0
        return logits

    return model


def test_eos_ends_generation_with_its_block():
    res = sample(
        "confidence",
        eos_model(eos_from=2 + 6),
        torch.tensor([[1, 2]]),
        mask_id=MASK,
        gen_length=32,
        steps=32,
        block_length=8,
        eos_id=EOS,
        stop_at_eos=True,
        history=True,
    )
    out, history = res.tokens, res.history[0]
    # Equal confidences commit left to right, one per step: 3 x 6, then the EOS at column 8 ends the sample (every
    # column before it committed) after 7 steps; the rest of the first block and the three other blocks never run.
    assert len(history) == res.nfe == 7
    assert (history[-1][9:] == MASK).all()
    assert out[0, 2:8].tolist() == [3] * 6 and (out[0, 8:] == EOS).all()
    full = sample(
        "confidence",
        eos_model(eos_from=8),
        torch.tensor([[1, 2]]),
        mask_id=MASK,
        gen_length=32,
        steps=32,
        block_length=8,
        eos_id=EOS,
        history=True,
    )
    assert (full.tokens == MASK).sum() == 0 and (full.tokens[0, 8:] == EOS).all()  # no stop_at_eos: every block runs
    assert len(full.history[0]) == full.nfe == 32


def test_ar_stops_at_eos():
    def model(x, **_):  # causal toy: EOS after three tokens of 3
        logits = torch.zeros(*x.shape, V, dtype=torch.float64)
        logits[..., 3] = 10.0
        logits[:, 3:, EOS] = 20.0
        return logits

    res = sample(
        "ar",
        model,
        torch.tensor([[1]]),
        mask_id=MASK,
        eos_id=EOS,
        gen_length=10,
        temperature=0.0,
        cache="none",
        stop_at_eos=True,
        history=True,
    )
    assert res.tokens[0].tolist() == [1, 3, 3, EOS] + [EOS] * 7 and len(res.history[0]) == res.nfe == 3


def test_per_row_draws_are_float64_and_independent_of_the_batch():
    g = gens([1, 2])
    batch = uniform((2, 5, 3), generator=g)
    assert batch.dtype == torch.float64
    assert torch.equal(batch[1], torch.rand((5, 3), dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    skipped = uniform((2, 4), generator=gens([1, 2]), rows=torch.tensor([False, True]), starts=[0, 1])
    assert (skipped[0] == 0).all() and skipped[1, 0] == 0
    assert torch.equal(skipped[1, 1:], torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    assert gumbel_noise((2, 3), generator=gens([1, 2])).dtype == torch.float64
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        uniform((3, 2), generator=gens([1, 2]))


def test_left_pad():
    tokens, mask = left_pad([[1, 2, 3], [4]], pad_id=9)
    assert tokens.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
