"""Block diffusion (BD3-LM): the 2L attention mask, the block NELBO (MDLM's at block size L; tight: the objective
contracts), the clipped training times, the block sampler with its exact KV cache, and the CLI end to end."""

import json

import pytest
import torch
from contracts.stats import assert_draws
from helpers import bd3_oracle, dlm, left_pad, sample, sharp_transformer
from toy import ToyDistribution

from dlm.errors import DlmError
from dlm.noise.block import sample_block_times
from dlm.objectives import (
    BD3LM,
    OBJECTIVES,
    bd3_attention_mask,
    block_causal_mask,
    block_nelbo,
    masked_nelbo,
)
from dlm.samplers import SAMPLERS


def test_attention_masks_are_the_hand_written_matrices():
    # L = 4, k = 2; rows/columns: xt0 xt1 xt2 xt3 | x00 x01 x02 x03
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],  # xt of block 0: its own block only
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],  # xt of block 1: its own block and clean block 0
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],  # x0 of block 0: clean block 0
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],  # x0 of block 1: clean blocks 0 and 1
            [0, 0, 0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(bd3_attention_mask(4, 2), expected)
    assert torch.equal(block_causal_mask(4, 2), expected[4:, 4:])
    assert torch.equal(bd3_attention_mask(3, 3)[:3], torch.tensor([[1, 1, 1, 0, 0, 0]] * 3, dtype=torch.bool))


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_block_size_L_is_the_masked_nelbo_on_the_same_draws(schedule):
    """k = L: the same generator gives the same times and masks as masked_nelbo (times first, then one uniform per
    position, per draw), and a Transformer's xt half sees xt alone, so the bounds agree."""
    model = sharp_transformer()
    x0 = torch.randint(0, 31, (4, 8), generator=torch.Generator().manual_seed(1))
    kw = dict(mask_id=31, schedule=schedule, num_samples=3)
    mdlm = masked_nelbo(model, x0, generator=torch.Generator().manual_seed(2), **kw)
    bd3 = block_nelbo(model, x0, block_size=8, generator=torch.Generator().manual_seed(2), **kw)
    torch.testing.assert_close(bd3, mdlm, rtol=1e-5, atol=1e-5)
    toy = ToyDistribution(V=3, L=4)  # and exactly, for the toy's exact model
    x0 = toy.seqs
    mdlm = masked_nelbo(toy.denoiser, x0, mask_id=toy.mask_id, generator=torch.Generator().manual_seed(3))
    bd3 = block_nelbo(
        bd3_oracle(toy, 4), x0, block_size=4, mask_id=toy.mask_id, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(bd3, mdlm)


def test_training_clips_the_block_times_and_eval_does_not():
    t = sample_block_times(8, 4, generator=torch.Generator().manual_seed(0), t_range=(0.3, 0.8))
    assert t.shape == (8, 4) and t.min() >= 0.3 and t.max() <= 0.8
    assert torch.allclose(t.flatten().sort().values.diff(), torch.full((31,), 0.5 / 32))  # antithetic: stratified
    toy = ToyDistribution(V=3, L=4)
    model, x0 = bd3_oracle(toy, 2), toy.seqs
    bd3lm = BD3LM(
        BD3LM.Config(block_size=2), mask_id=toy.mask_id, eos_id=toy.eos_id, vocab_size=toy.vocab, schedule="loglinear"
    )
    loss = bd3lm.loss(model, x0, torch.Generator().manual_seed(4)).loss
    clipped = block_nelbo(
        model, x0, block_size=2, mask_id=toy.mask_id, t_range=(0.3, 0.8), generator=torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(loss, clipped.mean() / 4)
    nll = bd3lm.nll(model, x0, 1, torch.Generator().manual_seed(4))
    bound = block_nelbo(model, x0, block_size=2, mask_id=toy.mask_id, generator=torch.Generator().manual_seed(4))
    assert torch.equal(nll, bound)
    with pytest.raises(DlmError, match="block size 3 must be positive and divide the sequence length 4"):
        block_nelbo(model, x0, block_size=3, mask_id=toy.mask_id)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prompt_len", [0, 3, 4])
def test_kv_cached_sampler_emits_the_tokens_of_the_uncached_one(seed, prompt_len):
    model = sharp_transformer(seed)
    prompt = torch.randint(0, 30, (3, prompt_len), generator=torch.Generator().manual_seed(10 + seed))
    blocks = -(-(prompt_len + 10) // 4) - prompt_len // 4
    kw = dict(mask_id=31, block_size=4, gen_length=10, steps=3 * blocks, temperature=1.0)  # 3 steps per block
    cached = sample("block", model, prompt, cache="kv", generator=torch.Generator().manual_seed(seed), **kw)
    plain = sample("block", model, prompt, cache="none", generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(cached.tokens, plain.tokens)
    assert cached.tokens.shape == (3, prompt_len + 10) and torch.equal(cached.tokens[:, :prompt_len], prompt)
    assert not (cached.tokens == 31).any()
    # the cache costs one call per finished block (the prompt's whole blocks: one call)
    assert cached.nfe == plain.nfe + (blocks - 1) + (prompt_len >= 4)


def test_block_sampler_with_the_exact_model_draws_the_data_distribution():
    """Blocks in turn, each by the reverse process: exact up to the tokens of a block revealed at the same step
    (drawn independently), about 1 / steps_per_block of the samples."""
    toy = ToyDistribution(V=2, L=4, seed=3)

    def model(x, t=None, *, attn_mask):  # [clean blocks, noisy block]: the toy's exact conditionals
        assert torch.equal(attn_mask, block_causal_mask(x.shape[1], 2))
        canvas = torch.cat([x, torch.full((x.shape[0], toy.L - x.shape[1]), toy.mask_id)], 1)
        return toy.denoiser(canvas)[:, : x.shape[1]]

    N = 6000
    out = sample(
        "block",
        model,
        torch.zeros(N, 0, dtype=torch.long),
        mask_id=toy.mask_id,
        block_size=2,
        gen_length=4,
        steps=2 * 100,
        cache="none",
        generator=torch.Generator().manual_seed(0),
    ).tokens
    assert_draws(out, toy.seqs, toy.p)  # the suite's one criterion (tests/contracts/stats.py)


def test_registry_entry_and_a_batch_of_padded_prompts_gives_the_one_by_one_samples():
    objective = OBJECTIVES.get("bd3lm")
    assert objective.is_bound and not objective.causal and objective.samplers == ("block",)
    model = sharp_transformer(3)
    tokens, mask = left_pad([[5, 6, 7], [8], [1, 2, 3, 4, 5]], pad_id=30)
    run = SAMPLERS.get("block")

    def draw(rows):
        return sample(
            "block",
            model,
            tokens[rows],
            mask_id=31,
            gen_length=7,
            eos_id=29,
            pad_id=30,
            prompt_mask=mask[rows],
            generator=[torch.Generator().manual_seed(i) for i in rows],
            stop_at_eos=True,
            steps=6,
            temperature=1.0,
            block_size=4,
        ).tokens

    together = draw([0, 1, 2])
    assert together.shape == (3, 12) and torch.equal(together[:, :5], tokens)
    for i in range(3):
        assert torch.equal(draw([i]), together[i : i + 1])
    with pytest.raises(DlmError, match="needs a block size"):  # neither --block-length nor the model's block_size
        run.make_config(dict(steps=6, temperature=1.0), dict(schedule="loglinear", block_size=None))


def test_cli_train_eval_sample(tmp_path):
    run = tmp_path / "bd3lm"
    proc = dlm(
        "train",
        "--preset",
        "tiny",
        "--objective",
        "bd3lm",
        "--block-size",
        16,
        "--max-steps",
        20,
        "--out",
        run,
        "--quiet",
    )
    assert "done: step 20, validation <= " in proc.stdout + proc.stderr
    saved = json.loads((run / "checkpoint" / "config.json").read_text())
    assert saved["objective"] == {"block_size": 16, "clip_beta": 0.3, "clip_omega": 0.8}
    assert saved["format_version"] == 2 and "block_size" not in saved["train"]
    report = json.loads(dlm("eval", run, "--json", "--max-sequences", 8, "--num-samples", 2).stdout)
    assert report["objective"] == "bd3lm" and report["is_bound"] is True and report["nats_per_token"] > 0
    out = dlm(
        "sample", run, "--prompt", "Emma was", "--gen-length", 20, "--steps", 8, "--seed", 1, "--show-steps"
    ).stdout
    assert "(block sampler" in out and "--- sample 0 ---\nEmma was" in out
    assert "░" not in out.split("--- sample 0 ---")[1]
    proc = dlm(
        "train", "--preset", "tiny", "--objective", "bd3lm", "--block-size", 5, "--out", tmp_path / "x", check=False
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: --block-size 5 must be positive and divide data.seq_len 64")
