"""Sampling the miniature: text-to-image with the project's ODE samplers in latent space, image-to-text greedily.

Text-to-image: start from x ~ N(0, I) [B, n_image, P] (one generator per call), integrate the probability-flow
ODE with ``dlm.samplers.ode`` (``ddim``: DDIM with eta = 0; ``dpmpp-2m``: DPM-Solver++(2M)) on a grid uniform in
lambda from ``T_MAX`` to ``T_MIN``, the denoiser guided by classifier-free guidance in the project's convention
(``dlm.samplers.ode.guided``: pred = cond + s (cond - uncond), the unconditional model given the empty caption;
each step then costs two model calls, and NFE counts the steps), then unpatchify, unscale and decode with the VAE.

Image-to-text: the image's latent tokens, then BOS, and the argmax token appended until EOS or the caption length.
"""

from __future__ import annotations

import torch

from dlm.multimodal.data import CaptionCodec
from dlm.multimodal.model import XFusion
from dlm.multimodal.vae import ConvVAE, unpatchify
from dlm.samplers.ode import ODE_SAMPLERS, guided, time_grid

T_MAX, T_MIN = 0.999, 1e-3  # lambda is finite on [T_MIN, T_MAX] for rectified flow
SAMPLERS = ("ddim", "dpmpp-2m")


@torch.no_grad()
def generate_latents(
    model: XFusion,
    codec: CaptionCodec,
    captions: list[str],
    *,
    sampler: str = "dpmpp-2m",
    steps: int = 8,
    guidance: float = 1.0,
    schedule: str = "rectified-flow",
    target: str = "flow",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Latent tokens [B, n_image, P] (scaled) for the captions."""
    model.eval()
    ids, valid = codec.encode(captions)  # (B, T)
    null_ids, null_valid = codec.encode([""] * len(captions))
    denoiser = guided(
        lambda x, t: model.denoise(x, t, ids, valid), lambda x, t: model.denoise(x, t, null_ids, null_valid), guidance
    )
    x = torch.randn((len(captions), model.n_image, model.patch_dim), generator=generator)  # (B, N, P)
    times = time_grid(steps, schedule=schedule, t_max=T_MAX, t_min=T_MIN, spacing="lambda")
    x, _ = ODE_SAMPLERS.get(sampler)(denoiser, x, times, schedule=schedule, target=target, generator=generator)
    return x


@torch.no_grad()
def decode_latents(vae: ConvVAE, tokens: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled latent tokens [B, N, P] -> images [B, 1, 8, 8] in [-1, 1]."""
    return vae.decode(unpatchify(tokens, vae.channels) / scale)


@torch.no_grad()
def generate_images(model, codec, vae: ConvVAE, scale: float, captions: list[str], **kw) -> torch.Tensor:
    """Text-to-image end to end: images [B, 1, 8, 8] in [-1, 1]; ``kw`` as ``generate_latents``."""
    return decode_latents(vae, generate_latents(model, codec, captions, **kw), scale)


@torch.no_grad()
def caption_images(model: XFusion, codec: CaptionCodec, latents: torch.Tensor, t: float = 0.0) -> list[str]:
    """Greedy captions of latent tokens [B, N, P] (at noise level t; 0 = clean), each up to its first EOS."""
    model.eval()
    B, T = latents.shape[0], codec.length
    ids = torch.full((B, T), codec.pad_id, dtype=torch.long)
    ids[:, 0] = codec.bos_id
    tt = torch.full((B,), t)
    done = torch.zeros(B, dtype=torch.bool)
    for k in range(T - 1):
        valid = ids != codec.pad_id  # (B, T)
        next_id = model.caption_logits(latents, tt, ids, valid)[:, k].argmax(-1)  # (B,)
        ids[:, k + 1] = torch.where(done, codec.pad_id, next_id)
        done |= next_id == codec.eos_id
        if done.all():
            break
    return [codec.decode([i for i in row[1:].tolist() if i != codec.pad_id]) for row in ids]
