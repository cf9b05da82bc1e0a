"""One transformer backbone for every objective: RoPE, pre-norm, SDPA with boolean masks.

The model knows nothing about diffusion: ``model(x, t=None) -> logits [B, L, V]``. Attention is bidirectional or
causal (``ModelConfig.causal``, overridable per call) or any boolean mask; ``t`` is used only when the model was
built with ``time_conditioning`` (adaLN, as in DiT). A ``KVCache`` makes causal decoding incremental; a
``CanvasCache`` lets a bidirectional model re-run only part of a fixed-length canvas (Fast-dLLM's prefix and dual
caches).

Continuous input path: ``model(None, t, inputs_embeds=z)`` takes float vectors z [B, L, E] in the token-embedding
space instead of ids and returns features of the same shape, the ones the head turns into logits, so that
``model.head(model(None, t, inputs_embeds=model.embed(x))) == model(x, t)``. E is ``ModelConfig.embed_dim`` when it
is > 0 (a low-dimensional embedding table, E -> d_model and d_model -> E projections around the blocks, the head
E -> V), else d_model (no projections). Gaussian diffusion on embeddings (Diffusion-LM) uses this path.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlm.config import ModelConfig


class KVCache:
    """Keys and values of past positions, one (k, v) pair per layer, each [B, H, T, Dh]: each call appends."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    offset = length  # position of the call's first token

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v of ``layer`` after the cached ones and return all of them."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class CanvasCache:
    """Keys and values of every position of a fixed-length canvas, for bidirectional models (Fast-dLLM).

    With ``window = None`` a call runs the whole canvas and stores its keys and values. With ``window = (start,
    end)`` a call runs only the tokens ``x[:, start:end]``: their keys and values replace those slots, and their
    queries attend to the whole canvas, the other slots as last stored. ``(start, canvas end)`` is the prefix
    cache (the prefix is reused), a block's ``(start, end)`` the dual cache (prefix and suffix are reused). Reused
    slots are stale once tokens elsewhere change: that is the approximation, refreshed by a whole-canvas call.
    """

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}  # layer -> [B, H, T, Dh]
        self.values: dict[int, torch.Tensor] = {}
        self.window: tuple[int, int] | None = None

    @property
    def offset(self) -> int:
        return 0 if self.window is None else self.window[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.window is None:  # own copies (v is a view into the qkv projection), written into later
            self.keys[layer], self.values[layer] = k.contiguous(), v.contiguous()
            return k, v
        start, end = self.window
        if layer not in self.keys or end - start != k.shape[2]:
            raise ValueError(f"window {self.window} needs a stored canvas and {end - start} tokens, got {k.shape[2]}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer], self.values[layer]


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of RoPE for integer ``positions`` [L] or [B, L] -> each [L, Dh] or [B, 1, L, Dh]."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (..., L, Dh/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., L, Dh)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, L, Dh), broadcast over heads
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, mask, is_causal, cache: KVCache | CanvasCache | None, layer: int):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, L, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, T, Dh): the cached and this call's
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, Dh)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(approximate="tanh"), nn.Linear(cfg.d_ff, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)
        # adaLN: shift, scale, gate for attention and MLP from the time embedding; zero-init = identity at start
        self.ada = nn.Linear(cfg.d_model, 6 * cfg.d_model) if cfg.time_conditioning else None

    def forward(self, x, cond, cos, sin, mask, is_causal, cache, layer):
        if self.ada is None:
            x = x + self.drop(self.attn(self.norm1(x), cos, sin, mask, is_causal, cache, layer))
            return x + self.drop(self.mlp(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)[:, None].chunk(6, dim=-1)  # (B, 1, D) each
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.drop(self.attn(h, cos, sin, mask, is_causal, cache, layer))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.drop(self.mlp(h))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Transformer(nn.Module):
    """``model(x, t=None, *, inputs_embeds=None, attn_mask=None, causal=None, positions=None, kv_cache=None)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise ValueError(f"d_model {cfg.d_model} must split into {cfg.n_heads} heads of even size")
        self.config = cfg
        width = cfg.embed_dim or cfg.d_model  # E, the width of the token-embedding space
        self.embed = nn.Embedding(cfg.vocab_size, width)
        self.in_proj = nn.Linear(width, cfg.d_model) if cfg.embed_dim else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, width) if cfg.embed_dim else None
        self.head = nn.Linear(width, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        if cfg.time_conditioning:
            self.time_mlp = nn.Sequential(nn.Linear(256, cfg.d_model), nn.SiLU(), nn.Linear(cfg.d_model, cfg.d_model))
            self.final_ada = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * self.config.n_layers) if name.endswith(("out.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        for block in self.blocks:
            if block.ada is not None:
                nn.init.zeros_(block.ada.weight), nn.init.zeros_(block.ada.bias)
        if self.config.time_conditioning:
            nn.init.zeros_(self.final_ada.weight), nn.init.zeros_(self.final_ada.bias)
        if self.config.embed_dim:  # a low-dimensional embedding space of unit scale (Diffusion-LM's N(0, 1) init)
            nn.init.normal_(self.embed.weight, std=1.0)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    def forward(
        self,
        x: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        positions: torch.Tensor | None = None,
        kv_cache: KVCache | CanvasCache | None = None,
    ) -> torch.Tensor:
        """x: LongTensor [B, L] -> logits [B, L, V]; or x = None and inputs_embeds: float [B, L, E] -> features
        [B, L, E] (the head's input). t: [B] in [0, 1] (time-conditioned models only); attn_mask: bool, True =
        attend, [Lq, Lk] or [B, Lq, Lk] (Lk counts cached keys too); positions: RoPE positions [L] or [B, L]
        (default: counted from the cache's offset)."""
        if (x is None) == (inputs_embeds is None):
            raise ValueError("pass either token ids x or inputs_embeds, not both or neither")
        h = self.embed(x) if inputs_embeds is None else inputs_embeds  # (B, L, E)
        B, L = h.shape[:2]
        device = h.device
        causal = self.config.causal if causal is None else causal
        if causal and isinstance(kv_cache, CanvasCache):
            raise ValueError("a CanvasCache is for bidirectional attention; causal decoding uses a KVCache")
        past = 0 if kv_cache is None else kv_cache.offset
        if positions is None:
            positions = torch.arange(past, past + L, device=device)
        cos, sin = rope_angles(positions, self.config.d_model // self.config.n_heads, self.config.rope_base)

        mask, is_causal = attn_mask, False
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]  # (B, 1, Lq, Lk), broadcast over heads
        if causal:
            if past == 0 and mask is None:
                is_causal = True  # SDPA's fused causal path
            elif L > 1:
                keys = torch.arange(past + L, device=device)
                causal_mask = keys[None, :] <= (past + torch.arange(L, device=device))[:, None]  # (L, T + L)
                mask = causal_mask if mask is None else mask & causal_mask

        cond = None
        if self.config.time_conditioning:
            if t is None:
                raise ValueError("this model is time-conditioned: pass t, a [B] tensor of times in [0, 1]")
            cond = self.time_mlp(timestep_embedding(t.expand(B) if t.dim() == 0 else t, 256))  # (B, D)

        if self.in_proj is not None:
            h = self.in_proj(h)  # (B, L, D)
        for i, block in enumerate(self.blocks):
            h = block(h, cond, cos, sin, mask, is_causal, kv_cache, i)
        h = self.norm(h)
        if cond is not None:
            shift, scale = self.final_ada(F.silu(cond))[:, None].chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        if self.out_proj is not None:
            h = self.out_proj(h)  # (B, L, E)
        return h if inputs_embeds is not None else self.head(h)  # (B, L, E) or (B, L, V)
