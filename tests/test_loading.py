"""``dlm.load`` on Hugging Face folders: tiny random Llama / Qwen2 models built and saved by transformers here (no
download), LLaDA's and Dream's layouts written by the test, sharded safetensors, the folder's tokenizer and its
stop ids, dtypes, and the one-line errors (hub ids, pickles, corrupt or incomplete folders)."""

import json

import pytest
import torch
import transformers  # the hf extra, which make installs: missing, it is an error, not a skip
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

import dlm
from dlm.errors import DlmError
from tests.helpers import dlm as run_cli

VOCAB = 96
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=128,
    attn_implementation="eager",
    bos_token_id=1,
    eos_token_id=2,
)
TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 4


def random_hf(kind="llama", seed=0, **extra):
    torch.manual_seed(seed)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**BASE, **extra}))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**BASE, **extra}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3 if p.dim() == 1 else 0.1)
    return model.eval()


def write_tokenizer(folder, *, eos="<|im_end|>", mask=None):
    """A byte-level BPE with a chat model's special tokens (ids 0-2) and a tokenizer_config.json."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + ([mask] if mask else [])
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 8, special_tokens=specials, initial_alphabet=[], show_progress=False
    )
    tok.train_from_iterator([TEXT], trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": eos, "chat_template": "{{ messages }}"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


def ids(n=20, seed=1):
    return torch.randint(3, VOCAB - 8, (2, n), generator=torch.Generator().manual_seed(seed))


def full_attention(ref, x):
    return ref(x, attention_mask=torch.ones(x.shape[0], 1, x.shape[1], x.shape[1], dtype=torch.bool)).logits


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_a_saved_folder_loads_with_transformers_logits(tmp_path, kind):
    ref = random_hf(kind, tie_word_embeddings=kind == "llama")
    ref.save_pretrained(tmp_path)
    write_tokenizer(tmp_path)
    model, tokenizer, cfg = dlm.load(tmp_path)
    assert cfg.train.objective == "ar" and model.config.causal and not cfg.model.logits_shift
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x).logits, atol=1e-4, rtol=1e-4)
        # the same weights read as a diffusion model attend both ways: transformers with a full mask
        bidirectional, _, cfg2 = dlm.load(tmp_path, objective="mdlm")
        assert cfg2.train.objective == "mdlm" and not cfg2.model.causal
        torch.testing.assert_close(bidirectional(x), full_attention(ref, x), atol=1e-4, rtol=1e-4)
    # the tokenizer as the folder declares it: no tokens added, end-of-turn ids stop generation
    assert tokenizer.is_foreign and tokenizer.vocab_size == VOCAB - 8
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.mask_id) == (1, 2, None)
    assert set(tokenizer.stop_ids) == {0, 2} and tokenizer.chat_template == "{{ messages }}"


def test_sharded_safetensors_and_bf16(tmp_path):
    ref = random_hf("llama")
    ref.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and len(list(tmp_path.glob("*.safetensors"))) > 2
    model, tokenizer, _ = dlm.load(tmp_path)
    assert tokenizer is None  # no tokenizer.json in the folder
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x).logits, atol=1e-4, rtol=1e-4)
    half, _, _ = dlm.load(tmp_path, dtype="bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with pytest.raises(DlmError, match="unknown dtype"):
        dlm.load(tmp_path, dtype="fp8")
    (tmp_path / sorted(tmp_path.glob("model-*.safetensors"))[0].name).unlink()
    with pytest.raises(DlmError, match="lacks 1 shards"):
        dlm.load(tmp_path)


def llada_folder(folder, ref, mask_id=VOCAB - 1):
    """``ref``'s weights under LLaDA's names and config keys."""
    rename = {
        "self_attn.q_proj": "q_proj",
        "self_attn.k_proj": "k_proj",
        "self_attn.v_proj": "v_proj",
        "self_attn.o_proj": "attn_out",
        "mlp.gate_proj": "ff_proj",
        "mlp.up_proj": "up_proj",
        "mlp.down_proj": "ff_out",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ff_norm",
    }
    state = {}
    for key, value in ref.state_dict().items():
        if key.startswith("model.layers."):
            _, _, i, rest = key.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            key = f"model.transformer.blocks.{i}.{rename[module]}.{leaf}"
        else:
            key = {
                "model.embed_tokens.weight": "model.transformer.wte.weight",
                "model.norm.weight": "model.transformer.ln_f.weight",
                "lm_head.weight": "model.transformer.ff_out.weight",
            }[key]
        state[key] = value.contiguous()
    save_file(state, str(folder / "model.safetensors"))
    c = ref.config
    config = {
        "model_type": "llada",
        "d_model": c.hidden_size,
        "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads,
        "n_layers": c.num_hidden_layers,
        "mlp_hidden_size": c.intermediate_size,
        "vocab_size": c.vocab_size,
        "embedding_size": c.vocab_size,
        "max_sequence_length": 128,
        "rope_theta": c.rope_theta if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"],
        "rms_norm_eps": c.rms_norm_eps,
        "weight_tying": False,
        "block_type": "llama",
        "mask_token_id": mask_id,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return state


def test_llada_layout_maps_every_key(tmp_path):
    ref = random_hf("llama", tie_word_embeddings=False)
    state = llada_folder(tmp_path, ref)
    write_tokenizer(tmp_path, eos="<|endoftext|>")
    model, tokenizer, cfg = dlm.load(tmp_path)
    assert cfg.train.objective == "mdlm" and not cfg.model.causal and not cfg.model.logits_shift
    assert tokenizer.mask_id == VOCAB - 1  # from config.json's mask_token_id
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x), full_attention(ref, x), atol=1e-4, rtol=1e-4)
    save_file({**state, "model.transformer.blocks.0.extra.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(DlmError, match="1 tensors do not map onto a 2-layer llada-layout model"):
        dlm.load(tmp_path)
    del state["model.transformer.blocks.1.up_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(DlmError, match="lacks 1 tensors"):
        dlm.load(tmp_path)


def test_dream_layout_shifts_logits_by_one_position(tmp_path):
    ref = random_hf("qwen2", tie_word_embeddings=False)
    ref.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=VOCAB - 1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, _, cfg = dlm.load(tmp_path)
    assert cfg.train.objective == "mdlm" and cfg.model.logits_shift and cfg.model.qkv_bias and not cfg.model.causal
    x = ids()
    with torch.no_grad():
        got, want = model(x), full_attention(ref, x)
    torch.testing.assert_close(got[:, 1:], want[:, :-1], atol=1e-4, rtol=1e-4)  # position i-1 scores token i
    torch.testing.assert_close(got[:, 0], want[:, 0], atol=1e-4, rtol=1e-4)
    with pytest.raises(DlmError, match="shifted logits"):
        dlm.load(tmp_path, objective="sedd")


def test_local_only_and_never_a_pickle(tmp_path):
    with pytest.raises(DlmError, match="hub id.*download the folder first"):
        dlm.load("HuggingFaceTB/SmolLM2-135M")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(DlmError, match="never loads"):
        dlm.load(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(DlmError, match="not a layout dlm reads"):
        dlm.load(tmp_path)


def test_corrupt_weights_and_config_are_one_line_errors(tmp_path):
    random_hf("llama").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DlmError, match="corrupt or truncated"):
        dlm.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DlmError, match="not valid JSON"):
        dlm.load(tmp_path)


def test_cli_samples_and_evaluates_a_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    random_hf("llama").save_pretrained(folder)
    write_tokenizer(folder)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 20)
    out = run_cli("sample", folder, "--prompt", "It is", "--gen-length", "6", "--sampler", "ar").stdout
    assert "--- sample 0 ---" in out
    out = run_cli("eval", folder, "--data", corpus, "--seq-len", "32", "--json", "--dtype", "fp32").stdout
    report = json.loads(out[out.index("{") :])
    assert not report["is_bound"] and report["tokens"] > 0
    proc = run_cli("eval", folder, "--data", corpus, "--seq-len", "32", "--objective", "mdlm", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "needs a mask token" in proc.stderr
