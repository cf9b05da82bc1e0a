"""Eso-LM: the attention masks as hand-written matrices, the NELBO (AR at alpha0 = 0, MDLM's at alpha0 = 1; tight in
between: the objective contracts), training, the sampler with its exact KV cache, and the CLI end to end."""

import json

import pytest
import torch
from contracts.stats import assert_draws
from helpers import dlm, esolm_oracle, left_pad, sample, sharp_transformer
from toy import ToyDistribution

from dlm.config import ModelConfig
from dlm.errors import DlmError
from dlm.models.transformer import Transformer
from dlm.objectives import (
    OBJECTIVES,
    EsoLM,
    ar_sequence_nll,
    esolm_diffusion_mask,
    esolm_nelbo,
    esolm_sequential_mask,
    masked_nelbo,
    random_ranks,
)
from dlm.presets import preset_config
from dlm.samplers import SAMPLERS


def test_attention_masks_are_the_hand_written_matrices():
    # L = 4: positions 0 and 2 clean, 1 and 3 masked; rank order 2, 0 | 3, 1
    clean = torch.tensor([[True, False, True, False]])
    rank = torch.tensor([[1, 3, 0, 2]])
    B = torch.tensor(
        [
            [1, 0, 1, 0],  # clean 0 (rank 1): clean 2 (rank 0) and itself
            [1, 1, 1, 1],  # masked 1 (rank 3): everything
            [0, 0, 1, 0],  # clean 2 (rank 0): itself
            [1, 0, 1, 1],  # masked 3 (rank 2): the clean tokens and itself
        ],
        dtype=torch.bool,
    )
    A = torch.tensor(
        [
            [1, 0, 1, 0],  # clean: every clean token
            [1, 1, 1, 0],  # masked: the clean tokens and itself
            [1, 0, 1, 0],
            [1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(esolm_diffusion_mask(clean, rank, "B")[0], B)
    assert torch.equal(esolm_diffusion_mask(clean, None, "A")[0], A)
    # sequential, rows/columns z0_0 z0_1 z0_2 z0_3 | x_0 x_1 x_2 x_3 (z0 = the same clean pattern)
    seq_B = torch.tensor(
        [
            [1, 0, 1, 0, 0, 0, 0, 0],  # clean z0 0: clean z0 of rank <= 1
            [1, 1, 1, 0, 0, 0, 0, 0],  # masked z0 1: clean z0, itself; no masked x before it
            [0, 0, 1, 0, 0, 0, 0, 0],  # clean z0 2: itself (rank 0)
            [1, 0, 1, 1, 0, 1, 0, 0],  # masked z0 3: clean z0, itself, x_1 (masked, before it)
            [0, 0, 0, 0, 1, 0, 0, 0],  # x_0 (clean in z0): itself only
            [1, 0, 1, 0, 0, 1, 0, 0],  # x_1 (masked in z0): clean z0 and itself
            [0, 0, 0, 0, 0, 0, 1, 0],  # x_2 (clean in z0): itself only
            [1, 0, 1, 0, 0, 1, 0, 1],  # x_3: clean z0, x_1 and itself
        ],
        dtype=torch.bool,
    )
    seq_A = seq_B.clone()
    seq_A[2, 0] = True  # variant A: clean z0 tokens see each other both ways
    assert torch.equal(esolm_sequential_mask(clean, rank, "B")[0], seq_B)
    assert torch.equal(esolm_sequential_mask(clean, None, "A")[0], seq_A)


def test_random_ranks_put_clean_tokens_first():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(64, 6, generator=g) < 0.5
    rank = random_ranks(clean, g)
    assert torch.equal(rank.sort(1).values, torch.arange(6).expand(64, 6))
    assert torch.equal(rank < clean.sum(1, keepdim=True), clean)  # the clean tokens hold the first ranks
    first = (rank == 0) & clean.any(1, keepdim=True)  # the first clean token is uniform over the clean ones
    assert first.sum(0).min() > 0


@pytest.mark.parametrize("variant", ["A", "B"])
def test_alpha0_zero_is_the_exact_ar_nll(variant):
    toy = ToyDistribution(V=3, L=3)
    x0 = toy.seqs
    nelbo = esolm_nelbo(
        esolm_oracle(toy),
        x0,
        alpha0=0.0,
        variant=variant,
        mask_id=toy.mask_id,
        num_samples=2,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(nelbo.double(), toy.nll(x0), rtol=0, atol=1e-5)
    ar = ar_sequence_nll(toy.next_token, x0, eos_id=toy.eos_id)
    torch.testing.assert_close(nelbo, ar, rtol=0, atol=1e-5)


def test_alpha0_one_variant_A_is_the_linear_masked_nelbo_draw_for_draw():
    toy = ToyDistribution(V=3, L=4)
    x0 = toy.seqs
    kw = dict(mask_id=toy.mask_id, num_samples=3)
    mdlm = masked_nelbo(toy.denoiser, x0, schedule="linear", generator=torch.Generator().manual_seed(5), **kw)
    eso = esolm_nelbo(esolm_oracle(toy), x0, alpha0=1.0, variant="A", generator=torch.Generator().manual_seed(5), **kw)
    torch.testing.assert_close(eso, mdlm, rtol=0, atol=1e-5)


class Counter:
    """Counts the token positions a model runs (the compute of a sampler)."""

    def __init__(self, model):
        self.model, self.positions = model, 0

    def new_cache(self, batch, max_len):
        return self.model.new_cache(batch, max_len)

    def __call__(self, x, *args, **kw):
        self.positions += x.numel()
        return self.model(x, *args, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("prompt_len", [0, 3])
@pytest.mark.parametrize("alpha0", [0.25, 1.0])
@pytest.mark.parametrize("variant", ["A", "B"])
def test_kv_cached_sampler_emits_the_tokens_of_the_uncached_one(seed, prompt_len, alpha0, variant):
    model = sharp_transformer(seed)
    prompt = torch.randint(0, 30, (2, prompt_len), generator=torch.Generator().manual_seed(10 + seed))
    steps = 4 + round((1 - alpha0) * 16)  # 4 diffusion steps, then the sequential phase
    kw = dict(mask_id=31, alpha0=alpha0, variant=variant, gen_length=16, steps=steps, temperature=1.0)
    runs = {}
    for cache in ("kv", "none"):
        counter = Counter(model)
        gens = [torch.Generator().manual_seed(100 * seed + j) for j in range(2)]  # one per row
        out = sample("esolm", counter, prompt, cache=cache, generator=gens, **kw)
        runs[cache] = out.tokens, out.nfe, counter.positions
    (cached, nfe_cached, cost_cached), (plain, nfe_plain, cost_plain) = runs["kv"], runs["none"]
    assert torch.equal(cached, plain)
    assert cached.shape == (2, prompt_len + 16) and torch.equal(cached[:, :prompt_len], prompt)
    assert not (cached == 31).any()
    assert nfe_cached == nfe_plain
    if variant == "B" or alpha0 < 1:
        assert cost_cached < cost_plain


def test_sampler_with_the_exact_model_draws_the_data_distribution():
    """Diffusion then left to right: exact up to the tokens revealed at the same diffusion step (drawn
    independently), rare with 64 steps."""
    toy = ToyDistribution(V=2, L=4, seed=3)
    N = 4000
    out = sample(
        "esolm",
        esolm_oracle(toy),
        torch.zeros(N, 0, dtype=torch.long),
        mask_id=toy.mask_id,
        alpha0=0.5,
        variant="B",
        gen_length=4,
        steps=64 + round(0.5 * 4),
        cache="none",
        generator=torch.Generator().manual_seed(0),
    ).tokens  # 64 diffusion steps
    assert_draws(out, toy.seqs, toy.p)  # the suite's one criterion (tests/contracts/stats.py)


def test_history_eos_and_the_diffusion_share():
    model = sharp_transformer(1)
    prompt = torch.randint(0, 30, (8, 2), generator=torch.Generator().manual_seed(0))
    kw = dict(mask_id=31, alpha0=0.5, variant="B", gen_length=32, steps=8 + round(0.5 * 32))  # 8 diffusion steps
    run = sample("esolm", model, prompt, generator=torch.Generator().manual_seed(0), history=True, **kw)
    out, nfe = run.tokens, run.nfe
    assert len(run.history) == 8  # one canvas per row after every step (one step per model call)
    for j, canvases in enumerate(run.history):
        assert len(canvases) == nfe and torch.equal(canvases[-1], out[j])
    # at most 8 diffusion calls, then one call per token left: about half of 32, the most of 8 rows
    assert 8 + 8 <= nfe <= 8 + 28
    eos = int(out[0, 10])  # treat a token that occurs early in row 0 as EOS: everything after it becomes EOS
    ended = sample(
        "esolm", model, prompt, eos_id=eos, stop_at_eos=True, generator=torch.Generator().manual_seed(0), **kw
    ).tokens
    first = int((ended[0, 2:] == eos).nonzero()[0]) + 2
    assert first <= 10 and (ended[0, first:] == eos).all() and not (ended == 31).any()


def test_registry_entry_and_a_batch_of_padded_prompts_gives_the_one_by_one_samples():
    objective = OBJECTIVES.get("esolm")
    assert objective.is_bound and not objective.causal and objective.samplers == ("esolm",)
    assert objective.default_schedule == "linear"
    model = sharp_transformer(3)
    tokens, mask = left_pad([[5, 6, 7], [8], [1, 2, 3, 4, 5]], pad_id=30)
    run = SAMPLERS.get("esolm")

    def draw(rows):
        return sample(
            "esolm",
            model,
            tokens[rows],
            mask_id=31,
            gen_length=7,
            eos_id=29,
            pad_id=30,
            prompt_mask=mask[rows],
            generator=[torch.Generator().manual_seed(i) for i in rows],
            stop_at_eos=True,
            steps=4 + round(0.5 * 7),
            temperature=1.0,
            alpha0=0.5,
            variant="B",
        ).tokens

    together = draw([0, 1, 2])
    assert together.shape == (3, 12) and torch.equal(together[:, :5], tokens)
    for i in range(3):
        assert torch.equal(draw([i]), together[i : i + 1])
    with pytest.raises(DlmError, match="needs the model's alpha0 and variant"):  # a model not trained as esolm
        run.make_config(dict(steps=8, temperature=1.0), dict(alpha0=None, variant=None))


def test_the_loss_trains_a_tiny_transformer():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=8, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16))
    data = torch.tensor([[1, 2, 3, 4, 5, 6, 1, 2], [4, 5, 6, 1, 2, 3, 4, 5]]).repeat(8, 1)  # (16, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    esolm = EsoLM(EsoLM.Config(alpha0=0.5, variant="B"), mask_id=7, eos_id=6, vocab_size=8, schedule="linear")
    for _ in range(30):
        out = esolm.loss(model, data, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert 0.0 < out.metrics["masked_frac"] < 1.0 and 0.0 < out.metrics["ar_frac"] < 1.0
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5, losses
    with pytest.raises(DlmError, match=r"alpha0 1.5 must be in \[0, 1\]"):
        EsoLM.Config(alpha0=1.5)
    with pytest.raises(DlmError, match=r"alpha0 1.5 must be in \[0, 1\]"):  # the function checks through it
        esolm_nelbo(model, data, mask_id=7, alpha0=1.5, variant="B", generator=g)


def test_cli_train_eval_sample(tmp_path):
    run = tmp_path / "esolm"
    proc = dlm(
        "train",
        "--preset",
        "tiny",
        "--objective",
        "esolm",
        "--alpha0",
        0.5,
        "--variant",
        "B",
        "--max-steps",
        10,
        "--out",
        run,
        "--quiet",
    )
    assert "done: step 10, validation <= " in proc.stdout + proc.stderr
    saved = json.loads((run / "checkpoint" / "config.json").read_text())
    train_cfg, options = saved["train"], saved["objective"]
    assert (options["alpha0"], options["variant"], train_cfg["schedule"]) == (0.5, "B", "linear")
    proc = dlm("eval", run, "--max-sequences", 4, "--num-samples", 1)
    assert "an upper bound" in proc.stdout and "nats/token     <= " in proc.stdout
    out = dlm(
        "sample", run, "--prompt", "Emma was", "--gen-length", 16, "--steps", 4, "--seed", 1, "--show-steps"
    ).stdout
    assert "(esolm sampler" in out and "--- sample 0 ---\nEmma was" in out
    assert "░" not in out.split("--- sample 0 ---")[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objective", "esolm", "--alpha0", 1.5], "error: --alpha0 1.5 must be in [0, 1]"),
        (["--objective", "esolm", "--variant", "C"], "error: --variant C is not an Eso-LM variant; choose A"),
        (["--objective", "mdlm", "--alpha0", 0.5], "error: --alpha0 0.5 applies to --objective esolm only"),
        (["--objective", "mdlm", "--variant", "A"], "error: --variant A applies to --objective esolm only"),
        (
            ["--objective", "mdlm", "--set", "objective.alpha0=0.5"],
            "error: objective.alpha0 is not an option of the mdlm objective; its options: none",
        ),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    proc = dlm("train", "--preset", "tiny", *args, "--max-steps", 1, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith(message), proc.stderr


def test_config_checks():
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.train.schedule, cfg.objective["alpha0"] = "esolm", "linear", 0.25
    EsoLM.configure(cfg.validate())
    assert cfg.objective_config() == EsoLM.Config(alpha0=0.25, variant="B")
    for section, field, value, message in [
        ("train", "schedule", "cosine", r"fixes its schedule to alpha_t = alpha0 \(1 - t\)"),
        ("objective", "variant", "b", "--variant b is not an Eso-LM variant"),
        ("objective", "alpha0", -0.1, "--alpha0 -0.1 must be in"),
    ]:
        bad = preset_config("tiny")
        bad.train.objective, bad.train.schedule = "esolm", "linear"
        if section == "train":
            setattr(bad.train, field, value)
        else:
            bad.objective[field] = value
        with pytest.raises(DlmError, match=message):
            EsoLM.configure(bad.validate())  # the options are checked once, by EsoLM.Config
    cfg.model.time_conditioning = True
    with pytest.raises(DlmError, match="drop model.time_conditioning"):
        EsoLM.configure(cfg)
    cfg = preset_config("tiny")
    cfg.objective["variant"] = "A"  # --set objective.variant=A with --objective mdlm
    with pytest.raises(DlmError, match="objective.variant is not an option of the mdlm objective; its options: none"):
        cfg.validate()
