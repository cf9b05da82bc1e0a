"""The Llama-family backbone (model.arch=llama) against Hugging Face transformers' own implementation: tiny random
LlamaForCausalLM / Qwen2ForCausalLM built here (no download), their weights mapped by dlm.models.hf, the logits
compared in float32. Covers grouped-query attention, an explicit head_dim, SwiGLU, q/k/v biases (Qwen2), rope_theta,
Llama 3's rope scaling, tied and untied heads, the RMSNorm epsilon, and the KV cache on these layers."""

import pytest
import torch
import transformers  # the hf extra, which make installs: missing, it is an error, not a skip

from dlm.config import ModelConfig
from dlm.errors import DlmError
from dlm.models.hf import model_config_from_hf, state_dict_from_hf, transformer_from_hf
from dlm.models.transformer import Transformer

BASE = dict(
    vocab_size=61,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    max_position_embeddings=64,
    attn_implementation="eager",
)
CASES = {
    "llama-mha-tied": ("llama", dict(num_key_value_heads=6, tie_word_embeddings=True, rms_norm_eps=1e-5)),
    "llama-gqa-headdim": ("llama", dict(num_key_value_heads=2, head_dim=12, rope_theta=500.0, rms_norm_eps=1e-6)),
    "llama3-rope-scaling": (
        "llama",
        dict(
            num_key_value_heads=3,
            rope_theta=10000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "qwen2-bias": ("qwen2", dict(num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=False)),
}


def hf_model(kind, extra, seed=0):
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**BASE, **extra)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**BASE, **extra)
        model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # random, non-trivial weights everywhere (biases and norms included)
        for p in model.parameters():
            p.normal_(std=0.3 if p.dim() == 1 else 0.1)
    return model.eval(), cfg.to_dict()


@pytest.mark.parametrize("name", CASES)
def test_logits_equal_transformers(name):
    kind, extra = CASES[name]
    ref, config = hf_model(kind, extra)
    model = transformer_from_hf(config, ref.state_dict())
    x = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(1))  # past rope scaling's 16
    with torch.no_grad():
        want = ref(x).logits
        got = model(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert model.config.arch == "llama" and model.config.causal


@pytest.mark.parametrize("name", ["llama-gqa-headdim", "qwen2-bias"])
def test_kv_cache_decoding_equals_the_full_forward_with_grouped_heads(name):
    kind, extra = CASES[name]
    ref, config = hf_model(kind, extra, seed=2)
    model = transformer_from_hf(config, ref.state_dict())
    x = torch.randint(0, 61, (3, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(3, 12)
        parts = [model(x[:, :5], kv_cache=cache)] + [model(x[:, i : i + 1], kv_cache=cache) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_config_mapping_and_key_errors():
    ref, config = hf_model(*CASES["llama3-rope-scaling"])
    cfg = model_config_from_hf(config)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.rope_scaling, cfg.rope_original_max_len) == (3, 8, "llama3", 16)
    state = dict(ref.state_dict())
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(DlmError, match="do not map"):
        state_dict_from_hf(state, cfg)
    del state["model.layers.0.self_attn.extra.weight"], state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(DlmError, match="lacks 1 tensors"):
        state_dict_from_hf(state, cfg)
    with pytest.raises(DlmError, match="not a layout dlm reads"):
        model_config_from_hf({**config, "model_type": "gpt2"})


def test_llama_arch_from_scratch_trains_and_rejects_bad_shapes():
    """model.arch=llama for from-scratch runs: a bidirectional SwiGLU / GQA model takes a gradient step; the shape
    checks are one-line errors; the dlm layout rejects the Llama-only fields."""
    from dlm.objectives import MDLM

    cfg = ModelConfig(
        vocab_size=40,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=64,
        max_seq_len=16,
        arch="llama",
        norm_eps=1e-5,
    )
    model = Transformer(cfg)
    x0 = torch.randint(0, 39, (4, 16), generator=torch.Generator().manual_seed(0))
    out = MDLM(mask_id=39, eos_id=0, vocab_size=40).loss(model, x0, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.layers()[0].attn.k_proj.weight.grad.abs().sum() > 0
    for bad, match in [
        (dict(n_kv_heads=3), "must divide"),
        (dict(head_dim=7), "positive even"),
        (dict(rope_scaling="yarn"), "rope_scaling"),
    ]:
        with pytest.raises(ValueError, match=match):
            Transformer(ModelConfig(**{**cfg.__dict__, **bad}))
    with pytest.raises(ValueError, match="applies to model.arch=llama only"):
        Transformer(ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2))
