"""SEDD (score entropy): the absorbing graph against MDLM draw by draw (tightness with the exact ratios and the bound
for a wrong model are the objective contracts; the samplers' draws of the toy, the sampler contracts), the prompt
kept and its exact conditional drawn, and `dlm train/eval/sample --objective sedd` end to end on the tiny preset."""

import json

import pytest
import torch
from contracts.stats import assert_draws
from helpers import absorb_ratios, dlm, left_pad, sample, uniform_ratios
from toy import ToyDistribution

from dlm.config import ModelConfig
from dlm.errors import DlmError
from dlm.models.transformer import Transformer
from dlm.noise import get_schedule, uniform_tokens
from dlm.objectives import OBJECTIVES, SEDD, masked_nelbo, score_entropy_nelbo
from dlm.objectives.score_entropy import log_ratios

# --- the bound ---------------------------------------------------------------------------------------------------


def test_absorb_with_exact_ratios_is_the_mdlm_integrand_draw_by_draw():
    """sigma(t) r = w(t): with the exact ratios each draw is MDLM's, over [t_min, 1] (hence the 1 - t_min)."""
    toy = ToyDistribution(V=3, L=4, seed=2)
    x0 = toy.seqs[:40]
    sedd = score_entropy_nelbo(
        absorb_ratios(toy), x0, mask_id=toy.mask_id, num_samples=3, generator=torch.Generator().manual_seed(7)
    )
    mdlm = masked_nelbo(
        toy.denoiser, x0, mask_id=toy.mask_id, num_samples=3, generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(sedd, (1 - 1e-3) * mdlm.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_loss_is_the_one_draw_nelbo_per_token_and_trains_a_transformer(graph):
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=20,
            d_model=32,
            n_layers=1,
            n_heads=4,
            d_ff=64,
            max_seq_len=8,
            time_conditioning=graph == "uniform",
        )
    )
    x0 = torch.randint(3, 20, (6, 8))
    kw = dict(graph=graph, mask_id=1, vocab_size=20)
    sedd = SEDD(SEDD.Config(graph=graph), mask_id=1, eos_id=2, vocab_size=20, schedule="loglinear")
    out = sedd.loss(model, x0, torch.Generator().manual_seed(5))
    nelbo = score_entropy_nelbo(model, x0, generator=torch.Generator().manual_seed(5), **kw)
    torch.testing.assert_close(out.loss.double(), nelbo.mean() / 8, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert 0 < out.metrics["noised_frac"] < 1


def test_uniform_noise_and_the_scaling():
    x0 = torch.zeros(4000, 8, dtype=torch.long)
    xt, resampled = uniform_tokens(
        x0, torch.full((4000,), 0.5), get_schedule("linear"), 4, torch.Generator().manual_seed(0)
    )
    kept = (xt == 0).double().mean()  # alpha + (1 - alpha) / N = 0.5 + 0.5 / 4
    assert abs(kept - 0.625) < 0.01 and resampled.double().mean().sub(0.5).abs() < 0.01
    # absorb: zero logits give the total ratio alpha / (1 - alpha) over the V - 1 non-mask ids; s = 1 at xt itself
    t = torch.tensor([0.3])
    xt = torch.tensor([[2, 0]])  # mask_id 0 at position 1
    log_s = log_ratios(torch.zeros(1, 2, 6), xt, t, graph="absorb", schedule=get_schedule("loglinear"))
    alpha = 1 - 0.999 * 0.3
    total = log_s[0, 1, 1:].exp().sum()
    assert abs(total - alpha / (1 - alpha)) < 1e-5 and log_s[0, 0, 2] == 0 and log_s[0, 1, 0] == 0
    with pytest.raises(DlmError, match="unknown graph 'ring'; choose one of: absorb, uniform"):
        score_entropy_nelbo(lambda xt, t: None, x0[:1], graph="ring", mask_id=0)


# --- samplers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_sampler_keeps_the_prompt(graph):
    """The prompt never changes. Absorb: an unmasked token is known clean, so the exact ratios sample the exact
    conditional. Uniform: the ratios read the fixed prompt as possibly noised, so conditioning is approximate (as
    in SEDD); only the prompt and the vocabulary are checked."""
    toy = ToyDistribution(V=3, L=3, seed=3)
    model = absorb_ratios(toy) if graph == "absorb" else uniform_ratios(toy, toy.V)
    n = 2000
    prompt = torch.full((n, 1), 2, dtype=torch.long)
    tokens = sample(
        "sedd-analytic",
        model,
        prompt,
        graph=graph,
        mask_id=toy.mask_id,
        vocab_size=toy.V,
        gen_length=2,
        steps=24,
        time_conditioned=True,
        generator=torch.Generator().manual_seed(1),
    ).tokens
    assert torch.all(tokens[:, 0] == 2) and torch.all(tokens < toy.V)
    if graph == "absorb":
        given = toy.seqs[:, 0] == 2  # the exact conditional given the prompt, by the suite's one criterion
        assert_draws(tokens, toy.seqs[given], toy.p[given] / toy.p[given].sum())


@pytest.mark.parametrize("graph", ["absorb", "uniform"])
def test_a_rows_sample_does_not_depend_on_its_batch(graph):
    """Left-padded prompts with one generator per row: each row alone gives the same tokens as in the batch."""
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=20,
            d_model=32,
            n_layers=1,
            n_heads=4,
            d_ff=64,
            max_seq_len=16,
            time_conditioning=graph == "uniform",
        )
    ).eval()
    prompts = [[5, 6, 7], [8]]
    tokens, mask = left_pad(prompts, pad_id=2)
    kw = dict(
        mask_id=1,
        eos_id=0,
        pad_id=2,
        gen_length=6,
        steps=5,
        time_conditioned=graph == "uniform",
        graph=graph,
        vocab_size=20,
    )
    both = sample(
        "sedd-euler",
        model,
        tokens,
        prompt_mask=mask,
        generator=[torch.Generator().manual_seed(i) for i in (3, 4)],
        **kw,
    ).tokens
    assert torch.equal(both[:, :3], tokens)  # the prompt (and its padding) stays
    assert graph == "uniform" or not (both == 1).any()  # absorb: no mask left
    for j, seed in enumerate((3, 4)):
        alone = sample(
            "sedd-euler",
            model,
            torch.tensor([prompts[j]]),
            prompt_mask=None,
            generator=[torch.Generator().manual_seed(seed)],
            **kw,
        ).tokens
        assert torch.equal(alone[0], both[j, 3 - len(prompts[j]) :])


# --- the objective and the CLI -----------------------------------------------------------------------------------


def test_registry_and_configure():
    from dlm.presets import preset_config

    sedd = OBJECTIVES.get("sedd")
    assert sedd.is_bound and not sedd.causal and sedd.samplers == ("sedd-analytic", "sedd-euler")
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.objective["graph"] = "sedd", "uniform"
    sedd.configure(cfg)
    assert cfg.model.time_conditioning
    cfg.train.schedule = "cosine"
    with pytest.raises(DlmError, match="uses the loglinear schedule"):
        sedd.configure(cfg)


def test_train_eval_sample_sedd_absorb(tmp_path):
    run = tmp_path / "sedd"
    proc = dlm(
        "train",
        "--preset",
        "tiny",
        "--objective",
        "sedd",
        "--graph",
        "absorb",
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
    assert report["objective"] == "sedd" and report["is_bound"] is True and report["mc_draws"] == 2
    assert 0 < report["nats_per_token"] < 12  # about log(V - 1) = 9.01 at initialisation
    assert "<=" in dlm("eval", run, "--max-sequences", 4, "--num-samples", 1).stdout
    out = dlm("sample", run, "--prompt", "Emma was", "--gen-length", 8, "--steps", 4, "--show-steps").stdout
    assert "[1/" in out and out.split("--- sample 0 ---\n")[1].startswith("Emma was")
    assert "░" not in out.split("--- sample 0 ---")[1]
    out = dlm("sample", run, "--gen-length", 8, "--steps", 4, "--sampler", "sedd-euler", "--num-samples", 2).stdout
    assert "--- sample 1 ---" in out
    proc = dlm("sample", run, "--sampler", "confidence", check=False)
    assert proc.returncode == 2 and "use one of: sedd-analytic, sedd-euler" in proc.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--objective", "sedd", "--graph", "ring"], "unknown graph 'ring'; choose one of: absorb, uniform"),
        (["--objective", "mdlm", "--graph", "uniform"], "--graph uniform applies to --objective sedd only"),
    ],
)
def test_bad_graph_gets_a_one_line_error(args, message, tmp_path):
    proc = dlm("train", "--preset", "tiny", "--max-steps", 1, "--out", tmp_path / "r", *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr
