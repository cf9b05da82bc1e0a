"""Diffusion-LM: the backbone's continuous path, the vp-sqrt schedule, the loss and its bound, clamping and
rounding, and `dlm train/sample/eval --objective diffusion-lm` end to end on the tiny preset."""

import json
import math

import pytest
import torch
import torch.nn as nn
from helpers import dlm

from dlm.config import ModelConfig, RunConfig
from dlm.errors import DlmError
from dlm.models.transformer import Transformer
from dlm.noise.gaussian import first_latent_time, get_gaussian_schedule
from dlm.objectives import OBJECTIVES
from dlm.objectives.embedding import DiffusionLM, diffusion_lm_nelbo
from dlm.presets import preset_config
from dlm.samplers import SAMPLERS
from dlm.samplers.embedding import clamp_to_embeddings, diffusion_lm_generate, nearest_tokens


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny diffusion-lm run trained by the CLI: 40 steps, losses logged every 5."""
    out = tmp_path_factory.mktemp("runs") / "diffusion-lm"
    proc = dlm(
        "train",
        "--preset",
        "tiny",
        "--objective",
        "diffusion-lm",
        "--max-steps",
        40,
        "--out",
        out,
        "--quiet",
        "--set",
        "train.precision=fp32",
    )
    assert "done: step 40, validation <= " in proc.stdout + proc.stderr
    return out


def tiny_model(embed_dim=0, time_conditioning=True, vocab=50):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_seq_len=16,
        time_conditioning=time_conditioning,
        embed_dim=embed_dim,
        tie_embeddings=True,
    )
    return Transformer(cfg).eval()


# --- backbone ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("embed_dim,time_conditioning", [(0, False), (0, True), (8, True)])
def test_continuous_path_with_the_embedding_table_reproduces_the_token_path(embed_dim, time_conditioning):
    model = tiny_model(embed_dim, time_conditioning)
    x = torch.randint(50, (3, 10), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.1, 0.5, 0.9]) if time_conditioning else None
    features = model.forward_embeds(model.embed(x), t)  # (B, L, E)
    assert features.shape == (3, 10, embed_dim or 32)
    assert torch.equal(model.logits(features), model(x, t))
    with pytest.warns(DeprecationWarning, match="forward_embeds"):  # the old spelling of the continuous path
        assert torch.equal(model(None, t, inputs_embeds=model.embed(x)), features)
    with pytest.raises(ValueError, match="either token ids x or inputs_embeds"):
        model(x, t, inputs_embeds=model.embed(x))


def test_embed_dim_zero_builds_the_old_module():
    old = RunConfig().to_dict()
    del old["model"]["embed_dim"]  # a config.json written before the field existed
    assert RunConfig.from_dict(old).model.embed_dim == 0
    names = set(tiny_model(0).state_dict())
    assert not any(n.startswith(("in_proj", "out_proj")) for n in names)
    assert {"in_proj.weight", "out_proj.weight"} <= set(tiny_model(8).state_dict())
    assert tiny_model(8).embedding_weight.shape == (50, 8)


# --- schedule ----------------------------------------------------------------------------------------------------


def test_vp_sqrt_schedule():
    s = get_gaussian_schedule("vp-sqrt")
    t = torch.linspace(0.0, 1.0, 21, dtype=torch.float64, requires_grad=True)
    alpha, sigma = s.alpha(t), s.sigma(t)
    (d_alpha,) = torch.autograd.grad(alpha.sum(), t)
    (d_sigma,) = torch.autograd.grad(sigma.sum(), t)
    t = t.detach()
    torch.testing.assert_close(s.dalpha(t), d_alpha)
    torch.testing.assert_close(s.dsigma(t), d_sigma)
    torch.testing.assert_close(alpha.detach() ** 2 + sigma.detach() ** 2, torch.ones_like(t))
    torch.testing.assert_close(s.time_of_lambda(s.lam(t)), t)
    assert s.alpha(t[:1]).item() == 1.0 and s.sigma(t[:1]).item() == 0.0 and abs(s.alpha(t[-1:]).item() - 1e-4) < 1e-9
    assert s.alpha(torch.tensor([1.0])).item() > 0  # no cancellation in float32 either
    for name in ("vp-sqrt", "vp-cosine", "vp-linear", "rectified-flow"):  # the first latent: sigma / alpha = 0.1
        sch = get_gaussian_schedule(name)
        t_min = torch.tensor(first_latent_time(sch), dtype=torch.float64)
        assert abs(sch.sigma(t_min) / sch.alpha(t_min) - 0.1) < 1e-9, name
    assert abs(first_latent_time(s) - 1e-4) < 3e-6  # the paper's offset s


# --- clamping and rounding ---------------------------------------------------------------------------------------


def test_clamping_maps_each_embedding_exactly_to_its_own_token():
    weight = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))  # (V, E)
    clamped, ids = clamp_to_embeddings(weight, weight)
    assert torch.equal(ids, torch.arange(300)) and torch.equal(clamped, weight)
    near = weight + 1e-3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(nearest_tokens(near, weight), torch.arange(300))
    ids = nearest_tokens(weight[:5], weight, exclude=(0, 3))  # excluded tokens are never chosen
    assert ids[1] == 1 and ids[2] == 2 and ids[4] == 4 and ids[0] not in (0, 3) and ids[3] not in (0, 3)


# --- the bound ---------------------------------------------------------------------------------------------------

CORNERS = torch.tensor([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]], dtype=torch.float64)


class ExactDenoiser(nn.Module):
    """Four one-token 'sentences' with embeddings at the corners of a square, equally likely: E[e | z_t] in closed
    form. Its model marginal is the data's (1/4 each), so the NELBO must sit just above log 4."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.table = nn.Embedding(4, 2)
        self.table.weight.data.copy_(CORNERS)

    # the model contract's continuous path: embed, embedding_weight, forward_embeds, logits (a tied head)
    def embed(self, ids):
        return self.table(ids)

    @property
    def embedding_weight(self):
        return self.table.weight

    def logits(self, h):
        return h @ self.table.weight.T

    def forward_embeds(self, z, t):
        z, t = z.double(), t.double()
        alpha, sigma = self.schedule.alpha(t)[:, None, None, None], self.schedule.sigma(t)[:, None, None, None]
        log_lik = -((z[:, :, None, :] - alpha * CORNERS) ** 2).sum(-1) / (2 * sigma[..., 0] ** 2)  # (B, L, 4)
        return (log_lik.softmax(-1)[..., None] * CORNERS).sum(-2)  # (B, L, 2)


def test_nelbo_of_the_exact_denoiser_is_a_tight_bound():
    schedule = get_gaussian_schedule("vp-sqrt")
    model = ExactDenoiser(schedule)
    n = 100_000
    w = torch.arange(4).repeat(n)[:, None]  # (4n, 1): n one-token sequences of each word, one draw each
    with torch.no_grad():
        nelbo = diffusion_lm_nelbo(model, w, schedule=schedule, generator=torch.Generator().manual_seed(0))  # (4n,)
    per_word = nelbo.view(n, 4).mean(0)  # (4,)
    # -log p(w) = log 4 for every word and the bound's slack is ~1e-4 nats here (the corners are 40 sigma_0 apart);
    # one draw has a std of about 3 nats (x0_hat jumps between corners), so the mean of 4n draws is within ~0.005
    assert torch.all((per_word - math.log(4)).abs() < 0.04), per_word
    assert abs(per_word.mean().item() - math.log(4)) < 0.02, per_word


@pytest.mark.parametrize("ode_sampler", ["ddpm", "ddim"])
def test_sampler_with_the_exact_denoiser_draws_the_data_distribution(ode_sampler):
    schedule = get_gaussian_schedule("vp-sqrt")
    model = ExactDenoiser(schedule)
    prompt = torch.zeros((4000, 0), dtype=torch.long)  # 4000 unprompted one-token sentences
    out, nfe = diffusion_lm_generate(
        model,
        prompt,
        gen_length=1,
        steps=20,
        schedule=schedule,
        ode_sampler=ode_sampler,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (4000, 1) and nfe == 20
    freq = torch.bincount(out[:, 0], minlength=4) / 4000.0
    assert torch.all((freq - 0.25).abs() < 0.03), freq  # each word 1/4 of the time


def test_loss_terms_and_gradients_reach_the_embeddings():
    model = tiny_model(8).train()
    x0 = torch.randint(50, (4, 12), generator=torch.Generator().manual_seed(2))
    objective = DiffusionLM(mask_id=50, eos_id=49, vocab_size=50, schedule="vp-sqrt")
    out = objective.loss(model, x0, torch.Generator().manual_seed(3))
    assert set(out.metrics) == {"mse", "rounding", "prior"}
    assert math.isclose(out.loss.item(), sum(out.metrics.values()), rel_tol=1e-5)
    out.loss.backward()
    assert model.embedding_weight.grad.abs().sum() > 0 and model.in_proj.weight.grad.abs().sum() > 0
    again = objective.loss(model, x0, torch.Generator().manual_seed(3))
    assert again.loss.item() == out.loss.item()  # deterministic for a seed


# --- a trained tiny run ------------------------------------------------------------------------------------------


def test_tiny_run_trains_and_its_loss_falls(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3, losses
    assert {"mse", "rounding", "prior"} <= set(lines[0])
    cfg = json.loads((run / "checkpoint" / "config.json").read_text())
    assert cfg["train"]["schedule"] == "vp-sqrt" and cfg["model"]["time_conditioning"] is True
    assert cfg["model"]["embed_dim"] == 16


@pytest.mark.parametrize("name", OBJECTIVES.get("diffusion-lm").samplers)
def test_every_sampler_returns_vocabulary_tokens_and_keeps_the_prompt(run, name):
    import dlm

    model, tokenizer, cfg = dlm.load(run)
    assert name in SAMPLERS
    prompt = torch.tensor([tokenizer.encode("Emma was")] * 2)  # (2, Lp)
    history = []
    out, nfe = diffusion_lm_generate(
        model,
        prompt,
        gen_length=10,
        steps=6,
        schedule=cfg.train.schedule,
        ode_sampler=name.removeprefix("embed-"),
        exclude=(tokenizer.mask_id, tokenizer.pad_id),
        generator=torch.Generator().manual_seed(0),
        on_step=lambda state: history.append(state.tokens.clone()),
    )
    assert out.shape == (2, prompt.shape[1] + 10) and torch.equal(out[:, : prompt.shape[1]], prompt)
    assert out.min() >= 0 and out.max() < tokenizer.vocab_size
    assert not torch.isin(out, torch.tensor([tokenizer.mask_id, tokenizer.pad_id])).any()
    assert nfe == len(history) == 6
    again, _ = diffusion_lm_generate(
        model,
        prompt,
        gen_length=10,
        steps=6,
        schedule=cfg.train.schedule,
        ode_sampler=name.removeprefix("embed-"),
        exclude=(tokenizer.mask_id, tokenizer.pad_id),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(out, again)


def test_cli_sample_and_eval(run):
    out = dlm("sample", run, "--prompt", "Emma was", "--gen-length", 12, "--steps", 8, "--seed", 3).stdout
    assert out.startswith("--- sample 0 ---\nEmma was")
    shown = dlm("sample", run, "--gen-length", 8, "--steps", 4, "--sampler", "embed-ddim", "--show-steps").stdout
    assert "[1/4]" in shown and "[4/4]" in shown
    report = json.loads(dlm("eval", run, "--json", "--max-sequences", 8, "--num-samples", 1).stdout)
    assert report["objective"] == "diffusion-lm" and report["is_bound"] is True and report["nats_per_token"] > 0
    proc = dlm("sample", run, "--sampler", "confidence", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "use one of: embed-ddpm, embed-ddim" in proc.stderr


def test_configure_fits_the_run_config():
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.train.schedule = "diffusion-lm", "vp-cosine"
    OBJECTIVES.get("diffusion-lm").configure(cfg)
    assert cfg.model.time_conditioning and cfg.model.embed_dim == 16
    cfg.train.schedule = "loglinear"  # a discrete schedule
    with pytest.raises(DlmError, match="diffusion-lm needs a Gaussian schedule, not 'loglinear'; pass --schedule"):
        OBJECTIVES.get("diffusion-lm").configure(cfg)
    assert OBJECTIVES.get("diffusion-lm").default_schedule == "vp-sqrt"
