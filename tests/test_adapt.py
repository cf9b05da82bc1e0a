"""Adaptation (``dlm train --init``): a tiny random Llama folder built by transformers becomes a masked-diffusion
run; the shifted prediction keeps the AR model's greedy continuation while the attention is still causal; a mask
token is added and the vocabulary grown; caches and the NELBO honour the shift; attention annealing."""

import json

import pytest
import torch

import dlm
from dlm.engine import Engine
from dlm.errors import DlmError
from dlm.presets import preset_config
from dlm.train.adapt import AnnealedAttention, anneal_ratio, init_config, init_model
from tests.helpers import dlm as run_cli
from tests.test_loading import TEXT, VOCAB, random_hf, write_tokenizer

PROMPTS = ["It is a truth", "a single man in"]


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    random_hf("llama", seed=3).save_pretrained(folder)
    write_tokenizer(folder)
    return folder


def adapted(source, objective="mdlm", **model):
    cfg = preset_config("tiny")
    cfg.train.objective = objective
    init_config(cfg, source)
    for key, value in model.items():
        setattr(cfg.model, key, value)
    model, tokenizer = init_model(cfg, "cpu")
    return model.eval(), tokenizer, cfg


def test_the_shift_keeps_the_ar_models_greedy_continuation(source):
    """At the start of the annealing (attention still causal, no update yet) the confidence sampler with block
    length 1 at temperature 0 reproduces the AR model's greedy continuation token for token."""
    model, tokenizer, cfg = adapted(source)
    assert cfg.model.logits_shift and not cfg.model.causal and tokenizer.mask_id == VOCAB - 8  # the next free id
    model.config.causal = True  # annealing step 0: causal attention
    ar = Engine.load(source)
    want = ar.generate(PROMPTS, "ar", temperature=0.0, gen_length=12, stop_at_eos=False)
    got = Engine(model, tokenizer, cfg).generate(
        PROMPTS, "confidence", gen_length=12, steps=12, block_length=1, temperature=0.0, stop_at_eos=False
    )
    assert [r.tokens for r in got] == [r.tokens for r in want]
    unshifted, tok2, cfg2 = adapted(source, logits_shift=False)
    unshifted.config.causal = True
    other = Engine(unshifted, tok2, cfg2).generate(
        PROMPTS, "confidence", gen_length=12, steps=12, block_length=1, temperature=0.0, stop_at_eos=False
    )
    assert [r.tokens for r in other] != [r.tokens for r in want]  # the shift is what carries the AR knowledge


def test_a_prompt_that_starts_with_bos_gets_no_second_one(source):
    """A chat template that writes BOS (SmolLM2's ChatML) must not give the model BOS twice: the AR sampler and a
    shifted model put their start token first, so a leading BOS in the prompt changes nothing."""
    model, tokenizer, cfg = adapted(source)
    ar = Engine.load(source)
    bos = ar.tokenizer.bos_id
    assert bos is not None and tokenizer.bos_id == bos
    for engine, sampler, opts in (
        (ar, "ar", {}),
        (Engine(model, tokenizer, cfg), "confidence", dict(steps=8, block_length=4)),
    ):
        ids = [engine.tokenizer.encode(p) for p in PROMPTS]
        plain = engine.generate_ids(ids, sampler, gen_length=8, temperature=0.0, stop_at_eos=False, **opts)
        seen = []
        hook = engine.model.register_forward_pre_hook(
            lambda m, a, k: seen.append(a[0] if a else k["x"]), with_kwargs=True
        )
        try:
            led = engine.generate_ids(
                [[bos] + i for i in ids], sampler, gen_length=8, temperature=0.0, stop_at_eos=False, **opts
            )
        finally:
            hook.remove()
        assert [r.tokens for r in led] == [r.tokens for r in plain]
        assert ((seen[0] == bos).sum(dim=1) == 1).all()  # the model's first input holds one BOS per row


def test_a_cache_window_starts_one_token_early_for_a_shifted_model(tmp_path):
    """One layer and one block: the prefix's keys and values depend on the prefix alone, so the prefix cache must
    give exactly the uncached tokens; without the extra token before the block, the block's first logits would be
    the shifted-out position's own (random commit order, so that the block's first position stays masked a while)."""
    folder = tmp_path / "one-layer"
    folder.mkdir()
    random_hf("llama", seed=4, num_hidden_layers=1).save_pretrained(folder)
    write_tokenizer(folder)
    model, tokenizer, cfg = adapted(folder)
    with torch.no_grad():
        model.head.weight.mul_(5.0)  # sharper logits: the order of commits depends on the context
    engine = Engine(model, tokenizer, cfg)
    kw = dict(gen_length=8, steps=8, temperature=0.0, remasking="random", stop_at_eos=False)
    plain = engine.generate(PROMPTS, "confidence", **kw)
    cached = engine.generate(PROMPTS, "confidence", cache="prefix", **kw)
    assert [r.tokens for r in cached] == [r.tokens for r in plain]


def test_the_nelbo_scores_every_token_after_a_start_token(source):
    model, tokenizer, cfg = adapted(source)
    from dlm.objectives import OBJECTIVES

    objective = OBJECTIVES.build(cfg, tokenizer)
    x0 = torch.randint(3, 80, (2, 10), generator=torch.Generator().manual_seed(0))
    seen = []
    objective.nll(lambda x, t: seen.append(x.clone()) or model(x, t), x0, 1, torch.Generator().manual_seed(1))
    assert seen[0].shape == (2, 11) and (seen[0][:, 0] == tokenizer.bos_id).all()  # BOS first, never masked
    with pytest.raises(DlmError, match="does not take a shifted model"):
        cfg.train.objective = "udlm"
        OBJECTIVES.build(cfg, tokenizer)


def test_a_mask_token_grows_a_full_vocabulary(tmp_path):
    folder = tmp_path / "full"
    folder.mkdir()
    tok = write_tokenizer(folder)
    full = tok.get_vocab_size(with_added_tokens=True)
    ref = random_hf("llama", vocab_size=full, tie_word_embeddings=False)
    ref.save_pretrained(folder)
    model, tokenizer, cfg = adapted(folder)
    assert tokenizer.mask_id == full and cfg.model.vocab_size == full + 1
    for table in (model.embedding_weight, model.head.weight):
        assert table.shape[0] == full + 1
        torch.testing.assert_close(table[full], table[:full].mean(0))  # the new row: the mean of the others
    torch.testing.assert_close(model.embedding_weight[:full], ref.model.embed_tokens.weight)


def test_annealed_attention_goes_from_causal_to_full(source):
    model, _, _ = adapted(source)
    x = torch.randint(3, 80, (2, 9), generator=torch.Generator().manual_seed(0))
    g = torch.Generator()
    with torch.no_grad():
        torch.testing.assert_close(AnnealedAttention(model, 0.0, g)(x), model(x, causal=True))
        torch.testing.assert_close(AnnealedAttention(model, 1.0 + 1e-9, g)(x), model(x))
        half = AnnealedAttention(model, 0.5, g.manual_seed(5))(x)
    assert not torch.allclose(half, model(x)) and not torch.allclose(half, model(x, causal=True))
    assert [anneal_ratio(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0] and anneal_ratio(3, 0) == 1.0


def test_train_init_runs_resumes_and_samples(tmp_path, source):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40)
    out = tmp_path / "run"
    common = ["--data", corpus, "--set", "data.seq_len=32", "--batch-size", "4", "--out", out, "--quiet"]
    common += ["--set", "train.log_every=1", "--anneal-steps", "4"]
    run_cli("train", "--init", source, "--objective", "mdlm", "--max-steps", "5", *common, "--save-every", "3")
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert [r["attention_anneal"] for r in log] == [0.0, 0.25, 0.5, 0.75, 1.0]
    model, tokenizer, cfg = dlm.load(out)
    assert cfg.train.init == str(source) and cfg.model.logits_shift and tokenizer.is_foreign
    assert tokenizer.mask_id == VOCAB - 8 and tokenizer.stop_ids == (2, 0)  # kept with the checkpoint
    run_cli("train", "--init", source, "--objective", "mdlm", "--max-steps", "7", *common, "--resume")
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 7
    proc = run_cli("sample", out, "--prompt", "It is", "--gen-length", "8", "--block-length", "4", "--cache", "dual")
    assert proc.stdout.startswith("--- sample 0 ---\nIt is")
    proc = run_cli(
        "train", "--init", source, "--objective", "mdlm", "--out", tmp_path / "x", "--tokenizer", "t", check=False
    )
    assert proc.returncode == 2 and "keeps the source model's tokenizer" in proc.stderr


def test_torchrun_ddp_adaptation_matches_one_process_and_resumes(tmp_path, source):
    """``--init`` under torchrun (2 gloo processes): fine-tuning the AR source with 2 x 2 sequences gives the same
    weights as one process with 4 (AR draws no noise); an mdlm adaptation with annealing runs (single-process
    resume is tested above)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "dlm.cli"]
    common = ["train", "--init", str(source), "--data", str(corpus), "--set", "data.seq_len=32", "--quiet"]

    def run(prefix, *args):
        proc = subprocess.run([*prefix, *common, *map(str, args)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]

    run(torchrun, "--objective", "ar", "--max-steps", "3", "--batch-size", "2", "--out", tmp_path / "ddp")
    run([sys.executable, "-m", "dlm.cli"], "--objective", "ar", "--max-steps", "3", "--batch-size", "4", "--out",
        tmp_path / "one")  # fmt: skip
    ddp = load_file(str(tmp_path / "ddp" / "checkpoint" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    assert ddp.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=2e-5, rtol=1e-4)
    mdlm = ["--objective", "mdlm", "--batch-size", "2", "--anneal-steps", "2", "--out", tmp_path / "mdlm"]
    run(torchrun, *mdlm, "--max-steps", "2")
    assert json.loads((tmp_path / "mdlm" / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    model, tokenizer, cfg = dlm.load(tmp_path / "mdlm")
    assert cfg.model.logits_shift and tokenizer.mask_id == VOCAB - 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
