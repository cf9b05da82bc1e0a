"""Smoke tests of the continuous-diffusion studies in bench/: their criteria and toys on hand-made inputs with exact
answers, and each pipeline at a toy size. The studies themselves are run by hand (docs/CONTINUOUS.md)."""

import math
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import memorization  # noqa: E402
import ode_samplers  # noqa: E402
import prediction_targets  # noqa: E402
from toy_mixture import Ring, mixture_x0, random_embedding, sliced_wasserstein  # noqa: E402

from dlm.noise.gaussian import get_gaussian_schedule  # noqa: E402

# --- memorisation ------------------------------------------------------------------------------------------------


def test_copy_criterion_on_hand_made_points():
    train = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # d1 / d2 = 1/9 (copy), 2/8 (copy), 3/7 (not), 4/6 (not); the third point is far from all (not)
    samples = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    assert memorization.copy_fraction(samples, train) == 0.5
    assert memorization.copy_fraction(train, train) == 1.0  # every training point copies itself
    assert memorization.copy_fraction(torch.tensor([[5.0, 5.0]]), train) == 0.0


def test_crossings_checkpoints_and_fit():
    steps = [100, 200, 400]
    assert memorization.log_interp_crossing(steps, [0.0, 0.05, 0.15], 0.1, above=True) == pytest.approx(200 * 2**0.5)
    assert memorization.log_interp_crossing(steps, [0.0, 0.05, 0.08], 0.1, above=True) is None
    assert memorization.log_interp_crossing(steps, [1.0, 0.5, 0.5], 0.5, above=False) == pytest.approx(200)
    assert memorization.checkpoints(100, 400) == [100, 141, 200, 283, 400]
    fit = memorization.linear_fit([64.0, 128.0, 256.0], [3 * 64 + 5, 3 * 128 + 5, 3 * 256 + 5])
    assert fit["slope"] == pytest.approx(3) and fit["intercept"] == pytest.approx(5) and fit["r2"] == pytest.approx(1)


def test_time_scales_from_hand_made_curves():
    steps = [100, 200, 400, 800]
    runs = [
        {"n": n, "step": steps, "f_mem": f, "test_loss": loss}
        for n, f, loss in [
            (64, [0.0, 0.1, 0.3, 0.5], [0.5, 0.4, 0.45, 0.5]),  # min 0.4 at 200; f_mem reaches 0.1 at 200
            (128, [0.0, 0.0, 0.1, 0.3], [0.5, 0.4, 0.3, 0.35]),  # min 0.3 at 400; f_mem 0.1 at 400
            (256, [0.0, 0.0, 0.0, 0.1], [0.5, 0.4, 0.3, 0.2]),  # min 0.2 at 800; f_mem 0.1 at 800
        ]
    ]
    fits = memorization.summarise(runs, mem_threshold=0.1, gen_tol=0.0)
    assert [r["tau_mem"] for r in runs] == pytest.approx([200, 400, 800])
    assert [r["tau_opt"] for r in runs] == [200, 400, 800]
    assert fits["common_level"] == 0.4 and [r["tau_common"] for r in runs] == pytest.approx([200, 200, 200])
    assert fits["tau_mem"]["exponent"] == pytest.approx(1) and fits["tau_mem"]["linear"]["r2"] == pytest.approx(1)
    assert fits["tau_common"]["exponent"] == pytest.approx(0, abs=1e-12)


def test_empirical_denoiser_snaps_to_the_training_set_and_its_samples_are_copies():
    g = torch.Generator().manual_seed(0)
    train = 2 * torch.rand(6, 16, generator=g) - 1  # (6, 16)
    t = torch.full((6,), 1e-3)
    s = get_gaussian_schedule(memorization.SCHEDULE)
    x_t = s.alpha(t)[:, None] * train + s.sigma(t)[:, None] * 0.1 * torch.randn(6, 16, generator=g)
    torch.testing.assert_close(memorization.empirical_x0(x_t, t, train).float(), train, atol=1e-4, rtol=0)
    denoiser = lambda x, t: memorization.empirical_x0(x, t, train).float()  # noqa: E731
    times = memorization.time_grid(20, schedule=s, t_max=1.0, t_min=1e-3)
    out, _ = memorization.ddim_sample(denoiser, torch.randn(32, 16, generator=g), times, schedule=s, target="x0")
    assert memorization.copy_fraction(out, train) == 1.0


def test_memorisation_pipeline_at_toy_size():
    g = torch.Generator().manual_seed(0)
    pool, held_out = torch.rand(16, 64, generator=g) * 2 - 1, torch.rand(10, 64, generator=g) * 2 - 1
    args = Namespace(
        width=32,
        depth=2,
        lr=1e-3,
        batch=8,
        samples=16,
        sample_steps=4,
        first=10,
        max_steps=20,
        stop_at=0.3,
        mem_threshold=0.1,
        gen_tol=0.05,
        seed=0,
    )
    run = memorization.train_and_watch(8, pool, held_out, args, log=lambda *_: None)
    assert run["step"] == [10, 14, 20] and all(0.0 <= f <= 1.0 for f in run["f_mem"])
    memorization.summarise([run], args.mem_threshold, args.gen_tol)
    assert run["tau_opt"] in run["step"] and math.isfinite(run["best_test_loss"])
    fixed = memorization.FixedLoss(held_out, seed=3)
    model = memorization.build_mlp(64, 32, 2, seed=0)
    assert fixed(model) == fixed(model)  # deterministic: the same noise and times every call


# --- prediction targets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 16, 512])
def test_random_embedding_has_orthonormal_columns(dim):
    p = random_embedding(dim, torch.Generator().manual_seed(dim))
    assert p.shape == (dim, 2)
    torch.testing.assert_close(p.T @ p, torch.eye(2, dtype=p.dtype))


def test_exact_denoiser_samples_stay_on_the_plane_and_quality_is_zero_on_data():
    ring, g = Ring(), torch.Generator().manual_seed(0)
    embed = random_embedding(16, g)
    exact = lambda x, t: mixture_x0(x.double(), t, ring, "vp-linear", embed).float()  # noqa: E731
    x = prediction_targets.sample(exact, "x0", 16, 256, 10, g)  # (256, 16)
    assert prediction_targets.quality(x, embed, ring.sample(256, g))["off"] < 1e-5
    z = ring.sample(64, g)
    assert prediction_targets.quality(z @ embed.T, embed, z) == pytest.approx({"sw": 0.0, "off": 0.0}, abs=1e-6)


def test_prediction_targets_pipeline_at_toy_size():
    out = prediction_targets.run(
        [4], steps=3, batch=16, width=16, weightings=["snr+1", "own"], n=64, sample_steps=4, seed=0, log=lambda *_: None
    )
    res = out["results"]
    assert set(res["own"]["4"]) == {"x0", "eps", "v"}
    assert res["own"]["4"]["v"]["same_run_as"] == "snr+1"  # v's own MSE is the snr+1 weighting: trained once
    assert all(math.isfinite(res["snr+1"]["4"][t]["final_loss"]) for t in ("x0", "eps", "v"))


# --- the mixture and the samplers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [None, 16])
def test_exact_mixture_denoiser_matches_a_monte_carlo_estimate(dim):
    """E[x0 | x_t] = E_{x0 ~ data}[x0 N(x_t; alpha x0, sigma^2)] / E[N(x_t; alpha x0, sigma^2)], estimated with
    200k data draws (self-normalised weights)."""
    ring, g, s = Ring(), torch.Generator().manual_seed(1), get_gaussian_schedule("vp-linear")
    embed = None if dim is None else random_embedding(dim, g)
    x0 = ring.sample(200_000, g)  # (M, 2)
    x0 = x0 if embed is None else x0 @ embed.T  # (M, D)
    for t_val in (0.2, 0.4):
        t = torch.tensor(t_val, dtype=torch.float64)
        alpha, sigma = s.alpha(t), s.sigma(t)
        x_t = alpha * x0[:4] + sigma * torch.randn(x0[:4].shape, generator=g, dtype=torch.float64)  # (4, D)
        logw = -torch.cdist(x_t, alpha * x0).pow(2) / (2 * sigma**2)  # (4, M)
        mc = torch.softmax(logw, dim=1) @ x0  # (4, D)
        exact = mixture_x0(x_t, t.expand(4), ring, s, embed)
        torch.testing.assert_close(exact, mc, atol=0.01, rtol=0)  # observed: ~2e-3


def test_sliced_wasserstein_of_a_shift_is_its_length_over_root_two():
    a = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.tensor([3.0, -4.0], dtype=torch.float64)  # length 5
    assert sliced_wasserstein(a, a).item() == 0.0
    assert sliced_wasserstein(a, a + shift).item() == pytest.approx(5 / 2**0.5)
    with pytest.raises(ValueError):
        sliced_wasserstein(a, a[:10])


def test_ode_sampler_study_at_toy_size():
    assert ode_samplers.steps_for("heun", 5) == 2 and ode_samplers.steps_for("ddim", 5) == 5
    nfes = [10, 20, 40]
    assert ode_samplers.observed_order(nfes, [1 / n**2 for n in nfes]) == pytest.approx(2)
    out = ode_samplers.run(200, 40, [4, 16], seed=0)
    assert len(out["runs"]) == len(ode_samplers.SAMPLERS) * len(ode_samplers.SPACINGS)
    for row in out["runs"]:
        assert row["solution_error"][1] < row["solution_error"][0], row  # more steps, closer to the reference
