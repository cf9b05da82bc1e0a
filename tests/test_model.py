import pytest
import torch

from dlm.config import ModelConfig
from dlm.models import CanvasCache, KVCache, Transformer
from dlm.presets import preset_config
from dlm.samplers.block import AttendOnly


def make(causal=False, time_conditioning=False, vocab=50):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_seq_len=32,
        causal=causal,
        time_conditioning=time_conditioning,
    )
    return Transformer(cfg).eval()


def test_causal_model_ignores_the_future_bidirectional_does_not():
    x = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 50
    causal, bidir = make(causal=True), make(causal=False)
    torch.testing.assert_close(causal(x)[:, :6], causal(y)[:, :6])
    assert not torch.allclose(bidir(x)[:, :6], bidir(y)[:, :6])


def test_custom_mask_equals_causal_flag():
    model = make(causal=False)
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(8, 8, dtype=torch.bool).tril()
    torch.testing.assert_close(model(x, attn_mask=mask), model(x, causal=True))
    batch_mask = mask.expand(2, 8, 8)
    torch.testing.assert_close(model(x, attn_mask=batch_mask), model(x, causal=True))


def test_kv_cache_forward_equals_full_forward():
    model = make(causal=True)
    x = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(2))
    full = model(x)
    cache = model.new_cache(3, 12)
    assert isinstance(cache, KVCache) and cache.length == 0
    parts = [model(x[:, :5], kv_cache=cache)]  # prefill
    parts += [model(x[:, i : i + 1], kv_cache=cache) for i in range(5, 9)]  # one token at a time
    parts.append(model(x[:, 9:], kv_cache=cache))  # a chunk after the cache
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_writes_into_one_buffer_and_refuses_to_overflow():
    model = make(causal=True)
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(5))
    cache = model.new_cache(2, 8)
    model(x[:, :3], kv_cache=cache)
    buffers = [(k.data_ptr(), v.data_ptr()) for k, v in map(cache.view, range(2))]
    for i in range(3, 8):  # one token at a time, up to max_len
        model(x[:, i : i + 1], kv_cache=cache)
        assert [(k.data_ptr(), v.data_ptr()) for k, v in map(cache.view, range(2))] == buffers  # no reallocation
    k, v = cache.view(1)
    assert k.shape == v.shape == (2, 4, 8, 8) and cache.length == 8
    with pytest.raises(ValueError, match="KVCache overflow: 8 positions stored and 1 more do not fit in max_len 8"):
        model(x[:, :1], kv_cache=cache)
    with pytest.raises(ValueError, match="batch of 3 rows, got 2"):
        model(x, kv_cache=model.new_cache(3, 8))


def test_kv_cache_keep_attends_to_a_call_without_storing_all_of_it():
    model = make(causal=True)
    x = torch.randint(0, 50, (1, 7), generator=torch.Generator().manual_seed(6))
    full = model(x)
    cache = KVCache(2, 7)
    model(x[:, :3], kv_cache=cache)
    k, v = torch.randn(2, 1, 4, 4, 8).unbind(0)  # (B, H, n, Dh) of a call that keeps 1 of its 4 positions
    seen_k, seen_v = cache.update(0, k, v, keep=1)
    assert seen_k.shape[2] == 7 and torch.equal(seen_k[:, :, 3:], k) and torch.equal(seen_v[:, :, 3:], v)
    assert cache.view(0)[0].shape[2] == 4 and cache.length == 3  # layer 1 has not been written by this call
    cache.update(1, k, v, keep=1)
    assert cache.length == 4
    cache = KVCache(2, 7)  # keep=0 (attend only, the block sampler's adapter) leaves the cache as it was
    model(x[:, :3], kv_cache=cache)
    torch.testing.assert_close(model(x[:, 3:], kv_cache=AttendOnly(cache)), full[:, 3:], atol=1e-5, rtol=1e-5)
    assert cache.length == 3
    torch.testing.assert_close(model(x[:, 3:], kv_cache=cache), full[:, 3:], atol=1e-5, rtol=1e-5)


def test_canvas_cache_window_equals_full_forward_on_the_same_canvas():
    model = make()
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    full = model(x)
    cache = CanvasCache()
    torch.testing.assert_close(model(x, kv_cache=cache), full)  # stores the canvas
    cache.window = (4, 8)  # dual: prefix and suffix reused
    torch.testing.assert_close(model(x[:, 4:8], kv_cache=cache), full[:, 4:8], atol=1e-5, rtol=1e-5)
    cache.window = (8, 16)  # prefix: everything from the block on is re-run
    torch.testing.assert_close(model(x[:, 8:], kv_cache=cache), full[:, 8:], atol=1e-5, rtol=1e-5)
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % 50  # a token of the window changes: its own keys are fresh, the others' are stale
    cache.window = (4, 8)
    stale = model(y[:, 4:8], kv_cache=cache)
    assert not torch.allclose(stale, model(y)[:, 4:8], atol=1e-4)  # the approximation is real
    assert not torch.allclose(stale, full[:, 4:8], atol=1e-4)  # and the window's new token is seen
    with pytest.raises(ValueError, match="bidirectional"):
        make(causal=True)(x, kv_cache=cache)


def test_padding_mask_and_positions_make_left_padding_invisible():
    model = make()
    x = torch.randint(0, 49, (1, 7), generator=torch.Generator().manual_seed(4))
    padded = torch.cat([torch.full((1, 3), 49), x], 1)
    keys = torch.tensor([[False] * 3 + [True] * 7])
    positions = (keys.cumsum(1) - 1).clamp_min(0)
    out = model(padded, attn_mask=keys[:, None, :], positions=positions)
    torch.testing.assert_close(out[:, 3:], model(x), atol=1e-5, rtol=1e-5)


def test_time_conditioning_uses_t_and_requires_it():
    model = make(time_conditioning=True)
    torch.nn.init.normal_(model.layers()[0].ada.weight, std=0.1)  # leave the zero (identity) init
    x = torch.randint(0, 50, (2, 6))
    a, b = model(x, torch.tensor([0.1, 0.1])), model(x, torch.tensor([0.9, 0.9]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="time-conditioned"):
        model(x)
    plain = make()
    torch.testing.assert_close(plain(x), plain(x, torch.tensor([0.3, 0.7])))  # t is ignored


def test_preset_sizes():
    def count(name):
        cfg = preset_config(name).model
        cfg.vocab_size = 8192
        with torch.device("meta"):
            return Transformer(cfg).num_parameters()

    assert count("tiny") < 1_000_000
    assert 15_000_000 <= count("small") <= 20_000_000
    assert 90_000_000 <= count("base") <= 120_000_000


@pytest.mark.parametrize("embed_dim", [0, 8])
def test_contract_continuous_path_equals_forward(embed_dim):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_seq_len=32,
        time_conditioning=True,
        embed_dim=embed_dim,
    )
    model = Transformer(cfg).eval()
    for block in model.layers():  # off the identity init, so that t matters
        torch.nn.init.normal_(block.ada.weight, std=0.1)
    x = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(7))
    t = torch.tensor([0.2, 0.8])
    h = model.forward_embeds(model.embed(x), t)
    assert h.shape == (2, 9, embed_dim or 32) and model.embedding_weight.shape == (50, embed_dim or 32)
    assert torch.equal(model.logits(h), model(x, t))
    assert not torch.allclose(model(x, t), model(x, t.flip(0)))
    assert len(model.layers()) == 2 and all(isinstance(b, torch.nn.Module) for b in model.layers())


@pytest.mark.parametrize("tie", [False, True])
def test_checkpoints_keep_the_embedding_key(tmp_path, tie):
    from safetensors.torch import load_file, load_model, save_file, save_model

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32, tie_embeddings=tie)
    model = Transformer(cfg)
    names = set(model.state_dict())
    assert "embed.weight" in names and "head.weight" in names and not any("tok_embed" in n for n in names)
    save_model(model, str(tmp_path / "model.safetensors"))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "embed.weight" in saved  # the key checkpoints written before the rename have
    save_file(saved, str(tmp_path / "old.safetensors"))
    torch.manual_seed(1)
    other = Transformer(cfg)
    assert load_model(other, str(tmp_path / "old.safetensors"), strict=False) == (set(), [])
    assert torch.equal(other.embedding_weight, model.embedding_weight)
    x = torch.randint(0, 50, (1, 5))
    torch.testing.assert_close(other(x), model(x))
    del saved["embed.weight"]
    save_file({k: v for k, v in saved.items() if k != "head.weight"}, str(tmp_path / "bad.safetensors"))
    missing, _ = load_model(other, str(tmp_path / "bad.safetensors"), strict=False)
    assert "embed.weight" in missing  # reported under the checkpoint's name
