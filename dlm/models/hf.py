"""Hugging Face Llama-family layouts as dlm model configs and state dicts.

``model_type`` llama and qwen2 (causal LMs), ``Dream`` (Dream-org's spelling: the Qwen2 layout, bidirectional, with
shifted logits) and ``llada`` (LLaDA's OLMo-style names: ``model.transformer.wte``, ``blocks.{i}.q_proj`` ...).
``model_config_from_hf(config_dict)`` reads a ``config.json`` dict into a ``ModelConfig`` with ``arch = "llama"``;
``state_dict_from_hf(state_dict, config, layout)`` renames the tensors onto the dlm Transformer's names (one-line
errors for a key that is missing or left over); ``state_dict_to_hf`` is its inverse (export). Nothing here downloads
anything or imports ``transformers``.
"""

from __future__ import annotations

import torch

from dlm.config import ModelConfig
from dlm.errors import DlmError

LLAMA_FAMILY = ("llama", "qwen2", "Dream", "llada")
LAYOUTS = {"llama": "llama", "qwen2": "llama", "Dream": "llama", "llada": "llada"}  # model_type -> key names

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
_LLADA_LAYER_KEYS = {
    "model.transformer.blocks.{i}.q_proj.weight": "blocks.{i}.attn.q_proj.weight",
    "model.transformer.blocks.{i}.k_proj.weight": "blocks.{i}.attn.k_proj.weight",
    "model.transformer.blocks.{i}.v_proj.weight": "blocks.{i}.attn.v_proj.weight",
    "model.transformer.blocks.{i}.q_proj.bias": "blocks.{i}.attn.q_proj.bias",
    "model.transformer.blocks.{i}.k_proj.bias": "blocks.{i}.attn.k_proj.bias",
    "model.transformer.blocks.{i}.v_proj.bias": "blocks.{i}.attn.v_proj.bias",
    "model.transformer.blocks.{i}.attn_out.weight": "blocks.{i}.attn.o_proj.weight",
    "model.transformer.blocks.{i}.ff_proj.weight": "blocks.{i}.mlp.gate_proj.weight",
    "model.transformer.blocks.{i}.up_proj.weight": "blocks.{i}.mlp.up_proj.weight",
    "model.transformer.blocks.{i}.ff_out.weight": "blocks.{i}.mlp.down_proj.weight",
    "model.transformer.blocks.{i}.attn_norm.weight": "blocks.{i}.norm1.weight",
    "model.transformer.blocks.{i}.ff_norm.weight": "blocks.{i}.norm2.weight",
}
_LLADA_TOP_KEYS = {
    "model.transformer.wte.weight": "embed.weight",
    "model.transformer.ln_f.weight": "norm.weight",
    "model.transformer.ff_out.weight": "head.weight",
}
_KEYS = {"llama": (_LAYER_KEYS, _TOP_KEYS), "llada": (_LLADA_LAYER_KEYS, _LLADA_TOP_KEYS)}


def _names(cfg: ModelConfig, layout: str) -> dict[str, str]:
    """Hugging Face name -> dlm name for every tensor of a ``cfg``-shaped model in ``layout``."""
    layer_keys, top_keys = _KEYS[layout]
    names = dict(top_keys)
    for i in range(cfg.n_layers):
        names.update({hf.format(i=i): ours.format(i=i) for hf, ours in layer_keys.items()})
    return names


def model_config_from_hf(hf: dict, *, causal: bool | None = None) -> ModelConfig:
    """A ``ModelConfig`` (arch llama) from a ``config.json`` dict of ``LLAMA_FAMILY``. ``causal`` defaults to the
    model's own attention: causal for llama and qwen2, bidirectional for Dream and LLaDA; Dream has
    ``logits_shift``."""
    model_type = hf.get("model_type")
    if model_type not in LLAMA_FAMILY:
        raise DlmError(f"model_type {model_type!r} is not a layout dlm reads; it reads: {', '.join(LLAMA_FAMILY)}")
    if model_type == "llada":
        cfg = _llada_config(hf)
    else:
        cfg = _llama_config(hf, model_type)
    cfg.causal = model_type in ("llama", "qwen2") if causal is None else causal
    cfg.logits_shift = model_type == "Dream"
    return cfg


def _llama_config(hf: dict, model_type: str) -> ModelConfig:
    if hf.get("use_sliding_window"):
        raise DlmError("sliding-window attention (use_sliding_window) is not supported; dlm attends everywhere")
    if hf.get("hidden_act", "silu") != "silu":
        raise DlmError(f"hidden_act {hf['hidden_act']!r} is not supported; the Llama family uses silu")
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
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_base=float(theta),
        arch="llama",
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        qkv_bias=bool(hf.get("attention_bias", model_type in ("qwen2", "Dream"))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    )
    if kind == "llama3":
        cfg.rope_scaling, cfg.rope_factor = "llama3", float(scaling["factor"])
        cfg.rope_low_freq_factor = float(scaling["low_freq_factor"])
        cfg.rope_high_freq_factor = float(scaling["high_freq_factor"])
        cfg.rope_original_max_len = int(scaling["original_max_position_embeddings"])
    return cfg


def _llada_config(hf: dict) -> ModelConfig:
    """LLaDA's OLMo-style config: d_model, n_heads, n_kv_heads, mlp_hidden_size, ... (block_type llama only)."""
    unsupported = {
        "block_type": (hf.get("block_type", "llama"), "llama"),
        "activation_type": (hf.get("activation_type", "silu"), "silu"),
        "layer_norm_type": (hf.get("layer_norm_type", "rms"), "rms"),
        "include_bias": (bool(hf.get("include_bias", False)), False),
        "input_emb_norm": (bool(hf.get("input_emb_norm", False)), False),
        "scale_logits": (bool(hf.get("scale_logits", False)), False),
        "rope": (bool(hf.get("rope", True)), True),
        "alibi": (bool(hf.get("alibi", False)), False),
    }
    for key, (value, want) in unsupported.items():
        if value != want:
            raise DlmError(f"LLaDA config {key}={value!r} is not supported; dlm reads {key}={want!r}")
    d_model, n_heads = hf["d_model"], hf["n_heads"]
    return ModelConfig(
        vocab_size=hf.get("embedding_size") or hf["vocab_size"],
        d_model=d_model,
        n_layers=hf["n_layers"],
        n_heads=n_heads,
        d_ff=hf.get("mlp_hidden_size") or hf.get("mlp_ratio", 4) * d_model,
        max_seq_len=hf.get("max_sequence_length", 4096),
        tie_embeddings=bool(hf.get("weight_tying", False)),
        rope_base=float(hf.get("rope_theta", 10000.0)),
        arch="llama",
        n_kv_heads=hf.get("n_kv_heads") or n_heads,
        head_dim=d_model // n_heads,
        qkv_bias=bool(hf.get("include_qkv_bias", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
    )


def state_dict_from_hf(
    hf_state: dict[str, torch.Tensor], cfg: ModelConfig, layout: str = "llama"
) -> dict[str, torch.Tensor]:
    """Rename a Llama-family state dict (``layout`` llama: llama, qwen2, Dream; llada) onto the dlm Transformer
    (checkpoint names: ``embed.weight`` for the table). A key that maps nowhere, or a dlm tensor that no key gives,
    is a one-line ``DlmError``."""
    names = _names(cfg, layout)
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
            f"{len(unknown)} tensors do not map onto a {cfg.n_layers}-layer {layout}-layout model, e.g. {unknown[0]!r}"
        )
    if cfg.tie_embeddings:
        out.pop("head.weight", None)  # the head is the embedding table
    missing = sorted(_needed(names, cfg) - set(out))
    if missing:
        raise DlmError(f"the checkpoint lacks {len(missing)} tensors of the model, e.g. {missing[0]!r}")
    return out


def _needed(names: dict[str, str], cfg: ModelConfig) -> set[str]:
    needed = {ours for hf, ours in names.items() if "bias" not in hf or cfg.qkv_bias}
    return needed - ({"head.weight"} if cfg.tie_embeddings else set())


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig, layout: str = "llama") -> dict:
    """The inverse of ``state_dict_from_hf``: a dlm Transformer's state dict under Hugging Face names (a tied head
    is left out, as ``save_pretrained`` does)."""
    ours_to_hf = {ours: hf for hf, ours in _names(cfg, layout).items()}
    wanted = _needed(_names(cfg, layout), cfg)
    missing = sorted(wanted - set(state))
    if missing:
        raise DlmError(f"the model lacks {len(missing)} tensors of the {layout} layout, e.g. {missing[0]!r}")
    return {ours_to_hf[k]: v for k, v in state.items() if k in wanted}


def transformer_from_hf(hf_config: dict, hf_state: dict[str, torch.Tensor], *, causal: bool | None = None):
    """A dlm ``Transformer`` holding a Llama-family checkpoint's weights (``causal=False``: the same weights with
    bidirectional attention; default: the model's own)."""
    from dlm.models.transformer import Transformer

    cfg = model_config_from_hf(hf_config, causal=causal)
    model = Transformer(cfg)
    state = state_dict_from_hf(hf_state, cfg, LAYOUTS[hf_config["model_type"]])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "head.weight")]
    if missing or unexpected:  # state_dict_from_hf checked the names; this catches a shape mismatch's aftermath
        raise DlmError(f"the checkpoint does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
