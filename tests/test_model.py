import pytest
import torch

from dlm.config import ModelConfig
from dlm.models import CanvasCache, KVCache, Transformer
from dlm.presets import preset_config


def make(causal=False, time_conditioning=False, vocab=50):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32,
                      causal=causal, time_conditioning=time_conditioning)
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
    cache = KVCache(len(model.blocks))
    parts = [model(x[:, :5], kv_cache=cache)]  # prefill
    parts += [model(x[:, i : i + 1], kv_cache=cache) for i in range(5, 9)]  # one token at a time
    parts.append(model(x[:, 9:], kv_cache=cache))  # a chunk after the cache
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


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
    torch.nn.init.normal_(model.blocks[0].ada.weight, std=0.1)  # leave the zero (identity) init
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
