"""X-Fusion's dual tower in miniature, and the two baselines of its ablation, over one frozen dlm AR model.

One sequence holds caption tokens and image tokens (VAE latent patches) in the layout of an order
(``dlm.multimodal.masks``). Every variant embeds image tokens the same way (a linear map of the patch, a learned
position, the time embedding) and reads them out the same way (RMSNorm, a zero-initialised linear map to the
patch: the denoising head), and adds a per-layer time shift (zero-initialised) to the image positions before each
layer. They differ in what runs the layers:

- ``dual-tower`` (X-Fusion): every layer of the frozen text tower has a trainable twin, a copy of it, the vision
  block. Both blocks run on the whole sequence under the order's mask; text positions keep the text block's
  output, image positions the vision block's (X-Fusion's Eq. 2). Attention therefore spans both modalities at
  every layer: the vision block reads text features through its own projections, the text block reads image
  features through its frozen ones.
- ``single-tower``: the text model's own blocks, made trainable, process both modalities (fine-tuning the LM).
- ``dual-projection``: the frozen text blocks process both modalities and only the image projections (in, time,
  out) train: the issue's "frozen LM plus small trainable projections only".

Frozen means ``requires_grad = False`` on every parameter of the text model and no optimiser ever sees them, so
its output on text-only input cannot move: dual tower and dual projection keep the language model's text ability
exactly, by construction (tested bit for bit). Under ``t2i`` a caption position attends only to the caption
before it, so the text tower's features there are those of the text model alone.

The layers run through the backbone's ``layers()`` (the contract's hook for a twin tower); a block is called as
the backbone calls it, which a test checks by reproducing the model's own logits on text-only input.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from dlm.errors import DlmError
from dlm.models.llama import heads
from dlm.models.rope import rope_angles
from dlm.models.transformer import Transformer, timestep_embedding
from dlm.multimodal.masks import attention_mask, image_slots

VARIANTS = ("dual-tower", "single-tower", "dual-projection")


class XFusion(nn.Module):
    """``XFusion(text_model, variant, patch_dim, n_image)``: see the module docstring."""

    def __init__(self, text_model: Transformer, variant: str, patch_dim: int, n_image: int):
        super().__init__()
        if variant not in VARIANTS:
            raise DlmError(f"unknown multimodal variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        cfg = text_model.config
        if cfg.embed_dim or cfg.logits_shift or cfg.time_conditioning:
            raise DlmError("the text tower must be a plain AR model (no embed_dim, logits_shift or time conditioning)")
        self.variant, self.n_image, self.patch_dim = variant, n_image, patch_dim
        self.text = text_model.eval()
        if variant != "single-tower":
            self.text.requires_grad_(False)
        d = cfg.d_model
        self.vision = (
            nn.ModuleList(copy.deepcopy(b).requires_grad_(True) for b in text_model.layers())
            if variant == "dual-tower"
            else None
        )
        self.image_in = nn.Linear(patch_dim, d)
        self.image_pos = nn.Parameter(0.02 * torch.randn(n_image, d))
        self.time_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.time_shift = nn.ModuleList(nn.Linear(d, d) for _ in text_model.layers())
        self.image_norm = nn.RMSNorm(d)
        self.image_out = nn.Linear(d, patch_dim)
        for lin in (*self.time_shift, self.image_out):
            nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.variant != "single-tower":
            self.text.eval()  # frozen: always in inference mode
        return self

    def forward(
        self,
        order: str,
        text_ids: torch.Tensor,
        text_valid: torch.Tensor,
        image_tokens: torch.Tensor,
        t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """text_ids, text_valid [B, T]; image_tokens [B, N, P] (noised latents at t [B]) -> final features of the
        text positions [B, T, D] and of the image positions [B, N, D], in the order's layout."""
        B, T = text_ids.shape
        N = image_tokens.shape[1]
        cfg = self.text.config
        temb = self.time_mlp(timestep_embedding(t, 256))  # (B, D)
        text_h = self.text.embed(text_ids)  # (B, T, D)
        image_h = self.image_in(image_tokens) + self.image_pos + temb[:, None]  # (B, N, D)
        is_image = image_slots(order, T, N).to(text_ids.device)  # (L,)
        h = torch.cat([text_h, image_h] if order == "t2i" else [image_h, text_h], dim=1)  # (B, L, D)
        mask = attention_mask(order, text_valid, N)[:, None]  # (B, 1, L, L), broadcast over heads
        cos, sin = rope_angles(torch.arange(T + N), heads(cfg)[2], cfg.rope_base, self.text.rope_inv_freq)
        img = is_image[None, :, None]  # (1, L, 1)
        for i, block in enumerate(self.text.layers()):
            h = h + img * self.time_shift[i](temb)[:, None]  # (B, L, D): the image positions' time shift
            text_out = block(h, None, cos, sin, mask, False, None, i)  # (B, L, D)
            if self.vision is None:
                h = text_out
            else:
                h = torch.where(img, self.vision[i](h, None, cos, sin, mask, False, None, i), text_out)
        return h[:, ~is_image], h[:, is_image]  # (B, T, D), (B, N, D)

    def text_logits(self, text_features: torch.Tensor) -> torch.Tensor:
        """Final text features [B, T, D] -> logits [B, T, V]: the text model's final norm and head."""
        return self.text.logits(self.text.norm(text_features))

    def denoise(self, x_t, t, text_ids, text_valid) -> torch.Tensor:
        """Text-to-image: the prediction [B, N, P] for noised latent tokens x_t at t [B] given the captions."""
        _, image_h = self(  # (B, N, D)
            "t2i", text_ids, text_valid, x_t, t
        )
        return self.image_out(self.image_norm(image_h))

    def caption_logits(self, image_tokens, t, text_ids, text_valid) -> torch.Tensor:
        """Image-to-text: next-token logits [B, T, V] of the captions given (lightly noised) latent tokens at t."""
        text_h, _ = self("i2t", text_ids, text_valid, image_tokens, t)  # (B, T, D)
        return self.text_logits(text_h)
