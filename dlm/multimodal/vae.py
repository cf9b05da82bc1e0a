"""A small convolutional VAE for 8x8 digits: images [B, 1, 8, 8] in [-1, 1] <-> latents [B, C, 4, 4].

Encoder: conv 3x3 (1 -> 32), SiLU, conv 4x4 stride 2 (32 -> 64) to 4x4, SiLU, conv 1x1 to the mean and log-variance
of C channels. Decoder: conv 1x1 (C -> 64), SiLU, transposed conv 4x4 stride 2 to 8x8 (64 -> 32), SiLU, conv 3x3
(32 -> 1), tanh: every decoded image lies in [-1, 1] (``DATA_RANGE``). Loss: per-pixel squared error plus ``beta``
times the KL to N(0, I) per latent dimension (beta-VAE with a small beta: a near-deterministic autoencoder whose
latents stay centred and of bounded scale).

Diffusion runs on ``scale * mean`` (``latent_scale``: one over the standard deviation of the training latents, as
Stable Diffusion's 0.18215), cut into 2x2 patches: ``patchify`` turns [B, C, 4, 4] into 4 tokens of 4 C dimensions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvVAE(nn.Module):
    def __init__(self, channels: int = 2):
        super().__init__()
        self.channels = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.SiLU()
        )
        self.to_moments = nn.Conv2d(64, 2 * channels, 1)
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, 64, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 1, 3, padding=1),
            nn.Tanh(),
        )

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 1, 8, 8] -> (mean, logvar), each [B, C, 4, 4]."""
        mean, logvar = self.to_moments(self.encoder(images)).chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 6.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, 4, 4] -> images [B, 1, 8, 8] in [-1, 1]."""
        return self.decoder(latents)

    def loss(self, images: torch.Tensor, beta: float, generator: torch.Generator | None = None):
        """(loss, reconstruction MSE per pixel, KL per latent dimension), scalars."""
        mean, logvar = self.encode(images)
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator)  # (B, C, 4, 4)
        recon = F.mse_loss(self.decode(z), images)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return recon + beta * kl, recon, kl


def train_vae(
    images: torch.Tensor,
    *,
    channels: int = 2,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    beta: float = 1e-3,
    seed: int = 0,
) -> ConvVAE:
    """A ConvVAE fitted to ``images`` [N, 1, 8, 8] with Adam (cosine learning rate), in eval mode."""
    torch.manual_seed(seed)
    vae = ConvVAE(channels)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        loss, _, _ = vae.loss(images[idx], beta, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return vae.eval()


@torch.no_grad()
def vae_report(vae: ConvVAE, images: torch.Tensor, beta: float) -> dict:
    """Reconstruction MSE per pixel of the mean latent (data range [-1, 1]) and KL per latent dimension."""
    mean, logvar = vae.encode(images)
    recon = F.mse_loss(vae.decode(mean), images).item()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean().item()
    return {"recon_mse": recon, "kl_per_dim": kl, "beta": beta}


@torch.no_grad()
def latent_scale(vae: ConvVAE, images: torch.Tensor) -> float:
    """1 / std of the mean latents of ``images``: scaled latents have unit variance."""
    return 1.0 / vae.encode(images)[0].std().item()


def patchify(latents: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """[B, C, H, W] -> tokens [B, (H / p) (W / p), C p p], row-major over patches."""
    B, C, H, W = latents.shape
    x = latents.view(B, C, H // patch, patch, W // patch, patch)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // patch) * (W // patch), C * patch * patch)


def unpatchify(tokens: torch.Tensor, channels: int, size: int = 4, patch: int = 2) -> torch.Tensor:
    """The inverse of ``patchify``: tokens [B, N, C p p] -> [B, C, size, size]."""
    B = tokens.shape[0]
    n = size // patch
    x = tokens.view(B, n, n, channels, patch, patch)  # (B, h, w, C, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(B, channels, size, size)
