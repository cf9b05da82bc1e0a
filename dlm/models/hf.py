"""Hugging Face Llama-family layouts (``model_type`` llama, qwen2) as dlm model configs and state dicts.

``model_config_from_hf(config_dict)`` reads a ``config.json`` dict into a ``ModelConfig`` with ``arch = "llama"``;
``state_dict_from_hf(state_dict, config)`` renames the tensors onto the dlm Transformer's names (one-line errors for
a key that is missing or left over). Nothing here downloads anything or imports ``transformers``.
"""

from __future__ import annotations

import torch

from dlm.config import ModelConfig
from dlm.errors import DlmError

LLAMA_FAMILY = ("llama", "qwen2")

# Hugging Face name (with {i} for the layer) -> dlm name
_LAYER_KEYS = {
    "model.layers.{i}.self_attn.q_proj.weight": "blocks.{i}.attn.q_proj.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blocks.{i}.attn.k_proj.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blocks.{i}.attn.v_proj.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blocks.{i}.attn.q_proj.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "blocks.{i}.attn.k_proj.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "blocks.{i}.attn.v_proj.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "blocks.{i}.attn.o_proj.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blocks.{i}.mlp.gate_proj.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blocks.{i}.mlp.up_proj.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blocks.{i}.mlp.down_proj.weight",
    "model.layers.{i}.input_layernorm.weight": "blocks.{i}.norm1.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blocks.{i}.norm2.weight",
}
_TOP_KEYS = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "head.weight",
}


def model_config_from_hf(hf: dict, *, causal: bool = True) -> ModelConfig:
    """A ``ModelConfig`` (arch llama) from a Llama / Qwen2 ``config.json`` dict."""
    model_type = hf.get("model_type")
    if model_type not in LLAMA_FAMILY:
        raise DlmError(f"model_type {model_type!r} is not a Llama-family layout; dlm reads: {', '.join(LLAMA_FAMILY)}")
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind not in ("default", "llama3"):
        raise DlmError(f"rope scaling {kind!r} is not supported; dlm reads: default, llama3")
    theta = hf.get("rope_theta", scaling.get("rope_theta", 10000.0))
    n_heads = hf["num_attention_heads"]
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        causal=causal,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_base=float(theta),
        arch="llama",
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        qkv_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    )
    if kind == "llama3":
        cfg.rope_scaling, cfg.rope_factor = "llama3", float(scaling["factor"])
        cfg.rope_low_freq_factor = float(scaling["low_freq_factor"])
        cfg.rope_high_freq_factor = float(scaling["high_freq_factor"])
        cfg.rope_original_max_len = int(scaling["original_max_position_embeddings"])
    return cfg


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a Llama-family state dict onto the dlm Transformer (checkpoint names: ``embed.weight`` for the table).
    A key that maps nowhere, or a dlm tensor that no key gives, is a one-line ``DlmError``."""
    names = dict(_TOP_KEYS)
    for i in range(cfg.n_layers):
        names.update({hf.format(i=i): ours.format(i=i) for hf, ours in _LAYER_KEYS.items()})
    out, unknown = {}, []
    for key, tensor in hf_state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # derived from the config, not a weight
        if key not in names:
            unknown.append(key)
            continue
        out[names[key]] = tensor
    if unknown:
        raise DlmError(
            f"{len(unknown)} tensors do not map onto a {cfg.n_layers}-layer Llama-family model, e.g. {unknown[0]!r}"
        )
    if cfg.tie_embeddings:
        out.pop("head.weight", None)  # the head is the embedding table
    needed = {names[k] for k in names if "bias" not in k or cfg.qkv_bias}
    needed -= {"head.weight"} if cfg.tie_embeddings else set()
    missing = sorted(needed - set(out))
    if missing:
        raise DlmError(f"the checkpoint lacks {len(missing)} tensors of the model, e.g. {missing[0]!r}")
    return out


def transformer_from_hf(hf_config: dict, hf_state: dict[str, torch.Tensor], *, causal: bool = True):
    """A dlm ``Transformer`` holding a Llama / Qwen2 checkpoint's weights (``causal=False``: the same weights with
    bidirectional attention)."""
    from dlm.models.transformer import Transformer

    cfg = model_config_from_hf(hf_config, causal=causal)
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(state_dict_from_hf(hf_state, cfg), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "head.weight")]
    if missing or unexpected:  # state_dict_from_hf checked the names; this catches a shape mismatch's aftermath
        raise DlmError(f"the checkpoint does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
