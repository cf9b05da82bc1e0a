"""Gaussian diffusion: schedules, targets and their conversions, the regression loss, ODE samplers, CFG and
consistency distillation, checked against data N(mu, s^2 I), for which every denoiser and ODE map is closed form."""

import itertools
import math

import pytest
import torch

from dlm.errors import DlmError
from dlm.noise.gaussian import (
    GAUSSIAN_SCHEDULES,
    TARGETS,
    GaussianSchedule,
    add_noise,
    convert,
    get_gaussian_schedule,
    target_coefficients,
)
from dlm.objectives.consistency import consistency_distillation_loss, consistency_function
from dlm.objectives.gaussian import WEIGHTINGS, gaussian_loss, x0_loss_factor
from dlm.samplers.ode import ODE_SAMPLERS, ddpm_sample, euler_sample, flow_euler_sample, guided, time_grid

SCHEDULES = ["vp-linear", "vp-cosine", "rectified-flow", "vp-sqrt"]
MU = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)  # data: N(MU, S^2 I) in 3 dimensions
S = 0.5


def exact_x0(x, t, schedule):
    """E[x0 | x_t] = mu + (alpha s^2 / (alpha^2 s^2 + sigma^2)) (x_t - alpha mu) for Gaussian data."""
    alpha, sigma, mu = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None], MU.to(x.dtype)
    return mu + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * mu)


def exact_denoiser(schedule, target):
    schedule = get_gaussian_schedule(schedule)
    return lambda x, t: convert(exact_x0(x, t, schedule), "x0", target, x, t, schedule)


def marginal(schedule, t: float):
    """(mean, std) of x_t per coordinate: N(alpha mu, alpha^2 s^2 + sigma^2)."""
    t = torch.tensor(t, dtype=torch.float64)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return alpha * MU, (alpha**2 * S**2 + sigma**2).sqrt()


def exact_ode_map(x, schedule, t_from: float, t_to: float):
    """The PF-ODE keeps (x_t - mean_t) / std_t fixed for Gaussian data: an affine map."""
    (m_from, s_from), (m_to, s_to) = marginal(schedule, t_from), marginal(schedule, t_to)
    return m_to + s_to / s_from * (x - m_from)


# --- schedules -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_derivatives_ends_and_lambda(name):
    s = get_gaussian_schedule(name)
    t = torch.linspace(0.01, 0.99, 40, dtype=torch.float64, requires_grad=True)
    alpha, sigma = s.alpha(t), s.sigma(t)
    (d_alpha,) = torch.autograd.grad(alpha.sum(), t)
    (d_sigma,) = torch.autograd.grad(sigma.sum(), t)
    t = t.detach()
    torch.testing.assert_close(s.dalpha(t), d_alpha)
    torch.testing.assert_close(s.dsigma(t), d_sigma)
    assert torch.all(s.lam(t)[1:] < s.lam(t)[:-1]), "lambda must decrease in t"
    torch.testing.assert_close(s.snr(t), torch.exp(2 * s.lam(t)))
    torch.testing.assert_close(s.lam(t), torch.log(alpha.detach() / sigma.detach()))
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert abs(s.alpha(ends)[0] - 1) < 1e-4 and 0 <= s.sigma(ends)[0] < 0.02  # t = 0: (almost) clean
    assert 0 <= s.alpha(ends)[1] < 0.01 and abs(s.sigma(ends)[1] - 1) < 1e-4  # t = 1: (almost) pure noise
    if name.startswith("vp"):
        torch.testing.assert_close(alpha.detach() ** 2 + sigma.detach() ** 2, torch.ones_like(t))


def test_pf_ode_pieces_closed_forms():
    t = torch.linspace(0.01, 0.99, 25, dtype=torch.float64)
    lin = get_gaussian_schedule("vp-linear")
    beta = 0.1 + t * (20.0 - 0.1)
    torch.testing.assert_close(lin.f(t), -beta / 2)  # d log alpha / dt = -beta / 2
    torch.testing.assert_close(lin.g2(t), beta)  # VP: g^2 = beta
    rf = get_gaussian_schedule("rectified-flow")
    torch.testing.assert_close(rf.f(t), -1 / (1 - t))
    torch.testing.assert_close(rf.g2(t), 2 * t / (1 - t))
    cos = get_gaussian_schedule("vp-cosine")
    rate = cos.phi_1 - cos.phi_0
    torch.testing.assert_close(cos.g2(t), 2 * rate * torch.tan(cos.phi(t)))  # beta(t) of the cosine schedule
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert cos.sigma(ends)[0].item() == pytest.approx(math.sin(0.008 / 1.008 * math.pi / 2))  # N&D offset s
    assert cos.alpha(ends)[1].item() == pytest.approx(1e-4)  # clipped short of pi / 2


@pytest.mark.parametrize("name", SCHEDULES)
def test_time_of_lambda_inverts_lambda_and_matches_bisection(name):
    s = get_gaussian_schedule(name)
    t = torch.linspace(0.02, 0.98, 13, dtype=torch.float64)
    lam = s.lam(t)
    torch.testing.assert_close(s.time_of_lambda(lam), t)
    torch.testing.assert_close(GaussianSchedule.time_of_lambda(s, lam), t)  # the generic bisection agrees


def test_add_noise_and_unknown_names_list_the_choices():
    x0 = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    s = get_gaussian_schedule("vp-cosine")
    x_t, eps = add_noise(x0, t, s, torch.Generator().manual_seed(1))
    x_t2, _ = add_noise(x0, t, "vp-cosine", torch.Generator().manual_seed(1))
    assert torch.equal(x_t, x_t2) and x_t.shape == eps.shape == x0.shape
    torch.testing.assert_close(x_t, s.alpha(t)[:, None, None] * x0 + s.sigma(t)[:, None, None] * eps)
    assert GAUSSIAN_SCHEDULES.names() == SCHEDULES
    with pytest.raises(DlmError, match="vp-linear, vp-cosine, rectified-flow"):
        get_gaussian_schedule("sqrt")
    with pytest.raises(DlmError, match="eps, x0, v, score, flow"):
        target_coefficients("noise", t, s)
    with pytest.raises(DlmError, match="ddpm, ddim, dpmpp-2m, euler, heun, flow-euler"):
        ODE_SAMPLERS.get("unipc")
    with pytest.raises(DlmError, match="x0, snr"):
        gaussian_loss(lambda x, t: x, x0, weighting="p2")


# --- targets, conversions, loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_conversion_round_trips_and_maps_true_targets(name):
    s = get_gaussian_schedule(name)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=torch.float64)  # (B,)
    x0, eps = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    x_t = s.alpha(t)[:, None] * x0 + s.sigma(t)[:, None] * eps
    truth = {
        k: target_coefficients(k, t, s)[0][:, None] * x0 + target_coefficients(k, t, s)[1][:, None] * eps
        for k in TARGETS
    }
    y = torch.randn(4, 6, generator=g, dtype=torch.float64)  # an arbitrary prediction
    for a, b in itertools.product(TARGETS, TARGETS):
        back = convert(convert(y, a, b, x_t, t, s), b, a, x_t, t, s)
        torch.testing.assert_close(back, y, rtol=1e-9, atol=1e-9, msg=f"{a} -> {b} -> {a} on {name}")
        torch.testing.assert_close(convert(truth[a], a, b, x_t, t, s), truth[b], rtol=1e-9, atol=1e-9)


def test_design_coefficients_and_loss_factors():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    rf, vp = get_gaussian_schedule("rectified-flow"), get_gaussian_schedule("vp-cosine")
    A, B = target_coefficients("flow", t, rf)
    assert torch.equal(A, -torch.ones_like(t)) and torch.equal(B, torch.ones_like(t))
    torch.testing.assert_close(x0_loss_factor("eps", t, vp), vp.snr(t))
    torch.testing.assert_close(x0_loss_factor("v", t, vp), 1 + vp.snr(t))
    torch.testing.assert_close(x0_loss_factor("flow", t, rf), 1 / t**2)
    torch.testing.assert_close(x0_loss_factor("x0", t, rf), torch.ones_like(t))


@pytest.mark.parametrize("name", SCHEDULES)
def test_each_target_error_is_the_x0_error_times_its_factor(name):
    s = get_gaussian_schedule(name)
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0.05, 0.4, 0.8], dtype=torch.float64)
    x0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    x_t, eps = add_noise(x0, t, s, g)
    x0_hat = x0 + 0.3 * torch.randn(3, 5, generator=g, dtype=torch.float64)  # any x0 prediction
    x0_err = (x0_hat - x0).pow(2).sum(1)
    for target in TARGETS:
        A, B = target_coefficients(target, t, s)
        err = (convert(x0_hat, "x0", target, x_t, t, s) - (A[:, None] * x0 + B[:, None] * eps)).pow(2).sum(1)
        torch.testing.assert_close(err, x0_loss_factor(target, t, s) * x0_err, msg=target)


@pytest.mark.parametrize("target", list(TARGETS))
def test_gaussian_loss_runs_trains_and_is_deterministic(target):
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Linear(4, 3)
    model = lambda x, t: net(torch.cat([x, t[:, None]], 1))  # noqa: E731
    x0 = MU.float() + S * torch.randn(64, 3, generator=g)
    out = gaussian_loss(model, x0, schedule="vp-linear", target=target, generator=torch.Generator().manual_seed(1))
    again = gaussian_loss(model, x0, schedule="vp-linear", target=target, generator=torch.Generator().manual_seed(1))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss) and out.loss.item() == again.loss.item()
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    weighted = gaussian_loss(model, x0, schedule="vp-linear", target=target, weighting="min-snr-5", generator=g)
    assert torch.isfinite(weighted.loss)


@pytest.mark.parametrize("name", SCHEDULES)
def test_weightings_mean_the_same_for_every_target(name):
    """With one x0 predictor seen through each target, weighting 'x0' gives one loss for all targets."""
    x0 = MU + S * torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = get_gaussian_schedule(name)
    x0_model = lambda x, t: exact_x0(x, t, s) + 0.1 * torch.sin(3 * x)  # noqa: E731  (not exact: nonzero error)

    def loss(target, weighting):
        model = lambda x, t: convert(x0_model(x, t), "x0", target, x, t, s)  # noqa: E731
        gen = torch.Generator().manual_seed(1)
        return gaussian_loss(model, x0, schedule=s, target=target, weighting=weighting, generator=gen).loss.item()

    x0_loss = loss("x0", None)
    for target in TARGETS:
        assert loss(target, "x0") == pytest.approx(x0_loss, rel=1e-5), target
    assert loss("x0", "snr") == pytest.approx(loss("eps", None), rel=1e-5)  # eps-MSE = SNR-weighted x0-MSE
    assert set(WEIGHTINGS) == {"x0", "snr", "snr+1", "min-snr-5"}


@pytest.mark.parametrize("target", ["eps", "v", "flow"])
def test_exact_denoiser_x0_error_is_the_posterior_variance(target):
    s = get_gaussian_schedule("vp-cosine")
    n, t = 20000, 0.3
    x0 = MU + S * torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = torch.full((n,), t, dtype=torch.float64)
    out = gaussian_loss(
        exact_denoiser(s, target), x0, schedule=s, target=target, t=times, generator=torch.Generator().manual_seed(1)
    )
    alpha, sigma = s.alpha(times[0]), s.sigma(times[0])
    posterior_var = S**2 * sigma**2 / (alpha**2 * S**2 + sigma**2)  # Var(x0 | x_t) per coordinate
    # mean of 3n squared Gaussians: relative standard error sqrt(2 / 3n) = 0.6%
    assert out.metrics["x0_mse"].item() == pytest.approx(posterior_var.item(), rel=4 * math.sqrt(2 / (3 * n)))


# --- samplers -------------------------------------------------------------------------------------------------------

ORDER_CASES = [  # sampler, schedule, target, t_max, t_min, grid spacing, order
    ("ddim", "vp-linear", "eps", 1.0, 1e-3, "time", 1),
    ("euler", "vp-cosine", "score", 1.0, 1e-3, "time", 1),
    ("flow-euler", "rectified-flow", "flow", 1.0, 0.0, "time", 1),
    ("dpmpp-2m", "vp-linear", "x0", 1.0, 1e-3, "lambda", 2),
    ("dpmpp-2m", "vp-cosine", "v", 1.0, 1e-3, "lambda", 2),
    ("heun", "vp-cosine", "v", 1.0, 1e-3, "time", 2),
    ("heun", "rectified-flow", "x0", 0.999, 1e-3, "time", 2),
]


@pytest.mark.parametrize("sampler,name,target,t_max,t_min,spacing,order", ORDER_CASES)
def test_ode_sampler_converges_to_the_exact_map_at_its_order(sampler, name, target, t_max, t_min, spacing, order):
    """Gaussian data: the PF-ODE map from t_max to t_min is affine and known; doubling the steps divides the error
    by about 2^order."""
    s = get_gaussian_schedule(name)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_ode_map(x, s, t_max, t_min)
    errors = []
    for steps in (32, 64, 128):
        times = time_grid(steps, schedule=s, t_max=t_max, t_min=t_min, spacing=spacing)
        out, nfe = ODE_SAMPLERS.get(sampler)(exact_denoiser(s, target), x.clone(), times, schedule=s, target=target)
        assert nfe == (2 * steps if sampler == "heun" else steps)
        errors.append((out - exact).abs().max().item())
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    low, high = (0.8, 1.3) if order == 1 else (1.6, 2.5)
    assert all(low < o < high for o in orders), (errors, orders)


def test_euler_on_the_pf_ode_equals_flow_euler():
    """f x - g^2 score / 2 and alpha' x0_hat + sigma' eps_hat are the same drift."""
    s = get_gaussian_schedule("vp-cosine")
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = time_grid(10, t_max=1.0, t_min=1e-3)
    a, _ = euler_sample(exact_denoiser(s, "eps"), x, times, schedule=s, target="eps")
    b, _ = flow_euler_sample(exact_denoiser(s, "flow"), x, times, schedule=s, target="flow")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_ddpm_samples_follow_their_exact_gaussian_law():
    """From x_1 ~ N(0, I), each DDPM step is affine in x plus Gaussian noise, so its output law is Gaussian with a
    mean and variance we can propagate exactly (from q(x_s | x_t, x0) written as mean and variance); the samples
    must match it within standard errors, and the law approaches the data's as the steps grow."""
    s = get_gaussian_schedule("vp-linear")
    n, steps = 20000, 100
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    out, nfe = ddpm_sample(exact_denoiser(s, "eps"), x, time_grid(steps), schedule=s, target="eps", generator=g)

    def law(steps):
        mean, var = torch.zeros(3, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
        times = time_grid(steps)
        for t, u in zip(times[:-1], times[1:]):  # step t -> u
            a_t, s_t, a_u, s_u = s.alpha(t), s.sigma(t), s.alpha(u), s.sigma(u)
            var_tu = s_t**2 - (a_t / a_u) ** 2 * s_u**2  # variance of q(x_t | x_u)
            c_x, c_0 = (a_t / a_u) * s_u**2 / s_t**2, a_u * var_tu / s_t**2  # posterior mean coefficients
            k = a_t * S**2 / (a_t**2 * S**2 + s_t**2)  # x0_hat = mu + k (x - a_t mu)
            mean = (c_x + c_0 * k) * mean + c_0 * (1 - k * a_t) * MU
            var = (c_x + c_0 * k) ** 2 * var + var_tu * s_u**2 / s_t**2
        return mean, var.sqrt()

    mean, std = law(steps)
    assert nfe == steps
    assert torch.all((out.mean(0) - mean).abs() < 4 * std / math.sqrt(n))
    assert torch.all((out.std(0) - std).abs() < 4 * std / math.sqrt(2 * n))
    data_mean, data_std = marginal(s, 1e-3)
    mean_fine, std_fine = law(2000)
    assert (std_fine - data_std).abs() < 0.003 and (mean_fine - data_mean).abs().max() < 0.003
    assert (std - data_std).abs() > (std_fine - data_std).abs()  # 100 steps: DDPM under-disperses a little


def test_time_grid_spacings():
    s = get_gaussian_schedule("vp-linear")
    times = time_grid(8, schedule=s, t_max=1.0, t_min=1e-3, spacing="lambda")
    assert times[0] == 1.0 and times[-1] == 1e-3 and torch.all(times[1:] < times[:-1])
    gaps = s.lam(times).diff()
    torch.testing.assert_close(gaps, gaps.mean().expand(8))
    with pytest.raises(DlmError, match="time, lambda"):
        time_grid(8, spacing="karras")
    with pytest.raises(DlmError, match="at least 1"):
        time_grid(0)


def test_eps_cannot_give_x0_where_alpha_is_zero():
    s = get_gaussian_schedule("rectified-flow")
    with pytest.raises(DlmError, match="predict x0, v or flow"):
        flow_euler_sample(
            exact_denoiser(s, "eps"),
            torch.zeros(2, 3, dtype=torch.float64),
            time_grid(4, t_max=1.0, t_min=0.0),
            schedule=s,
            target="eps",
        )


def test_classifier_free_guidance_scale_zero_is_exactly_the_conditional_model():
    g = torch.Generator().manual_seed(0)
    W_c, W_u = torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g)
    cond, uncond = (lambda x, t: x @ W_c + t[:, None]), (lambda x, t: x @ W_u - t[:, None])
    x, t = torch.randn(16, 3, generator=g), torch.rand(16, generator=g)
    assert torch.equal(guided(cond, uncond, 0.0)(x, t), cond(x, t))
    u, c = uncond(x, t), cond(x, t)
    torch.testing.assert_close(guided(cond, uncond, 2.0)(x, t), c + 2.0 * (c - u))  # LLaDA's cond + s (cond - uncond)
    torch.testing.assert_close(guided(cond, uncond, 2.0)(x, t), u + 3.0 * (c - u))  # = w-form with w = s + 1
    with pytest.raises(DlmError, match=">= 0"):
        guided(cond, uncond, -1.0)
    s = get_gaussian_schedule("vp-cosine")  # inside a sampler: s = 0 samples exactly like the conditional model
    times = time_grid(5)
    a, _ = ODE_SAMPLERS.get("ddim")(guided(cond, uncond, 0.0), x, times, schedule=s, target="eps")
    b, _ = ODE_SAMPLERS.get("ddim")(cond, x, times, schedule=s, target="eps")
    assert torch.equal(a, b)


# --- consistency distillation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_consistency_function_is_the_identity_at_t_min(name, dtype):
    s = get_gaussian_schedule(name)
    g = torch.Generator().manual_seed(0)
    F = lambda x, t: 5 * torch.tanh(x) + 3.0  # noqa: E731  (anything finite)
    x = torch.randn(8, 3, generator=g, dtype=dtype)
    t_min = 2e-3
    t = torch.full((8,), t_min, dtype=dtype)
    assert torch.equal(consistency_function(F, x, t, schedule=s, t_min=t_min), x)
    later = consistency_function(F, x, t + 0.5, schedule=s, t_min=t_min)
    assert not torch.allclose(later, x)  # c_out > 0 away from t_min


def test_consistency_distillation_loss_trains_the_student_only():
    s = get_gaussian_schedule("vp-cosine")
    student, ema = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    ema.load_state_dict(student.state_dict())
    net = lambda m: lambda x, t: m(torch.cat([x, t[:, None]], 1))  # noqa: E731
    x0 = MU.float() + S * torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    times = time_grid(18, t_max=1.0, t_min=2e-3)

    def loss():
        return consistency_distillation_loss(
            net(student),
            net(ema),
            exact_denoiser(s, "v"),
            x0,
            times,
            schedule=s,
            teacher_target="v",
            generator=torch.Generator().manual_seed(1),
        ).loss

    out = loss()
    assert torch.isfinite(out) and out.item() == loss().item()
    out.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in ema.parameters())
