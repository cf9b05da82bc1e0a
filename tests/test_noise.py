import math

import pytest
import torch

from dlm.errors import DlmError
from dlm.noise import SCHEDULES, get_schedule, mask_tokens, sample_times


@pytest.mark.parametrize("name", ["linear", "loglinear", "cosine"])
def test_schedule_endpoints_and_derivative(name):
    s = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    alpha = s.alpha(t)
    (grad,) = torch.autograd.grad(alpha.sum(), t)
    torch.testing.assert_close(s.dalpha(t.detach()), grad)
    assert torch.all(alpha[1:] < alpha[:-1]), "alpha must decrease in t"
    assert s.alpha(torch.tensor(0.0)).item() == 1.0
    assert s.alpha(torch.tensor(1.0)).item() == pytest.approx(0.0, abs=1.001e-3)
    expected_w = -grad / (1 - alpha.detach())
    torch.testing.assert_close(s.weight(t.detach()), expected_w)


def test_closed_form_weights():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(get_schedule("linear").weight(t), 1 / t)
    torch.testing.assert_close(get_schedule("loglinear").weight(t), 1 / t)  # (1-eps) / ((1-eps) t)
    cos_w = (math.pi / 2) * torch.sin(math.pi * t / 2) / (1 - torch.cos(math.pi * t / 2))
    torch.testing.assert_close(get_schedule("cosine").weight(t), cos_w)
    assert get_schedule("loglinear").alpha(torch.tensor(1.0)).item() == pytest.approx(1e-3, rel=1e-4)


def test_unknown_schedule_lists_names():
    with pytest.raises(DlmError, match="linear, loglinear, cosine"):
        get_schedule("sqrt")
    assert SCHEDULES.names() == ["linear", "loglinear", "cosine"]


def test_antithetic_times_are_stratified(generator):
    n = 16
    t = sample_times(n, generator=generator, antithetic=True, t_min=0.0)
    u = torch.sort(t).values
    torch.testing.assert_close(u[1:] - u[:-1], torch.full((n - 1,), 1 / n), atol=1e-6, rtol=0)
    t2 = sample_times(1000, generator=generator, antithetic=True, t_min=1e-3)
    assert t2.min() >= 1e-3 and t2.max() <= 1.0


def test_mask_tokens_rate_and_values(generator):
    x0 = torch.randint(0, 50, (64, 512), generator=generator)
    t = torch.full((64,), 0.3)
    xt, masked = mask_tokens(x0, t, get_schedule("linear"), mask_id=99, generator=generator)
    assert masked.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(xt[masked], torch.full_like(xt[masked], 99))
    assert torch.equal(xt[~masked], x0[~masked])


@pytest.mark.parametrize("name", ["linear", "loglinear", "cosine"])
def test_time_of_inverts_alpha(name):
    s = get_schedule(name)
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    torch.testing.assert_close(s.time_of(s.alpha(t)), t)
