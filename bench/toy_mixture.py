"""The 2-D data of the continuous-diffusion studies: a ring of Gaussians, its exact denoiser, a sample distance.

Data: K equally weighted components N(mu_k, s^2 I) in 2-D, mu_k = r (cos 2 pi k / K, sin 2 pi k / K), optionally
embedded in D dimensions as x = P z with P [D, 2] orthonormal columns (``random_embedding``). Under
x_t = alpha x0 + sigma eps the noisy data is again a mixture, of N(alpha mu_k, (alpha^2 s^2 + sigma^2) I) in the
plane (plus N(0, sigma^2) in the D - 2 directions off it, which say nothing about x0), so by Bayes' rule

    E[x0 | x_t] = P sum_k w_k(u) (mu_k + alpha s^2 / v (u - alpha mu_k)),   u = P^T x_t,  v = alpha^2 s^2 + sigma^2,
    w_k(u) = softmax_k(-||u - alpha mu_k||^2 / (2 v)),

exactly (``mixture_x0``). Sample sets are compared with the sliced 2-Wasserstein distance (``sliced_wasserstein``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dlm.noise.gaussian import GaussianSchedule, get_gaussian_schedule


@dataclass(frozen=True)
class Ring:
    """K components N(mu_k, s^2 I) at radius r in the plane."""

    components: int = 8
    radius: float = 1.0
    std: float = 0.1

    def means(self, dtype=torch.float64) -> torch.Tensor:
        angle = 2 * math.pi * torch.arange(self.components, dtype=dtype) / self.components  # (K,)
        return self.radius * torch.stack([angle.cos(), angle.sin()], dim=1)  # (K, 2)

    def sample(self, n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        k = torch.randint(self.components, (n,), generator=generator)  # (n,)
        return self.means(dtype)[k] + self.std * torch.randn(n, 2, generator=generator, dtype=dtype)  # (n, 2)


def random_embedding(dim: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """P [dim, 2] with orthonormal columns (P^T P = I), uniformly random: the Q of a Gaussian matrix's QR."""
    q, r = torch.linalg.qr(torch.randn(dim, 2, generator=generator, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))  # fix the signs so that the law is uniform (Haar)


def mixture_x0(
    x: torch.Tensor, t: torch.Tensor, ring: Ring, schedule: str | GaussianSchedule, embed: torch.Tensor | None = None
) -> torch.Tensor:
    """The exact E[x0 | x_t] for the (embedded) ring: x [B, D], t [B] (or a scalar) -> [B, D]."""
    schedule = get_gaussian_schedule(schedule)
    t = t.to(x.dtype).expand(x.shape[0])  # (B,)
    alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]  # (B, 1)
    u = x if embed is None else x @ embed.to(x.dtype)  # (B, 2): the in-plane coordinates
    mu = ring.means(x.dtype)  # (K, 2)
    var = alpha**2 * ring.std**2 + sigma**2  # (B, 1)
    dist2 = (u[:, None, :] - alpha[:, :, None] * mu).pow(2).sum(-1)  # (B, K): ||u - alpha mu_k||^2
    w = torch.softmax(-dist2 / (2 * var), dim=1)  # (B, K)
    shrink = alpha * ring.std**2 / var  # (B, 1)
    z0 = w @ mu + shrink * (u - alpha * (w @ mu))  # (B, 2): sum_k w_k (mu_k + shrink (u - alpha mu_k))
    return z0 if embed is None else z0 @ embed.to(x.dtype).T  # (B, D)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int = 180) -> torch.Tensor:
    """Sliced 2-Wasserstein distance between two equally sized 2-D samples [N, 2]:
    sqrt(mean over evenly spaced angles theta of W2^2 of the projections on (cos theta, sin theta)),
    each 1-D W2^2 the mean squared difference of the sorted projections."""
    if a.shape != b.shape or a.shape[1] != 2:
        raise ValueError(f"need two [N, 2] samples of the same size, got {tuple(a.shape)} and {tuple(b.shape)}")
    angle = math.pi * torch.arange(directions, dtype=torch.float64) / directions  # (M,)
    u = torch.stack([angle.cos(), angle.sin()], dim=1)  # (M, 2)
    pa = (a.double() @ u.T).sort(dim=0).values  # (N, M)
    pb = (b.double() @ u.T).sort(dim=0).values  # (N, M)
    return (pa - pb).pow(2).mean().sqrt()
