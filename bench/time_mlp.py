"""The denoiser of the continuous-diffusion studies: an MLP on vectors, told the time t in every layer.

    h_1 = SiLU(W_1 x + U_1 e(t)),  h_{l+1} = SiLU(W_{l+1} h_l + U_{l+1} e(t)),  out = W_o h_depth,

with e(t) = (sin f_j t, cos f_j t), j = 1..F, frequencies log-spaced from 1 to 1000. It knows nothing about
diffusion: ``model(x [B, D], t [B]) -> [B, D]`` is whatever target the objective trains it on.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TimeMLP(nn.Module):
    def __init__(self, dim: int, width: int = 256, depth: int = 4, frequencies: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), frequencies)))  # (F,)
        self.layers = nn.ModuleList([nn.Linear(dim if i == 0 else width, width) for i in range(depth)])
        self.time = nn.ModuleList([nn.Linear(2 * frequencies, width, bias=False) for _ in range(depth)])
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ft = t.to(self.freqs.dtype)[:, None] * self.freqs  # (B, F)
        e = torch.cat([ft.sin(), ft.cos()], dim=1).to(x.dtype)  # (B, 2F)
        h = x
        for layer, time in zip(self.layers, self.time):
            h = nn.functional.silu(layer(h) + time(e))  # (B, width)
        return self.out(h)  # (B, D)


def build_mlp(dim: int, width: int, depth: int, seed: int) -> TimeMLP:
    """A TimeMLP whose initial weights depend on ``seed`` only (the global RNG is restored afterwards)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TimeMLP(dim, width, depth)
