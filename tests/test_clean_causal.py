"""Clean-causal attention (``model.clean_causal``): unmasked tokens attend causally to the unmasked ones, masked
tokens to every unmasked token and themselves; an AR model adapted this way keeps its causal view of the text."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.engine import Engine
from dlm.models.transformer import CanvasCache
from tests.helpers import dlm as run_cli
from tests.test_adapt import PROMPTS, adapted
from tests.test_adapt import source as source  # noqa: F401 (the fixture)
from tests.test_loading import TEXT, random_hf, write_tokenizer


def test_the_mask_follows_the_rule(source):
    model, tokenizer, _ = adapted(source, clean_causal=True)
    assert model.config.mask_id == tokenizer.mask_id
    m = tokenizer.mask_id
    x = torch.tensor([[5, m, 7, m, 9]])
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0],  # clean: the clean tokens at or before it
            [1, 1, 1, 0, 1],  # masked: every clean token and itself
            [1, 0, 1, 0, 0],
            [1, 0, 1, 1, 1],
            [1, 0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(model.clean_causal_mask(x, None, None)[0], want)
    padded = model.clean_causal_mask(x, torch.tensor([[False, True, True, True, True]]), None)[0]
    assert padded[0].tolist() == [True, False, False, False, False]  # a padding row with no key keeps itself
    assert torch.equal(padded[1:, 1:], want[1:, 1:]) and not padded[1:, 0].any()


def test_the_first_masked_token_after_a_clean_one_reads_the_left_side_only(source):
    """The documented limit of clean-causal + shift: position i is predicted at i - 1, which (unmasked) attends
    causally, so a single hole ignores its right side; a second masked token in a row does read it."""
    model, tokenizer, _ = adapted(source, clean_causal=True)
    m = tokenizer.mask_id
    x = torch.randint(3, 80, (1, 12), generator=torch.Generator().manual_seed(1))
    other = x.clone()
    other[0, 8:] = (x[0, 8:] + 7) % 77 + 3  # everything right of the hole changed
    for y in (x, other):
        y[0, 5] = m
    with torch.no_grad():
        assert torch.equal(model(x)[0, 5], model(other)[0, 5])
        x[0, 6], other[0, 6] = m, m
        assert torch.equal(model(x)[0, 5], model(other)[0, 5])
        assert not torch.allclose(model(x)[0, 6], model(other)[0, 6])


def test_text_without_masks_reads_as_the_ar_model_did(source):
    """No masks: the attention is causal, and with the shift the logits at i are the AR model's at i - 1."""
    model, _, _ = adapted(source, clean_causal=True)
    ar, _, _ = dlm.load(source)
    x = torch.randint(3, 80, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(x), ar(x)
    torch.testing.assert_close(got[:, 1:, : want.shape[-1]], want[:, :-1], atol=1e-5, rtol=1e-5)


def test_the_adapted_model_continues_as_the_ar_model_with_the_canvas_masked(source):
    """Unlike full attention (which must be made causal for this, test_adapt), clean-causal attention needs no
    change: the first masked token after the text is predicted from the text alone, as the AR model does."""
    model, tokenizer, cfg = adapted(source, clean_causal=True)
    want = Engine.load(source).generate(PROMPTS, "ar", temperature=0.0, gen_length=12, stop_at_eos=False)
    got = Engine(model, tokenizer, cfg).generate(
        PROMPTS, "confidence", gen_length=12, steps=12, block_length=1, temperature=0.0, stop_at_eos=False
    )
    assert [r.tokens for r in got] == [r.tokens for r in want]
    full, tok2, cfg2 = adapted(source)
    other = Engine(full, tok2, cfg2).generate(
        PROMPTS, "confidence", gen_length=12, steps=12, block_length=1, temperature=0.0, stop_at_eos=False
    )
    assert [r.tokens for r in other] != [r.tokens for r in want]  # full attention sees the masks


def test_a_cache_window_reads_which_slots_are_masked(tmp_path):
    """One layer: keys and values are the embeddings', so after tokens of a window are unmasked, running the window
    alone must give the full canvas's logits there exactly; that needs the cache to know the window's new tokens
    are clean (a stale clean flag would hide them from the rest, and the rest from them)."""
    folder = tmp_path / "one-layer"
    folder.mkdir()
    random_hf("llama", seed=4, num_hidden_layers=1).save_pretrained(folder)
    write_tokenizer(folder)
    model, tokenizer, _ = adapted(folder, clean_causal=True)
    m = tokenizer.mask_id
    x = torch.tensor([[1, 5, 6, m, m, m, m, m, m, 7]])
    cache = CanvasCache()
    with torch.no_grad():
        model(x, kv_cache=cache)
        x[0, 4], x[0, 6] = 11, 12
        cache.window = (3, 7)
        window = model(x[:, 3:7], kv_cache=cache)
        full = model(x)
    torch.testing.assert_close(window[:, 1:], full[:, 4:7])  # (the window's first logits are shifted out)
    assert cache.clean[0].tolist() == (x[0] != m).tolist()


def test_caches_and_batches_match_the_plain_sampler(source):
    model, tokenizer, cfg = adapted(source, clean_causal=True)
    engine = Engine(model, tokenizer, cfg)
    kw = dict(gen_length=8, steps=8, block_length=4, temperature=0.0, stop_at_eos=False)
    plain = engine.generate(PROMPTS, "confidence", **kw)
    for cache in ("prefix", "dual"):
        refreshed = engine.generate(PROMPTS, "confidence", cache=cache, refresh_every=1, **kw)
        assert [r.tokens for r in refreshed] == [r.tokens for r in plain]
    one_by_one = [engine.generate([p], "confidence", **kw)[0] for p in PROMPTS]  # batched rows are left-padded
    assert [r.tokens for r in one_by_one] == [r.tokens for r in plain]
    holes = engine.infill("It is a [MASK*3] universally", "confidence", temperature=0.0)
    assert holes.text.startswith("It is a") and holes.text.endswith(" universally") and len(holes.fills) == 1


def test_train_export_and_load_keep_it(tmp_path, source):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40)
    out = tmp_path / "run"
    common = ["--data", corpus, "--set", "data.seq_len=32", "--batch-size", "4", "--quiet", "--max-steps", "3"]
    run_cli("train", "--init", source, "--objective", "mdlm", "--clean-causal", "--out", out, *common)
    model, tokenizer, cfg = dlm.load(out)
    assert cfg.model.clean_causal and cfg.model.mask_id == tokenizer.mask_id and model.config.clean_causal
    proc = run_cli("sample", out, "--prompt", "It is", "--gen-length", "8", "--block-length", "4", "--cache", "dual")
    assert proc.stdout.startswith("--- sample 0 ---\nIt is")

    from dlm.export import export_hf

    folder = export_hf(model, tokenizer, cfg, tmp_path / "export")
    back, _, back_cfg = dlm.load(folder)
    assert back_cfg.model.clean_causal and back_cfg.model.mask_id == tokenizer.mask_id
    x = torch.tensor([[1, 5, tokenizer.mask_id, 7, tokenizer.mask_id]])
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))

    bad = run_cli("train", "--objective", "ar", "--clean-causal", "--out", tmp_path / "ar", *common, check=False)
    assert bad.returncode == 2 and "clean_causal" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("objective", ["udlm"])
def test_other_objectives_refuse_it(objective):
    from dlm.errors import DlmError
    from dlm.presets import preset_config

    cfg = preset_config("tiny")
    cfg.train.objective, cfg.model.clean_causal = objective, True
    with pytest.raises(DlmError, match="for the mdlm objective"):
        cfg.validate()
