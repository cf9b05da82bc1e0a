"""One transformer backbone for every objective: RoPE, pre-norm, SDPA with boolean masks.

The model knows nothing about diffusion. Attention is bidirectional or causal (``ModelConfig.causal``, overridable
per call) or any boolean mask; ``t`` is used only when the model was built with ``time_conditioning`` (adaLN, as in
DiT). Its contract, the only way code outside ``dlm/models`` uses it:

    model(x, t=None, *, attn_mask=None, causal=None, positions=None, kv_cache=None) -> logits [B, L, V]
    model.new_cache(batch, max_len) -> KVCache        preallocated keys/values for incremental decoding
    model.embed(ids [B, L]) -> [B, L, E]               token embeddings
    model.embedding_weight -> [V, E]                   the embedding table (Diffusion-LM clamps to it)
    model.forward_embeds(z [B, L, E], t=None, **kw) -> features [B, L, E], the continuous input path
    model.logits(h [B, L, E]) -> [B, L, V]              the head
    model.layers() -> list of blocks                   for per-block wrapping (FSDP, checkpointing, twin towers)

with ``model.logits(model.forward_embeds(model.embed(x), t)) == model(x, t)``. E is ``ModelConfig.embed_dim`` when
it is > 0 (a low-dimensional embedding table, E -> d_model and d_model -> E projections around the blocks, the head
E -> V), else d_model (no projections). Gaussian diffusion on embeddings (Diffusion-LM) uses the continuous path;
``call_method(model, "forward_embeds", z, t)`` runs it through DDP / torch.compile wrappers (see there), ``unwrap``
reaches the model inside them.

A model with ``ModelConfig.logits_shift`` (Dream; an AR model adapted to diffusion) computes the logits of
position i at position i - 1 and shifts them back inside ``logits``: the contract is unchanged, but a call that
runs only part of the sequence gets the right logits from its second position on (a cache window starts one
token early; see ``CanvasCache``).

Caches: a ``KVCache`` (``new_cache``) makes causal and block-causal decoding incremental, writing into buffers
allocated once; a ``CanvasCache`` lets a bidirectional model re-run only part of a fixed-length canvas (Fast-dLLM's
prefix and dual caches). Checkpoints keep the key ``embed.weight`` for the embedding table (module ``tok_embed``).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlm.config import ModelConfig, check_architecture
from dlm.errors import DlmError, DlmTypeError
from dlm.models.llama import GroupedQueryAttention, SwiGLU, heads
from dlm.models.rope import apply_rope, rope_angles, rope_inv_freq


class KVCache:
    """Keys and values of past positions for causal and block-causal decoding, preallocated.

    ``KVCache(n_layers, max_len, batch=None)``, usually from ``model.new_cache(batch, max_len)``: per layer one key
    and one value buffer [B, H, max_len, Dh], allocated on the layer's first write (the dtype and device of that
    call's keys: the autocast dtype when there is one) and never again; ``length`` positions are filled. A call
    writes its n keys and values into the slots ``length .. length + n - 1`` and attends to views of the filled part
    and its own (no ``torch.cat`` per token); ``keep`` of them (all by default) stay, the others are scratch that the
    next call overwrites. Writing past ``max_len`` is an error. For inference: the buffers are written in place.
    """

    def __init__(self, n_layers: int, max_len: int, batch: int | None = None):
        if n_layers < 1 or max_len < 1:
            raise ValueError(f"a KVCache needs n_layers >= 1 and max_len >= 1, got {n_layers} and {max_len}")
        self.max_len, self.batch = max_len, batch
        self._keys: list[torch.Tensor | None] = [None] * n_layers  # [B, H, max_len, Dh] each, once written
        self._values: list[torch.Tensor | None] = [None] * n_layers
        self._filled = [0] * n_layers

    @property
    def length(self) -> int:
        """Positions stored (in every layer once a call is through)."""
        return min(self._filled)

    offset = length  # position of the call's first token

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored keys and values of ``layer``, views [B, H, T, Dh] into its buffers (None before any write)."""
        if self._keys[layer] is None:
            return None
        T = self._filled[layer]
        return self._keys[layer][:, :, :T], self._values[layer][:, :, :T]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, keep: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's k, v [B, H, n, Dh] of ``layer`` after the stored ones and return views of all of them
        [B, H, T + n, Dh]; the first ``keep`` (default n; 0 = attend only) stay stored."""
        B, H, n, Dh = k.shape
        keep = n if keep is None else keep
        if not 0 <= keep <= n:
            raise ValueError(f"keep must be in [0, {n}] (this call's positions), got {keep}")
        T = self._filled[layer]
        if T + n > self.max_len:
            raise ValueError(
                f"KVCache overflow: {T} positions stored and {n} more do not fit in max_len {self.max_len}; "
                "make the cache with a larger max_len (model.new_cache(batch, max_len))"
            )
        if self._keys[layer] is None:
            if self.batch is not None and B != self.batch:
                raise ValueError(f"this KVCache is for a batch of {self.batch} rows, got {B}")
            self._keys[layer] = k.new_empty(B, H, self.max_len, Dh)
            self._values[layer] = v.new_empty(B, H, self.max_len, Dh)
        buf_k, buf_v = self._keys[layer], self._values[layer]
        if (B, H, Dh) != (buf_k.shape[0], buf_k.shape[1], buf_k.shape[3]) or k.dtype != buf_k.dtype:
            raise ValueError(
                f"keys of shape {tuple(k.shape)} ({k.dtype}) do not fit this KVCache's buffers "
                f"{tuple(buf_k.shape)} ({buf_k.dtype}): one cache per batch, model and dtype"
            )
        buf_k[:, :, T : T + n] = k
        buf_v[:, :, T : T + n] = v
        self._filled[layer] = T + keep
        return buf_k[:, :, : T + n], buf_v[:, :, : T + n]


class CanvasCache:
    """Keys and values of every position of a fixed-length canvas, for bidirectional models (Fast-dLLM).

    With ``window = None`` a call runs the whole canvas and stores its keys and values. With ``window = (start,
    end)`` a call runs only the tokens ``x[:, start:end]``: their keys and values replace those slots, and their
    queries attend to the whole canvas, the other slots as last stored. ``(start, canvas end)`` is the prefix
    cache (the prefix is reused), a block's ``(start, end)`` the dual cache (prefix and suffix are reused). Reused
    slots are stale once tokens elsewhere change: that is the approximation, refreshed by a whole-canvas call.
    A shifted model (``logits_shift``) needs the token before a block in its window: ``(start - 1, end)``.
    """

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}  # layer -> [B, H, T, Dh]
        self.values: dict[int, torch.Tensor] = {}
        self.window: tuple[int, int] | None = None
        self.clean: torch.Tensor | None = None  # [B, T]: which slots held an unmasked token (clean-causal models)

    def clean_keys(self, clean: torch.Tensor) -> torch.Tensor:
        """Record which tokens of this call are unmasked (bool [B, L]) in their slots; -> the whole canvas's [B, T]."""
        if self.window is None:
            self.clean = clean.clone()
            return self.clean
        start, end = self.window
        if self.clean is None or end - start != clean.shape[1]:
            raise ValueError(
                f"window {self.window} needs a stored canvas and {end - start} tokens, got {clean.shape[1]}"
            )
        self.clean[:, start:end] = clean
        return self.clean

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
        eps = cfg.norm_eps or None
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=eps)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=eps)
        if cfg.arch == "llama":  # grouped-query attention and SwiGLU (dlm.models.llama)
            self.attn, self.mlp = GroupedQueryAttention(cfg), SwiGLU(cfg)
        else:
            self.attn = Attention(cfg)
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


_EMBED_KEY, _EMBED_MODULE = "embed.weight", "tok_embed.weight"  # the table's name in checkpoints / in the module


def _checkpoint_names(module, state_dict, prefix, local_metadata) -> None:
    """state_dict() post-hook: the embedding table under its checkpoint name ``embed.weight`` (order kept)."""
    if prefix + _EMBED_MODULE in state_dict:
        items = [(prefix + _EMBED_KEY if k == prefix + _EMBED_MODULE else k, v) for k, v in state_dict.items()]
        state_dict.clear()
        state_dict.update(items)


def _module_names(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors) -> None:
    """load_state_dict() pre-hook: ``embed.weight`` of a checkpoint into ``tok_embed``."""
    if prefix + _EMBED_KEY in state_dict:
        state_dict[prefix + _EMBED_MODULE] = state_dict.pop(prefix + _EMBED_KEY)


def _report_checkpoint_names(module, incompatible_keys) -> None:
    """load_state_dict() post-hook: missing keys under their checkpoint names too."""
    missing = incompatible_keys.missing_keys
    missing[:] = [k[: -len(_EMBED_MODULE)] + _EMBED_KEY if k.endswith(_EMBED_MODULE) else k for k in missing]


_ENTRIES = ("forward_embeds",)  # the methods ``call_method`` may run through a wrapper's forward


def check_token_ids(x, vocab_size: int | None, what: str = "x") -> None:
    """One-line errors unless ``x`` is an integer tensor [B, L] of ids in [0, vocab_size) (None: any id). The range
    costs a host sync: it is checked on the CPU, and elsewhere outside autograd (sampling, evaluation), so that a
    training step on an accelerator never waits for it (an id out of range fails there in the embedding)."""
    if not isinstance(x, torch.Tensor):
        raise DlmTypeError(f"{what} must be a tensor [B, L] of token ids, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise DlmTypeError(f"{what} must hold integer token ids (torch.long), got {x.dtype}")
    if x.dim() != 2:
        hint = f"; a single sequence needs a batch dimension: {what}[None]" if x.dim() == 1 else ""
        raise DlmError(f"{what} must be [B, L] (a batch of token sequences), got shape {tuple(x.shape)}{hint}")
    checkable = x.device.type == "cpu" or not torch.is_grad_enabled()
    if vocab_size is None or not x.numel() or not checkable or torch.compiler.is_compiling():
        return
    low, high = x.aminmax()
    low, high = int(low), int(high)
    if low < 0 or high >= vocab_size:
        raise DlmError(
            f"{what} holds the token id {low if low < 0 else high}, outside the model's vocabulary [0, {vocab_size})"
        )


class Transformer(nn.Module):
    """The backbone; its contract is in the module docstring."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        try:
            check_architecture(cfg)
        except DlmError as e:
            raise ValueError(str(e)) from None
        if cfg.clean_causal and not 0 <= cfg.mask_id < cfg.vocab_size:
            raise ValueError(f"model.clean_causal needs model.mask_id, the mask token's id, got {cfg.mask_id}")
        self.config = cfg
        width = cfg.embed_dim or cfg.d_model  # E, the width of the token-embedding space
        self.tok_embed = nn.Embedding(cfg.vocab_size, width)  # ``embed.weight`` in state dicts (the hooks below)
        self.in_proj = nn.Linear(width, cfg.d_model) if cfg.embed_dim else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps or None)
        # RoPE frequencies (Dh / 2,), float32: a plain tensor, not a buffer, so that .to(dtype) never rounds them
        self.rope_inv_freq = rope_inv_freq(cfg)
        self.out_proj = nn.Linear(cfg.d_model, width) if cfg.embed_dim else None
        self.head = nn.Linear(width, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_embed.weight
        if cfg.time_conditioning:
            self.time_mlp = nn.Sequential(nn.Linear(256, cfg.d_model), nn.SiLU(), nn.Linear(cfg.d_model, cfg.d_model))
            self.final_ada = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        # checkpoints keep the key ``embed.weight`` of the table (the name ``embed`` is the method now)
        self.register_state_dict_post_hook(_checkpoint_names)
        self.register_load_state_dict_pre_hook(_module_names)
        self.register_load_state_dict_post_hook(_report_checkpoint_names)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = (
                    0.02 / math.sqrt(2 * self.config.n_layers)
                    if name.endswith(("out.weight", "mlp.2.weight", "o_proj.weight", "down_proj.weight"))
                    else 0.02
                )
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        for block in self.blocks:
            if block.ada is not None:
                nn.init.zeros_(block.ada.weight), nn.init.zeros_(block.ada.bias)
        if self.config.time_conditioning:
            nn.init.zeros_(self.final_ada.weight), nn.init.zeros_(self.final_ada.bias)
        if self.config.embed_dim:  # a low-dimensional embedding space of unit scale (Diffusion-LM's N(0, 1) init)
            nn.init.normal_(self.tok_embed.weight, std=1.0)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embed.weight.numel() if exclude_embeddings else n

    # --- the contract --------------------------------------------------------------------------------------------

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty ``KVCache`` for ``batch`` rows and up to ``max_len`` positions, one buffer pair per layer."""
        return KVCache(len(self.blocks), max_len, batch)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> their embeddings [B, L, E]."""
        return self.tok_embed(ids)

    @property
    def embedding_weight(self) -> torch.Tensor:
        """The embedding table [V, E] (a parameter: gradients reach it)."""
        return self.tok_embed.weight

    def layers(self) -> list[nn.Module]:
        """The transformer blocks in order, for code that works per block (FSDP wrapping, activation
        checkpointing, a twin tower); what a block computes is not part of the contract."""
        return list(self.blocks)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Features [B, L, E] (what ``forward_embeds`` returns) -> logits [B, L, V]: the head. With
        ``logits_shift`` the head's output at i - 1 becomes the logits of position i (position 0 keeps its own,
        which score nothing: a fixed token stands there)."""
        out = self.head(h)
        if self.config.logits_shift:
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        return out

    def clean_causal_mask(self, x: torch.Tensor, attn_mask: torch.Tensor | None, kv_cache) -> torch.Tensor:
        """bool [B, L, T] of ``ModelConfig.clean_causal`` for tokens x [B, L] (True = attend): an unmasked query
        attends to the unmasked keys at or before it, a masked query to every unmasked key and to itself; and with
        ``attn_mask`` (e.g. padding) as well. A ``CanvasCache`` supplies which of its other slots are unmasked; a
        query left with no key keeps itself (no NaN rows)."""
        if isinstance(kv_cache, KVCache):
            raise ValueError("a clean-causal model decodes without a cache or with a CanvasCache, not a KVCache")
        clean = x != self.config.mask_id  # (B, L)
        past = 0 if kv_cache is None else kv_cache.offset
        keys = clean if kv_cache is None else kv_cache.clean_keys(clean)  # (B, T)
        L, T = x.shape[1], keys.shape[1]
        query_pos = past + torch.arange(L, device=x.device)
        key_pos = torch.arange(T, device=x.device)
        before = key_pos[None, :] <= query_pos[:, None]  # (L, T)
        itself = key_pos[None, :] == query_pos[:, None]
        mask = torch.where(clean[:, :, None], keys[:, None, :] & before, keys[:, None, :] | itself)  # (B, L, T)
        if attn_mask is not None:
            mask = mask & (attn_mask if attn_mask.dim() == 3 else attn_mask[None])
            mask = mask | (itself & ~mask.any(-1, keepdim=True))
        return mask

    def forward_embeds(
        self,
        z: torch.Tensor,
        t: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        positions: torch.Tensor | None = None,
        kv_cache: KVCache | CanvasCache | None = None,
    ) -> torch.Tensor:
        """Vectors z [B, L, E] in the token-embedding space -> features [B, L, E], the head's input; the keyword
        arguments are ``forward``'s."""
        B, L = z.shape[:2]
        device = z.device
        causal = self.config.causal if causal is None else causal
        if causal and isinstance(kv_cache, CanvasCache):
            raise ValueError("a CanvasCache is for bidirectional attention; causal decoding uses a KVCache")
        past = 0 if kv_cache is None else kv_cache.offset
        if positions is None:
            positions = torch.arange(past, past + L, device=device)
        cos, sin = rope_angles(positions, heads(self.config)[2], self.config.rope_base, self.rope_inv_freq)

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

        h = z if self.in_proj is None else self.in_proj(z)  # (B, L, D)
        for i, block in enumerate(self.blocks):
            h = block(h, cond, cos, sin, mask, is_causal, kv_cache, i)
        h = self.norm(h)
        if cond is not None:
            shift, scale = self.final_ada(F.silu(cond))[:, None].chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        return h if self.out_proj is None else self.out_proj(h)  # (B, L, E)

    def forward(
        self,
        x: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        positions: torch.Tensor | None = None,
        kv_cache: KVCache | CanvasCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        _entry: str | None = None,
    ) -> torch.Tensor:
        """x: LongTensor [B, L] -> logits [B, L, V]. t: [B] in [0, 1] (time-conditioned models only); attn_mask:
        bool, True = attend, [Lq, Lk] or [B, Lq, Lk] (Lk counts cached keys too); positions: RoPE positions [L] or
        [B, L] (default: counted from the cache's offset). ``inputs_embeds`` is a deprecated alias of
        ``forward_embeds``; ``_entry`` is for ``call_method`` only."""
        kw = dict(attn_mask=attn_mask, causal=causal, positions=positions, kv_cache=kv_cache)
        if _entry is not None:  # call_method: a contract method run inside a wrapper's (DDP's, compile's) forward
            if _entry not in _ENTRIES:
                raise ValueError(f"call_method runs one of {', '.join(_ENTRIES)}, not {_entry!r}")
            return getattr(self, _entry)(x, t, **kw)
        if inputs_embeds is not None or x is None:
            if (x is None) == (inputs_embeds is None):
                raise ValueError("pass either token ids x or inputs_embeds, not both or neither")
            warnings.warn(
                "model(None, t, inputs_embeds=z) is deprecated: call model.forward_embeds(z, t), which "
                "returns the same features",
                DeprecationWarning,
                stacklevel=2,
            )
            return self.forward_embeds(inputs_embeds, t, **kw)
        check_token_ids(x, self.config.vocab_size)
        if self.config.clean_causal:
            kw["attn_mask"] = self.clean_causal_mask(x, attn_mask, kv_cache)
        past = 0 if kv_cache is None else kv_cache.offset
        if positions is None and past + x.shape[1] > self.config.max_seq_len:
            raise DlmError(
                f"{past + x.shape[1]} positions exceed the model's context of {self.config.max_seq_len} tokens "
                "(model.max_seq_len); shorten the input"
            )
        return self.logits(self.forward_embeds(self.embed(x), t, **kw))  # (B, L, V)


def unwrap(model):
    """The model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers; ``model`` if none."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def call_method(model, name: str, *args, **kwargs):
    """``unwrap(model).<name>(*args, **kwargs)`` for ``name`` = ``forward_embeds``, through the wrappers.

    A wrapped model is called as ``model(*args, _entry=name, **kwargs)``, so the method runs inside the wrappers'
    forward: torch.compile compiles it, and DDP arms its gradient all-reduce for the backward that follows (DDP
    only reduces after a forward of its own; a direct call of ``model.module.forward_embeds`` would leave every
    gradient of that step unsynchronised across processes). An unwrapped model is called directly, so any object
    with the method (a test double) works.
    """
    if unwrap(model) is model:
        return getattr(model, name)(*args, **kwargs)
    return model(*args, _entry=name, **kwargs)
