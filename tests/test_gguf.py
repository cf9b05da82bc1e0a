"""``dlm.load`` on a ``.gguf`` file: a tiny random Llama and a byte-level BPE tokenizer built here and written in F32
with the ``gguf`` package's writer the way llama.cpp's converter lays out the llama architecture (its metadata keys,
tensor names and q/k row permutation), then read back through transformers' GGUF loader. Checked: the logits match
the source model, the objective is ar, the tokenizer encodes as the source one with the file's special ids, stop ids
and chat template, tied embeddings (no ``output.weight``), and a truncated file is a one-line error. Nothing is
downloaded."""

import json

import gguf
import numpy as np
import pytest
import torch

import dlm
from dlm.errors import DlmError
from tests.test_loading import TEXT, VOCAB, ids, random_hf, write_tokenizer

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
EXTRA = dict(rope_theta=50000.0, rms_norm_eps=1e-5)  # not the config defaults, so the file must carry them
# Hugging Face name (in a layer: after ``model.layers.N.``) -> llama.cpp's
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf_name: str) -> str:
    stem = hf_name.removesuffix(".weight")
    if stem in TOP_NAMES:
        return TOP_NAMES[stem] + ".weight"
    _, _, layer, rest = stem.split(".", 3)  # model.layers.N.rest
    return f"blk.{layer}.{LAYER_NAMES[rest]}.weight"


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k permutation: per head, the two rotary halves become interleaved pairs of rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, ref, tok, *, bos=1, eos=2, pad=0):
    """``ref`` (a LlamaForCausalLM) and ``tok`` (a byte-level BPE) as a llama GGUF, all tensors F32."""
    c = ref.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    # the vocabulary in its byte alphabet, padded to the model's size with unused [PADi] tokens as llama.cpp does
    vocab = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    specials = set(tok.get_added_tokens_decoder())
    tokens = [vocab.get(i, f"[PAD{i}]") for i in range(c.vocab_size)]
    types = [
        gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL if i in vocab else gguf.TokenType.UNUSED
        for i in range(c.vocab_size)
    ]
    merges = json.loads(tok.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(pad)
    writer.add_chat_template(TEMPLATE)
    for name, tensor in ref.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # llama.cpp writes no output.weight for a tied head
        w = tensor.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            w = permute_rows(w, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = permute_rows(w, c.num_key_value_heads)
        writer.add_tensor(gguf_name(name), np.ascontiguousarray(w))  # torch's shape; the writer reverses it
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")  # the tokenizer files stay out of the GGUF's folder
    return write_tokenizer(folder)


def written(tmp_path, source, **extra):
    ref = random_hf("llama", **EXTRA, **extra)
    (tmp_path / "gguf").mkdir()
    return ref, write_gguf(tmp_path / "gguf" / "tiny.F32.gguf", ref, source)


def test_a_gguf_loads_with_the_source_logits_and_tokenizer(tmp_path, source):
    ref, path = written(tmp_path, source)
    model, tokenizer, cfg = dlm.load(path)
    assert cfg.train.objective == "ar" and model.config.causal and not cfg.model.tie_embeddings
    assert (cfg.model.rope_base, cfg.model.n_kv_heads, cfg.model.max_seq_len) == (50000.0, 2, 128)
    assert cfg.model.norm_eps == pytest.approx(1e-5)  # stored as a float32
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x).logits, atol=1e-4, rtol=1e-4)
    text = TEXT[:60] + " Ünïcode ✓"
    assert tokenizer.encode(text) == source.encode(text).ids
    assert tokenizer.decode(tokenizer.encode(text)) == source.decode(source.encode(text).ids)
    assert tokenizer.is_foreign and tokenizer.vocab_size == VOCAB  # the [PADi] rows included
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id) == (1, 2, 0, None)
    assert set(tokenizer.stop_ids) == {2, 0}  # the file's eos, and <|endoftext|> by name
    assert tokenizer.chat_template == TEMPLATE


def test_tied_embeddings(tmp_path, source):
    ref, path = written(tmp_path, source, tie_word_embeddings=True)
    model, _, cfg = dlm.load(path)
    assert cfg.model.tie_embeddings and model.head.weight is model.tok_embed.weight
    x = ids(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("keep", [0.4, 0.9, 100])
def test_a_truncated_gguf_is_a_one_line_error(tmp_path, source, keep):
    _, path = written(tmp_path, source)
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep > 1 else int(len(data) * keep)])
    with pytest.raises(DlmError, match="cannot read") as e:
        dlm.load(path)
    assert "\n" not in str(e.value)
