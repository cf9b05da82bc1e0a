"""Infill and Instant Edit (``dlm.infill``, ``dlm.edit``, ``Engine.infill`` / ``Engine.edit``, ``dlm infill`` /
``dlm edit``): fixed positions never change under any sampler that infills, the others are refused, holes parse,
the exact toy model fills and edits as the enumerated distribution says, and the verbs run end to end."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers
from typer.testing import CliRunner

from dlm.cli import app
from dlm.data.tokenizer import Tokenizer
from dlm.edit import span_positions, word_diff
from dlm.engine import Engine
from dlm.errors import DlmError
from dlm.infill import encode_pieces, parse_holes, parse_lengths
from dlm.presets import preset_config
from dlm.samplers import SAMPLERS, SampleBatch, infill_samplers, run_sampler
from tests.contracts.cases import EOS, MASK, PAD, case
from tests.helpers import dlm as run_cli
from tests.toy import ToyDistribution

TEXT = "It is a truth [MASK*3] acknowledged, that a [MASK] man"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (more only contend on a shared machine, as in the contract suite)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- holes ------------------------------------------------------------------------------------------------------


def test_holes_parse_anywhere_with_their_lengths():
    t = parse_holes(TEXT)
    assert t.pieces == ("It is a truth ", " acknowledged, that a ", " man") and t.lengths == (3, 1)
    t = parse_holes("[MASK*2][MASK]x[MASK*10]")
    assert t.pieces == ("", "", "x", "") and t.lengths == (2, 1, 10)
    assert parse_lengths("2-10") == range(2, 11) and parse_lengths("4") == range(4, 5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("no hole here", "the text has no hole"),
        ("a [MASK*0] b", "hole [MASK*0] at character 2 has no tokens"),
        ("a [MASK*] b", "bad hole '[MASK*]' at character 2"),
        ("a [MASK*x] b", "bad hole '[MASK*x]' at character 2"),
        ("a [MASK*-2] b", "bad hole '[MASK*-2]' at character 2"),
        ("a [MASK", "bad hole '[MASK...' at character 2"),
        ("[MASK] and [MASK 3]", "bad hole '[MASK 3]' at character 11"),
    ],
)
def test_bad_holes_are_one_line_errors(text, message):
    with pytest.raises(DlmError) as err:
        parse_holes(text)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("spec", ["", "0-3", "5-2", "a-b", "2-", "-3"])
def test_bad_lengths_are_one_line_errors(spec):
    with pytest.raises(DlmError, match="--lengths must be A-B"):
        parse_lengths(spec)


# --- samplers: fixed positions ----------------------------------------------------------------------------------


def random_canvases(rng: random.Random, rows: int = 3):
    """Canvases of different lengths with random holes, each with a hole and fixed text after its first hole."""
    canvases, fixed = [], []
    for _ in range(rows):
        L = rng.randint(7, 14)
        f = [rng.random() < 0.6 for _ in range(L)]
        f[rng.randrange(L - 2)] = False
        f[-1] = True
        canvases.append([rng.randrange(0, 28) for _ in range(L)])
        fixed.append(f)
    return canvases, fixed


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_infill_never_changes_a_fixed_position_and_other_samplers_refuse(name):
    """Every sampler that infills keeps every fixed position (random holes, several seeds, left-padded rows) and
    fills every hole; every other sampler is refused such a batch."""
    c, entry = case(name), SAMPLERS.get(name)
    model = c.build(0)
    options = {k: v for k, v in c.options.items() if k != "block_length"}  # any length of generated region
    config = entry.make_config(options, c.facts)
    rng = random.Random(name)
    for seed in range(3):
        canvases, fixed = random_canvases(rng)
        batch = SampleBatch.from_canvases(canvases, fixed, mask_id=MASK, eos_id=EOS, pad_id=PAD)
        assert batch.infilling and bool((batch.tokens[~batch.fixed] == MASK).all())
        generators = [torch.Generator().manual_seed(100 * seed + j) for j in range(len(canvases))]
        if not entry.infills:
            with pytest.raises(DlmError, match=f"the {name} sampler cannot infill"):
                run_sampler(entry, model, batch, config, generators)
            return
        out = run_sampler(entry, model, batch, config, generators)
        assert torch.equal(out.tokens[batch.fixed], batch.tokens[batch.fixed]), f"seed {seed}"
        if c.masked:
            assert not (out.tokens == MASK).any()


def test_the_samplers_that_infill():
    assert set(infill_samplers()) == {"ancestral", "confidence", "block", "sedd-analytic", "sedd-euler", "udlm"}


def test_a_canvas_with_its_holes_at_the_end_is_a_prompt_batch():
    prompts = [[5, 6, 7], [8]]
    a = SampleBatch.from_prompts(prompts, 4, mask_id=MASK, pad_id=PAD)
    b = SampleBatch.from_canvases([p + [0] * 4 for p in prompts], [[True] * len(p) + [False] * 4 for p in prompts],
                                  mask_id=MASK, pad_id=PAD)  # fmt: skip
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.fixed, b.fixed) and torch.equal(a.real, b.real)
    assert a.prompt_len == b.prompt_len and not b.infilling and b.open_length == 4


@pytest.mark.parametrize("name, options", [("confidence", {}), ("ancestral", {"steps": 1})])
def test_the_exact_toy_model_fills_a_hole_from_both_sides(name, options):
    """Greedy (confidence at temperature 0; ancestral's one step is its final argmax): the exact toy model fills a
    one-token hole at any position with argmax_v p(v | every other token), the enumerated conditional."""
    toy = ToyDistribution(V=3, L=4, seed=1)
    entry = SAMPLERS.get(name)
    config = entry.make_config(options)
    for hole in range(toy.L):
        fixed = [[pos != hole for pos in range(toy.L)]] * len(toy.seqs)
        batch = SampleBatch.from_canvases(toy.seqs.tolist(), fixed, mask_id=toy.mask_id)
        out = run_sampler(entry, lambda x, t=None, **_: toy.denoiser(x), batch, config)
        for seq, got in zip(toy.seqs, out.tokens):
            rest = (toy.seqs[:, torch.arange(toy.L) != hole] == seq[torch.arange(toy.L) != hole]).all(1)
            joint = torch.zeros(toy.V, dtype=torch.float64).index_add(0, toy.seqs[:, hole], toy.p * rest)
            assert int(got[hole]) == int(joint.argmax()) and torch.equal(got[torch.arange(toy.L) != hole],
                                                                         seq[torch.arange(toy.L) != hole])  # fmt: skip


# --- the Engine on the toy: exact scores, edits that raise the probability ---------------------------------------


def toy_engine(toy: ToyDistribution) -> Engine:
    """The exact toy model behind an Engine: ids 0..V-1 are the words "0".."V-1" of a word-level tokenizer."""
    vocab = {str(v): v for v in range(toy.V)} | {"<|mask|>": toy.mask_id, "<|endoftext|>": toy.eos_id}
    vocab["<|pad|>"] = toy.vocab
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens(["<|mask|>", "<|endoftext|>", "<|pad|>"])
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.model.vocab_size = "mdlm", toy.vocab + 1
    return Engine(lambda x, t=None, **_: toy.denoiser(x), Tokenizer(hf), cfg)


def test_edit_scores_are_the_exact_conditionals_and_edits_never_lower_the_probability():
    """Edit re-masks the least likely token (its score is p(x^l | x^{-l}), here exact) and refills it greedily:
    p(new) = p(rest) max_v p(v | rest) >= p(old), so every round keeps or raises the probability; a corrupted
    sequence ends more probable than it was in most trials."""
    toy = ToyDistribution(V=3, L=5, seed=2)
    engine = toy_engine(toy)
    rng = random.Random(0)
    top = toy.p.argsort(descending=True)[:20]
    improved = 0
    for i in top.tolist():
        seq = toy.seqs[i].clone()
        pos = rng.randrange(toy.L)
        seq[pos] = (seq[pos] + rng.randrange(1, toy.V)) % toy.V  # a corruption
        text = " ".join(map(str, seq.tolist()))
        result = engine.edit(text, remask_k=1, rounds=2)
        for pos_ in range(toy.L):  # the scores: the enumerated conditional of each token
            others = torch.arange(toy.L) != pos_
            rest = (toy.seqs[:, others] == seq[others]).all(1)
            exact = float((toy.p * rest * (toy.seqs[:, pos_] == seq[pos_])).sum() / (toy.p * rest).sum())
            assert result.scores[pos_] == pytest.approx(exact, rel=1e-4)
        new = torch.tensor(result.tokens)[None]
        before, after = float(toy.nll(seq[None])), float(toy.nll(new))
        assert after <= before + 1e-9, (text, result.text)
        assert result.text == " ".join(map(str, result.tokens)) and len(result.rounds) <= 2
        improved += after < before - 1e-9
    assert improved >= 15


# --- the Engine and the CLI on tiny runs -----------------------------------------------------------------


LINES = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want",
    "of a wife. However little known the feelings or views of such a man may be on his first entering a",
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories of random (untrained) 2-layer models, mdlm and ar, with a small tokenizer: what the verbs
    read, in a fraction of a second (the tests check what infill and edit keep and change, not the fills' text)."""
    from dlm.config import ModelConfig, RunConfig, TrainConfig
    from dlm.data.tokenizer import train_tokenizer
    from dlm.models.transformer import Transformer
    from dlm.objectives import OBJECTIVES
    from dlm.train.checkpoint import save_checkpoint

    tok = train_tokenizer(LINES * 4, vocab_size=400)
    out = {}
    for objective in ("mdlm", "ar"):
        torch.manual_seed(0)
        mc = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
        mc.causal = OBJECTIVES.get(objective).causal
        cfg = RunConfig(preset="tiny", model=mc, train=TrainConfig(objective=objective))
        out[objective] = tmp_path_factory.mktemp("runs") / objective
        save_checkpoint(out[objective], model=Transformer(mc).eval(), tokenizer=tok, config=cfg)
    return out


@pytest.fixture(scope="module")
def mdlm(runs):
    return Engine.load(runs["mdlm"])


def test_engine_infill_keeps_the_pieces_tokens_and_fills_the_holes(mdlm):
    tok = mdlm.tokenizer
    for sampler in ("confidence", "ancestral"):
        r = mdlm.infill(TEXT, sampler, seed=3)
        pieces = encode_pieces(tok, parse_holes(TEXT).pieces)
        assert pieces[0] == tok.encode("It is a truth")  # the space before a hole moves into it
        (a0, b0), (a1, b1) = r.holes
        assert (b0 - a0, b1 - a1) == (3, 1)
        assert r.tokens[:a0] == pieces[0] and r.tokens[b0:a1] == pieces[1] and r.tokens[b1:] == pieces[2]
        assert tok.mask_id not in r.tokens and r.text == tok.decode(r.tokens) and r.nfe > 0
        assert r.fills == [tok.decode(r.tokens[a0:b0]), tok.decode(r.tokens[a1:b1])]


def test_engine_infill_searches_hole_lengths_one_at_a_time(mdlm):
    r = mdlm.infill(TEXT, lengths=range(1, 4), nelbo_samples=2, seed=1)
    assert [sorted(t) for t in r.nelbo] == [[1, 2, 3], [1, 2, 3]]
    chosen = [b - a for a, b in r.holes]
    assert chosen == [min(t, key=lambda n: (t[n], n)) for t in r.nelbo]
    # the second search starts from the first's choice: its candidate at that length is the first search's best
    assert r.nelbo[1][1] == pytest.approx(r.nelbo[0][chosen[0]])


def test_an_ar_model_and_a_sampler_that_cannot_infill_are_refused_in_one_line(runs, mdlm):
    with pytest.raises(DlmError) as err:
        Engine.load(runs["ar"]).infill(TEXT)
    message = str(err.value)
    assert "\n" not in message and "cannot infill" in message
    assert all(name in message for name in infill_samplers())
    with pytest.raises(DlmError, match="the ar sampler cannot infill"):
        mdlm.infill(TEXT, "ar")
    proc = run_cli("infill", runs["ar"], "--text", TEXT, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0


def test_edit_with_spans_re_masks_exactly_the_overlapping_tokens(mdlm, monkeypatch):
    import dlm.infill

    text = "It is a truth universally acknowledged, that a single man"
    spans = [(8, 13), (47, 50)]  # "truth", "sin" of "single"
    ids, offsets = mdlm.tokenizer.encode_offsets(text)
    want = [i for i, (a, b) in enumerate(offsets) if any(a < e and b > s for s, e in spans)]
    assert want and span_positions(offsets, spans, len(text)) == want
    seen = []
    fill = dlm.infill.fill_canvases
    monkeypatch.setattr(
        dlm.infill, "fill_canvases", lambda e, c, f, *a, **k: seen.append((c, f)) or fill(e, c, f, *a, **k)
    )
    r = mdlm.edit(text, spans=spans, rounds=2, seed=4)
    assert r.positions == want and r.rounds == [want, want] and len(seen) == 2
    for canvas, fixed in seen:
        assert [i for i, f in enumerate(fixed[0]) if not f] == want  # exactly those, every round
    assert [t for i, t in enumerate(r.tokens) if i not in want] == [t for i, t in enumerate(ids) if i not in want]
    assert len(r.scores) == len(ids) and all(0.0 <= s <= 1.0 for s in r.scores)
    with pytest.raises(DlmError, match="--span 50:99 is not inside the text"):
        mdlm.edit(text, spans=[(50, 99)])
    with pytest.raises(DlmError, match="give one"):
        mdlm.edit(text, spans=spans, below=0.1)


def test_edit_by_score_re_masks_the_lowest_tokens(mdlm):
    text = "It is a truth universally acknowledged, that a single man"
    r = mdlm.edit(text, remask_k=3)
    low = sorted(range(len(r.scores)), key=lambda i: (r.scores[i], i))[:3]
    assert r.positions == sorted(low) and r.rounds == [sorted(low)]
    r = mdlm.edit(text, below=1e-12)  # nothing that unlikely: nothing changes
    assert r.positions == [] and r.text == r.original


def test_word_diff():
    assert word_diff("a b c d", "a x c d e") == "a [-b-] {+x+} c d {+e+}"


def test_cli_infill_and_edit_end_to_end(runs):
    runner = CliRunner()
    out = runner.invoke(app, ["infill", str(runs["mdlm"]), "--text", TEXT, "--lengths", "1-2", "--nelbo-samples", "2"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("It is a truth") and lines[1].startswith("hole 1 (") and "NELBO" in lines[2]
    assert lines[-1].startswith("NFE ")
    text = "It is a truth universally acknowledged"
    out = runner.invoke(app, ["edit", str(runs["mdlm"]), "--text", text, "--span", "8:13", "--seed", "1"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[1].startswith("diff: ") and " in 1 round: ' truth' (p=" in out.output
    out = runner.invoke(app, ["edit", str(runs["mdlm"]), "--text", text, "--span", "8-13"])
    assert isinstance(out.exception, DlmError) and "--span '8-13' must be START:END" in str(out.exception)


@pytest.mark.parametrize("verb", ["infill", "edit"])
def test_the_verbs_sampler_flags_are_sampler_options_that_default_to_not_given(verb):
    import typer.main

    from dlm.samplers import sampler_options

    own = {"run_dir", "text", "lengths", "nelbo_samples", "span", "rounds", "below", "remask_k", "sampler", "seed"}
    own |= {"show_steps", "dtype", "device", "objective"}
    params = {p.name: p for p in typer.main.get_command(app).commands[verb].params}
    flags = set(params) - own
    assert flags and flags <= set(sampler_options())
    assert all(params[name].default is None for name in flags)


def test_a_shifted_model_reads_its_start_token_before_the_canvas(runs):
    """logits_shift (Dream; adapted AR models): the canvas starts with the start token, which is never a hole nor
    scored; the result's tokens and hole spans are counted after it."""
    from dlm.models.transformer import Transformer

    engine = Engine.load(runs["mdlm"])
    engine.config.model.logits_shift = True
    torch.manual_seed(1)
    net = Transformer(engine.config.model).eval()
    seen = []
    engine.model = lambda x, *a, **k: seen.append(x.clone()) or net(x, *a, **k)
    tok = engine.tokenizer
    r = engine.infill("[MASK*2] truth [MASK]", "confidence")
    assert seen and all(bool((x[:, 0] == tok.bos_id).all()) for x in seen)
    assert r.holes[0] == (0, 2) and r.tokens[2 : r.holes[1][0]] == tok.encode(" truth")
    seen.clear()
    text = "a truth universally"
    e = engine.edit(text, remask_k=1)
    assert len(e.scores) == len(tok.encode(text)) and all(bool((x[:, 0] == tok.bos_id).all()) for x in seen)
