"""Attention masks of the two orders of one interleaved sequence (True = may attend).

- ``t2i`` (generation), ``[caption | image]``: the caption is causal (a text position sees itself and the text
  before it, so the frozen text tower computes exactly what it computes without any image); image tokens see every
  non-pad caption token and every image token (both ways).
- ``i2t`` (understanding), ``[image | caption]``: image tokens see the image only (both ways); a caption position
  sees the whole image and the caption up to itself, so next-token prediction reads the image.

Captions are padded on the right, so a causal text row never reaches a pad; only image rows need ``text_valid``.
"""

from __future__ import annotations

import torch

from dlm.errors import DlmError

ORDERS = ("t2i", "i2t")


def attention_mask(order: str, text_valid: torch.Tensor, n_image: int) -> torch.Tensor:
    """text_valid [B, T] bool (False at pads) -> mask [B, L, L] bool, L = T + n_image, in the order's layout."""
    if order not in ORDERS:
        raise DlmError(f"unknown order {order!r}; choose one of: {', '.join(ORDERS)}")
    B, T = text_valid.shape
    N, device = n_image, text_valid.device
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril().expand(B, T, T)  # (B, T, T)
    all_image = torch.ones(B, N, N, dtype=torch.bool, device=device)  # (B, N, N)
    if order == "t2i":
        text_rows = torch.cat([causal, torch.zeros(B, T, N, dtype=torch.bool, device=device)], dim=2)  # (B, T, L)
        image_rows = torch.cat([text_valid[:, None, :].expand(B, N, T), all_image], dim=2)  # (B, N, L)
        return torch.cat([text_rows, image_rows], dim=1)  # (B, L, L)
    image_rows = torch.cat([all_image, torch.zeros(B, N, T, dtype=torch.bool, device=device)], dim=2)  # (B, N, L)
    text_rows = torch.cat([torch.ones(B, T, N, dtype=torch.bool, device=device), causal], dim=2)  # (B, T, L)
    return torch.cat([image_rows, text_rows], dim=1)  # (B, L, L)


def image_slots(order: str, n_text: int, n_image: int) -> torch.Tensor:
    """[L] bool: True at the image positions of the order's layout."""
    is_image = torch.zeros(n_text + n_image, dtype=torch.bool)
    if order == "t2i":
        is_image[n_text:] = True
    else:
        is_image[:n_image] = True
    return is_image
