"""UDLM (uniform-state diffusion): the mean parameterisation of the exact denoiser against SEDD's exact uniform
ratios (tightness and the bound are the objective contracts, its draws of the toy a sampler contract), the sampler's
ability to revise tokens, and `dlm train/eval/sample --objective udlm` end to end on the tiny preset."""

import json

import pytest
import torch
from helpers import dlm, left_pad, sample, uniform_ratios, uniform_x0_denoiser
from toy import ToyDistribution

from dlm.config import ModelConfig
from dlm.errors import DlmError
from dlm.models.transformer import Transformer
from dlm.noise import get_schedule
from dlm.objectives import OBJECTIVES, UDLM, mean_log_ratios, udlm_nelbo
from dlm.samplers import SAMPLERS


def test_the_mean_parameterisation_of_the_exact_denoiser_gives_the_exact_ratios():
    toy = ToyDistribution(V=3, L=3, seed=1)
    xt = torch.randint(0, toy.vocab, (20, 3), generator=torch.Generator().manual_seed(0))
    t = torch.rand(20, generator=torch.Generator().manual_seed(1)) * 0.98 + 0.01
    schedule = get_schedule("loglinear")
    got = mean_log_ratios(uniform_x0_denoiser(toy, toy.vocab)(xt, t), xt, t, schedule=schedule, mask_id=toy.mask_id)
    torch.testing.assert_close(got, uniform_ratios(toy, toy.vocab)(xt, t), rtol=1e-7, atol=1e-7)


def test_loss_is_the_one_draw_nelbo_per_token_and_trains_a_transformer():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=20, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=8, time_conditioning=True)
    )
    x0 = torch.randint(3, 20, (6, 8))
    udlm = UDLM(mask_id=1, eos_id=2, vocab_size=20, schedule="loglinear")
    out = udlm.loss(model, x0, torch.Generator().manual_seed(5))
    nelbo = udlm_nelbo(model, x0, mask_id=1, vocab_size=20, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out.loss.double(), nelbo.mean() / 8, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for step in range(30):
        loss = udlm.loss(model, x0, torch.Generator().manual_seed(step)).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


def run_udlm(model, prompt, steps, gen_length, generator, prompt_mask=None, history=False, vocab_size=None):
    return sample(
        "udlm",
        model,
        prompt,
        mask_id=3,
        eos_id=4,
        gen_length=gen_length,
        steps=steps,
        prompt_mask=prompt_mask,
        generator=generator,
        history=history,
        vocab_size=vocab_size,
    )


def test_sampler_revises_tokens():
    """UDLM may change any generated token at any step. (That it draws the toy's distribution with the exact
    denoiser is the sampler contract's chi-square test, at 64 steps: at the 32 here it is measurably off, chi-square
    67.5 against a critical 51.3 over 3000 draws.)"""
    toy = ToyDistribution(V=3, L=3, seed=3)
    n = 3000
    out = run_udlm(
        uniform_x0_denoiser(toy, toy.vocab),
        torch.empty(n, 0, dtype=torch.long),
        32,
        3,
        torch.Generator().manual_seed(0),
        history=True,
        vocab_size=toy.vocab,
    )
    tokens = out.tokens
    assert all(len(canvases) == 32 for canvases in out.history)  # one canvas per row after each of the 32 steps
    history = [torch.stack([canvases[step] for canvases in out.history]) for step in range(32)]  # [step] (n, L)
    # "may revise any token": real tokens present at one step are replaced later
    revised = ((history[10] < toy.V) & (history[10] != tokens)).float().mean()
    assert revised > 0.02, revised


def test_a_rows_sample_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=20, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=16, time_conditioning=True)
    ).eval()
    prompts = [[5, 6, 7], [8]]
    tokens, mask = left_pad(prompts, pad_id=2)
    both = run_udlm(
        model, tokens, 5, 6, [torch.Generator().manual_seed(i) for i in (3, 4)], prompt_mask=mask, vocab_size=20
    ).tokens
    assert torch.equal(both[:, :3], tokens) and not (both == 3).any()  # the prompt stays; the mask id is never drawn
    for j, seed in enumerate((3, 4)):
        alone = run_udlm(
            model, torch.tensor([prompts[j]]), 5, 6, [torch.Generator().manual_seed(seed)], vocab_size=20
        ).tokens
        assert torch.equal(alone[0], both[j, 3 - len(prompts[j]) :])


def test_registry_configure_and_sampler_options():
    from dlm.presets import preset_config

    udlm = OBJECTIVES.get("udlm")
    assert udlm.is_bound and not udlm.causal and udlm.samplers == ("udlm",)
    cfg = preset_config("tiny")
    cfg.train.objective = "udlm"
    udlm.configure(cfg)
    assert cfg.model.time_conditioning
    built = OBJECTIVES.build(cfg, type("Tok", (), {"mask_id": 3, "eos_id": 4})())
    assert isinstance(built, udlm) and built.vocab_size == cfg.model.vocab_size and built.mask_id == 3
    cfg.train.schedule = "quadratic"
    with pytest.raises(DlmError, match="unknown schedule 'quadratic'"):
        udlm.configure(cfg)
    with pytest.raises(DlmError, match="--temperature does not apply to the udlm sampler; it takes: --steps"):
        SAMPLERS.get("udlm").make_config(dict(temperature=0.5), dict(vocab_size=cfg.model.vocab_size))


def test_train_eval_sample_udlm(tmp_path):
    run = tmp_path / "udlm"
    proc = dlm(
        "train",
        "--preset",
        "tiny",
        "--objective",
        "udlm",
        "--max-steps",
        20,
        "--out",
        run,
        "--quiet",
        "--set",
        "train.precision=fp32",
    )
    assert "done: step 20, validation <= " in proc.stdout + proc.stderr
    report = json.loads(dlm("eval", run, "--json", "--max-sequences", 8, "--num-samples", 2).stdout)
    assert report["objective"] == "udlm" and report["is_bound"] is True
    assert 0 < report["nats_per_token"] < 12
    out = dlm("sample", run, "--prompt", "Emma was", "--gen-length", 8, "--steps", 4, "--show-steps").stdout
    assert "[1/" in out and out.split("--- sample 0 ---\n")[1].startswith("Emma was")
    proc = dlm("sample", run, "--sampler", "confidence", check=False)
    assert proc.returncode == 2 and "use one of: udlm" in proc.stderr
