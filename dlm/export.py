"""``dlm export``: a model as a Hugging Face folder (safetensors, config.json, tokenizer, a short model card).

    dlm export runs/smol-mdlm exports/smol-mdlm
    dlm.export.export_hf(model, tokenizer, run_config, out_dir)

Every model with the Llama-family architecture exports: one loaded from a llama / qwen2 / Dream / LLaDA folder,
adapted from one (``dlm train --init``), or trained with ``--set model.arch=llama``. The layout is Llama's
(``model_type`` llama), Qwen2's when the model has q/k/v biases. An AR model loads in
``transformers.AutoModelForCausalLM`` with the same logits (give it the tokenizer's BOS first, as dlm does); a
diffusion model gets the same layout and ``config.json["dlm"] = {"objective", "mask_token_id", "logits_shift",
"clean_causal"}``, which ``dlm.load`` reads back (transformers would run it as a causal LM, which it is not).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dlm.errors import DlmError
from dlm.models.hf import state_dict_to_hf


def hf_config(run_config, tokenizer) -> dict:
    """The ``config.json`` of the export (one-line errors for what the Llama / Qwen2 layouts cannot hold)."""
    m = run_config.model
    if m.arch != "llama":
        raise DlmError(
            f"dlm export writes Llama-family folders, and this model has model.arch={m.arch!r} (fused q/k/v, GELU), "
            "which no transformers class reads; train with --set model.arch=llama to export"
        )
    if m.time_conditioning or m.embed_dim:
        what = "time conditioning (adaLN)" if m.time_conditioning else "a low-dimensional embedding (embed_dim)"
        raise DlmError(f"this model has {what}, which the Llama layout has no place for; it cannot be exported")
    model_type = "qwen2" if m.qkv_bias else "llama"
    head_dim = m.head_dim or m.d_model // m.n_heads
    config = {
        "architectures": ["Qwen2ForCausalLM" if m.qkv_bias else "LlamaForCausalLM"],
        "model_type": model_type,
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.d_ff,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads or m.n_heads,
        "head_dim": head_dim,
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps or torch.finfo(torch.float32).eps,  # 0: torch's default, fp32's epsilon
        "rope_theta": m.rope_base,
        "tie_word_embeddings": m.tie_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if model_type == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    else:
        config.update(use_sliding_window=False)
    if m.rope_scaling == "llama3":
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": m.rope_factor,
            "low_freq_factor": m.rope_low_freq_factor,
            "high_freq_factor": m.rope_high_freq_factor,
            "original_max_position_embeddings": m.rope_original_max_len,
        }
    if tokenizer is not None:
        config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    if run_config.train.objective != "ar":
        config["dlm"] = {
            "objective": run_config.train.objective,
            "mask_token_id": None if tokenizer is None else tokenizer.mask_id,
            "logits_shift": m.logits_shift,
            "clean_causal": m.clean_causal,
        }
    return config


def _tokenizer_config(tokenizer) -> dict:
    """tokenizer_config.json: what transformers' AutoTokenizer reads, and dlm's stop tokens."""
    special = tokenizer.special_config()
    special = {k: v for k, v in special.items() if v is not None}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **special}


def _card(run_config, source: str) -> str:
    m, objective = run_config.model, run_config.train.objective
    kind = "an autoregressive LM" if objective == "ar" else f"a diffusion LM ({objective} objective)"
    lines = [
        f"# {Path(source).name}",
        "",
        f"Exported by dlm from `{source}`: {kind}, {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads "
        f"({m.n_kv_heads or m.n_heads} key-value heads), vocabulary {m.vocab_size}, context {m.max_seq_len}.",
        "",
    ]
    if run_config.train.init:
        lines += [f"Adapted from `{run_config.train.init}`.", ""]
    if objective == "ar":
        lines += ["Loads in `transformers.AutoModelForCausalLM`; dlm prepends the tokenizer's BOS to every input."]
    else:
        lines += [
            "The weights are in the Llama layout, but this is not a causal LM: load it with `dlm.load(folder)`, "
            'which reads `config.json["dlm"]` (objective, mask token, whether the logits are shifted as in Dream) '
            "and attends both ways.",
        ]
    return "\n".join(lines) + "\n"


def export_hf(model, tokenizer, run_config, out_dir: str | Path, *, source: str = "dlm") -> Path:
    """Write the Hugging Face folder of a loaded model (see the module docstring); returns ``out_dir``."""
    from safetensors.torch import save_file

    config = hf_config(run_config, tokenizer)
    state = state_dict_to_hf(model.state_dict(), run_config.model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / "model.safetensors"), {"format": "pt"}
    )
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": list(getattr(tokenizer, "stop_ids", []))}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.hf.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tokenizer), indent=2) + "\n")
    (out / "README.md").write_text(_card(run_config, source))
    return out


def export(source: str | Path, out_dir: str | Path, *, overwrite: bool = False, dtype: str | None = None) -> Path:
    """``dlm export SOURCE OUT_DIR``: load ``source`` (anything ``dlm.load`` reads) and write its folder."""
    from dlm.loader import load

    out = Path(out_dir)
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise DlmError(f"{out} is a file or lies under one; give a folder to export to")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DlmError(f"{out} is not empty; pass --overwrite to replace it, or choose another folder")
        shutil.rmtree(out)
    model, tokenizer, config = load(source, dtype=dtype)
    hf_config(config, tokenizer)  # the one-line errors before anything is written
    return export_hf(model, tokenizer, config, out, source=str(source))
