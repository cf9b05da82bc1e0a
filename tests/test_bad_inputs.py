"""Bad input, as a hostile user types it: every malformed command is exit status 2 and exactly one ``error:`` line
(stderr), and every malformed API call a clear exception type with a one-line message; nothing is trained,
written or sampled on the way (issue 16, item 6).

The CLI runs in-process (``dlm.cli.main`` under typer's CliRunner isolation), so a hundred cases cost seconds; a
few run as real subprocesses (bytes that are not UTF-8 in argv, the usage box typer would print). The runs and the
damaged copies they are checked against are built once per module: one tiny mdlm run on a small corpus (a
200-token BPE would do, 300 is the floor) and one AR run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import dlm
from dlm.cli import main
from dlm.config import ModelConfig, RunConfig
from dlm.data.corpus import load_corpus
from dlm.errors import DlmError, DlmTypeError
from dlm.presets import preset_config
from dlm.train import checkpoint as ckpt
from dlm.train.loop import train


def cli(*args) -> tuple[int, str, str]:
    """``dlm ARGS`` in this process: (exit status, stdout, stderr)."""
    with CliRunner().isolation() as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        texts = out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")
    return code, *texts


def tiny_run(out: Path, corpus: Path, objective: str) -> Path:
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.train.max_steps, cfg.train.precision = objective, 2, "fp32"
    cfg.data.name, cfg.data.vocab_size, cfg.train.log_every = str(corpus), 320, 1
    train(cfg, out, progress=False)
    return out


def damaged(root: Path, source: Path, name: str, *, config=None, tensors=None, files=None) -> Path:
    """A copy of run ``source`` with its config.json edited (``config(dict)``), its weights edited
    (``tensors(dict)``) or files overwritten (``files``: name -> bytes)."""
    run = root / name
    shutil.copytree(source, run)
    at = run / ckpt.CHECKPOINT
    if config is not None:
        c = json.loads((at / "config.json").read_text())
        config(c)
        (at / "config.json").write_text(json.dumps(c))
    if tensors is not None:
        t = load_file(str(at / "model.safetensors"))
        tensors(t)
        save_file(t, str(at / "model.safetensors"))
    for file, data in (files or {}).items():
        (at / file).write_bytes(data)
    if (at / ckpt.MANIFEST).exists():
        ckpt.write_manifest(at, ckpt.checkpoint_step(at))
    return run


def nan_first(t: dict) -> None:
    name = next(n for n, v in t.items() if v.is_floating_point() and v.dim() == 2)
    t[name].view(-1)[0] = math.nan


def to_int64(t: dict) -> None:
    name = next(n for n, v in t.items() if v.is_floating_point() and v.dim() == 2)
    t[name] = t[name].long()


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """The workspace: runs, damaged runs and bad files, by name."""
    root = tmp_path_factory.mktemp("bad")
    text = load_corpus("austen").train[1][:60_000]  # Pride and Prejudice's opening chapters
    (root / "corpus.txt").write_text(text)
    mdlm = tiny_run(root / "mdlm", root / "corpus.txt", "mdlm")
    ar = tiny_run(root / "ar", root / "corpus.txt", "ar")
    paths = {"root": root, "run": mdlm, "ar": ar, "corpus": root / "corpus.txt"}
    paths["noobj"] = damaged(root, mdlm, "noobj", config=lambda c: c["train"].pop("objective"))
    paths["strint"] = damaged(root, mdlm, "strint", config=lambda c: c["model"].__setitem__("n_layers", "2"))
    paths["negctx"] = damaged(root, mdlm, "negctx", config=lambda c: c["model"].__setitem__("max_seq_len", -1))
    paths["dropout"] = damaged(root, mdlm, "dropout", config=lambda c: c["model"].__setitem__("dropout", 2.0))
    paths["nanw"] = damaged(root, mdlm, "nanw", tensors=nan_first)
    paths["intw"] = damaged(root, mdlm, "intw", tensors=to_int64)
    paths["badjson"] = damaged(root, mdlm, "badjson", files={"config.json": b'{"preset": '})
    paths["trunc"] = damaged(root, mdlm, "trunc", files={"model.safetensors": b"\x00" * 40})
    paths["badtok"] = damaged(root, mdlm, "badtok", files={"tokenizer.json": b"not json"})
    (root / "afile").write_text("a file, not a directory\n")
    (root / "empty.txt").write_text("")
    (root / "cp1252.txt").write_bytes(text.replace("--", "\u2014").encode("cp1252"))
    (root / "utf16.txt").write_bytes(text.encode("utf-16"))
    (root / "utf16le.txt").write_bytes(text.encode("utf-16-le"))
    (root / "binary.bin").write_bytes(bytes(range(256)) * 400)
    (root / "nul.txt").write_bytes(text[:20_000].encode() + b"\x00" * 64 + text[20_000:40_000].encode())
    (root / "prompts.txt").write_bytes(b"Elizabeth \xe9tait\n")
    (root / "bad.json").write_text("{")
    paths["long"] = root / ("x" * 300)  # a name longer than any file system allows
    return paths


TRAIN = ["train", "--preset", "tiny", "--max-steps", "2", "--quiet", "--precision", "fp32"]


def out(name: str = "new") -> list[str]:
    return ["--out", "{root}/" + name, "--data", "{corpus}", "--set", "data.vocab_size=320"]


# (case id, arguments with {names} of the workspace, a piece of the one error line)
CLI_CASES = [
    # --out
    ("out-is-a-file", [*TRAIN, "--out", "{root}/afile"], "is a file or lies under one; give a directory"),
    ("out-under-a-file", [*TRAIN, "--out", "{root}/afile/run"], "is a file or lies under one"),
    ("out-impossible", [*TRAIN, "--out", "{long}"], "cannot create --out"),
    ("out-holds-a-run", [*TRAIN, "--out", "{run}"], "already holds a checkpoint; pass --resume"),
    ("resume-nothing", [*TRAIN, *out("empty"), "--resume"], "holds no complete checkpoint to resume"),
    ("bench-out-is-a-file", ["bench", "sample", "{run}", "--out", "{root}/afile", "--quick"], "is a file or lies"),
    ("bench-out-under-a-file", ["bench", "sample", "{run}", "--out", "{root}/afile/b"], "is a file or lies under"),
    # config values, range-checked where they are declared
    ("dropout-2", [*TRAIN, *out(), "--set", "model.dropout=2"], "model.dropout must be in [0, 1), got 2.0"),
    ("dropout-neg", [*TRAIN, *out(), "--set", "model.dropout=-0.1"], "model.dropout must be in [0, 1)"),
    ("max-seq-len-neg", [*TRAIN, *out(), "--set", "model.max_seq_len=-1"], "model.max_seq_len must be > 0, got -1"),
    ("time-limit-neg", [*TRAIN, *out(), "--time-limit", "-1"], "--time-limit (train.time_limit_minutes) must be >= 0"),
    ("save-every-neg", [*TRAIN, *out(), "--save-every", "-1"], "--save-every (train.save_every) must be >= 0"),
    ("eval-every-neg", [*TRAIN, *out(), "--eval-every", "-1"], "--eval-every (train.eval_every) must be >= 0"),
    ("warmup-neg", [*TRAIN, *out(), "--set", "train.warmup_steps=-1"], "train.warmup_steps must be >= 0"),
    ("anneal-neg", [*TRAIN, *out(), "--anneal-steps", "-1"], "--anneal-steps (train.anneal_steps) must be >= 0"),
    ("max-steps-0", [*TRAIN, *out(), "--max-steps", "0"], "--max-steps"),
    ("batch-size-0", [*TRAIN, *out(), "--batch-size", "0"], "--batch-size (train.batch_size) must be > 0"),
    ("lr-neg", [*TRAIN, *out(), "--lr", "-1"], "--lr (train.lr) must be > 0, got -1.0"),
    ("lr-nan", [*TRAIN, *out(), "--lr", "nan"], "--lr (train.lr) must be > 0, got nan"),
    ("ema-1", [*TRAIN, *out(), "--set", "train.ema=1"], "train.ema must be in [0, 1) (0 = off), got 1.0"),
    ("beta1-1", [*TRAIN, *out(), "--set", "train.beta1=1"], "train.beta1 must be in [0, 1)"),
    ("beta2-neg", [*TRAIN, *out(), "--set", "train.beta2=-0.5"], "train.beta2 must be in [0, 1)"),
    ("grad-clip-neg", [*TRAIN, *out(), "--set", "train.grad_clip=-1"], "train.grad_clip must be >= 0"),
    ("min-lr-ratio-2", [*TRAIN, *out(), "--set", "train.min_lr_ratio=2"], "train.min_lr_ratio must be in [0, 1]"),
    ("weight-decay-neg", [*TRAIN, *out(), "--set", "train.weight_decay=-1"], "train.weight_decay must be >= 0"),
    ("val-fraction-0", [*TRAIN, *out(), "--set", "data.val_fraction=0"], "data.val_fraction must be in (0, 1)"),
    ("seq-len-0", [*TRAIN, *out(), "--set", "data.seq_len=0"], "data.seq_len must be > 0"),
    ("grad-accum-0", [*TRAIN, *out(), "--set", "train.grad_accum=0"], "train.grad_accum must be > 0"),
    ("log-every-0", [*TRAIN, *out(), "--set", "train.log_every=0"], "train.log_every must be > 0"),
    ("eval-sequences-0", [*TRAIN, *out(), "--set", "train.eval_sequences=0"], "train.eval_sequences must be > 0"),
    ("d-model-0", [*TRAIN, *out(), "--set", "model.d_model=0"], "model.d_model must be > 0"),
    ("rope-base-0", [*TRAIN, *out(), "--set", "model.rope_base=0"], "model.rope_base must be > 0"),
    ("embed-dim-neg", [*TRAIN, *out(), "--set", "model.embed_dim=-8"], "model.embed_dim must be >= 0"),
    ("n-heads-5", [*TRAIN, *out(), "--set", "model.n_heads=5"], "must split into 5 heads"),
    ("arch-gpt", [*TRAIN, *out(), "--set", "model.arch=gpt"], "unknown model.arch 'gpt'"),
    ("nonfinite-ignore", [*TRAIN, *out(), "--set", "train.nonfinite=ignore"], "unknown train.nonfinite 'ignore'"),
    ("set-bad-int", [*TRAIN, *out(), "--set", "model.n_layers=two"], "bad value 'two' for model.n_layers"),
    ("set-bad-bool", [*TRAIN, *out(), "--set", "model.causal=maybe"], "bad value 'maybe' for model.causal"),
    ("set-unknown-key", [*TRAIN, *out(), "--set", "model.width=3"], "unknown config key 'model.width'"),
    ("set-no-equals", [*TRAIN, *out(), "--set", "model.dropout"], "must look like section.key=value"),
    ("set-bad-section", [*TRAIN, *out(), "--set", "optim.lr=1"], "must be data.KEY, model.KEY"),
    ("preset-huge", [*TRAIN, *out(), "--preset", "huge"], "unknown preset 'huge'; choose one of: tiny"),
    ("objective-gpt", [*TRAIN, *out(), "--objective", "gpt"], "unknown objective 'gpt'"),
    ("block-size-on-mdlm", [*TRAIN, *out(), "--block-size", "4"], "--block-size 4 applies to --objective bd3lm"),
    ("graph-on-mdlm", [*TRAIN, *out(), "--graph", "uniform"], "--graph uniform applies to --objective sedd"),
    ("alpha0-1.5", [*TRAIN, *out(), "--objective", "esolm", "--alpha0", "1.5"], "--alpha0 1.5 must be in [0, 1]"),
    ("block-size-5", [*TRAIN, *out(), "--objective", "bd3lm", "--block-size", "5"], "--block-size 5 must be"),
    ("objective-option", [*TRAIN, *out(), "--set", "objective.alpha0=0.5"], "objective.alpha0 is not an option"),
    ("ar-time-cond", [*TRAIN, *out(), "--objective", "ar", "--set", "model.time_conditioning=1"], "has no time"),
    ("anneal-on-ar", [*TRAIN, *out(), "--objective", "ar", "--anneal-steps", "5"], "applies to diffusion"),
    ("init-and-tokenizer", [*TRAIN, *out(), "--init", "{run}", "--tokenizer", "{root}/t.json"], "drop --tokenizer"),
    # data
    ("data-missing", [*TRAIN, *out(), "--data", "{root}/none.txt"], "is not 'austen', an existing .txt file"),
    ("data-empty", [*TRAIN, *out(), "--data", "{root}/empty.txt"], "holds no text"),
    ("data-cp1252", [*TRAIN, *out(), "--data", "{root}/cp1252.txt"], "not valid utf-8 text (byte 0x97 at offset"),
    ("data-utf16", [*TRAIN, *out(), "--data", "{root}/utf16.txt"], "it is UTF-16 text (it starts with a UTF-16"),
    ("data-utf16-no-bom", [*TRAIN, *out(), "--data", "{root}/utf16le.txt"], "--encoding utf-16-le"),
    ("data-binary", [*TRAIN, *out(), "--data", "{root}/binary.bin"], "binary.bin is a binary file, not text"),
    ("data-nul", [*TRAIN, *out(), "--data", "{root}/nul.txt"], "nul.txt is a binary file, not utf-8 text"),
    ("data-wrong-encoding", [*TRAIN, *out(), "--data", "{root}/utf16.txt", "--encoding", "ascii"], "valid ascii"),
    ("encoding-unknown", [*TRAIN, *out(), "--data", "{root}/cp1252.txt", "--encoding", "klingon"], "unknown --enc"),
    ("data-empty-folder", [*TRAIN, *out(), "--data", "{root}/mdlm"], "no .txt files under"),
    ("tokenizer-missing", [*TRAIN, *out(), "--tokenizer", "{root}/none.json"], "tokenizer file"),
    ("tokenizer-bad", [*TRAIN, *out(), "--tokenizer", "{root}/bad.json"], "is not a valid tokenizer.json"),
    # --resume compares the flags given (only those) with the saved config
    ("resume-preset", [*TRAIN, "--out", "{run}", "--resume", "--preset", "small"], "--preset small differs from"),
    ("resume-objective", [*TRAIN, "--out", "{run}", "--resume", "--objective", "ar"], "--objective ar differs"),
    ("resume-lr", [*TRAIN, "--out", "{run}", "--resume", "--lr", "0.5"], "--lr 0.5 differs from its train.lr"),
    ("resume-set", [*TRAIN, "--out", "{run}", "--resume", "--set", "train.ema=0.5"], "--set train.ema 0.5 differs"),
    ("resume-data", [*TRAIN, "--out", "{run}", "--resume", "--data", "austen"], "--data austen differs"),
    # usage errors (typer/click): one line instead of the usage box
    ("usage-unknown-flag", ["train", "--bogus"], "dlm train: No such option: --bogus"),
    ("usage-missing-out", ["train", "--preset", "tiny"], "dlm train: Missing option '--out'; see dlm train --help"),
    ("usage-bad-int", ["sample", "{run}", "--gen-length", "abc"], "Invalid value for '--gen-length'"),
    ("usage-float-for-int", [*TRAIN, *out(), "--max-steps", "1.5"], "Invalid value for '--max-steps'"),
    ("usage-bad-float", ["sample", "{run}", "--temperature", "hot"], "Invalid value for '--temperature'"),
    ("usage-unknown-command", ["trian"], "No such command 'trian'"),
    ("usage-missing-argument", ["sample"], "Missing argument 'run_dir'"),
    ("usage-extra-argument", ["sample", "{run}", "extra"], "Got unexpected extra argument"),
    ("usage-bench-unknown", ["bench", "speed"], "No such command 'speed'"),
    ("usage-flag-needs-value", ["sample", "{run}", "--prompt"], "Option '--prompt' requires an argument"),
    # sampling options
    ("sample-missing-run", ["sample", "{root}/none"], "none"),
    ("prompt-not-utf8", ["sample", "{run}", "--prompt", "Elizabeth \udce9tait"], "--prompt is not valid UTF-8"),
    ("prompt-file-not-utf8", ["sample", "{run}", "--prompt-file", "{root}/prompts.txt"], "is not UTF-8 text"),
    ("prompt-file-missing", ["sample", "{run}", "--prompt-file", "{root}/none.txt"], "cannot read --prompt-file"),
    ("prompt-file-empty", ["sample", "{run}", "--prompt-file", "{root}/empty.txt"], "there must be a prompt"),
    ("temperature-nan", ["sample", "{run}", "--temperature", "nan"], "temperature must be a finite number >= 0"),
    ("temperature-inf", ["sample", "{run}", "--temperature", "inf"], "temperature must be a finite number >= 0"),
    ("temperature-neg", ["sample", "{run}", "--temperature", "-1"], "temperature must be a finite number >= 0"),
    ("threshold-2", ["sample", "{run}", "--threshold", "2"], "threshold must be in [0, 1]"),
    ("cfg-scale-neg", ["sample", "{run}", "--cfg-scale", "-3"], "cfg_scale must be a finite number >= 0"),
    ("top-p-0", ["sample", "{run}", "--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
    ("top-p-nan", ["sample", "{run}", "--top-p", "nan"], "top_p must be in (0, 1]"),
    ("top-k-neg", ["sample", "{run}", "--top-k", "-1"], "top_k must be >= 0"),
    ("steps-0", ["sample", "{run}", "--steps", "0"], "steps"),
    ("gen-length-0", ["sample", "{run}", "--gen-length", "0"], "gen_length and batch_size must be positive"),
    ("gen-length-long", ["sample", "{run}", "--gen-length", "100"], "exceeds the model's context of 64 tokens"),
    ("num-samples-0", ["sample", "{run}", "--num-samples", "0"], "--num-samples and --batch-size must be positive"),
    ("batch-size-0-sample", ["sample", "{run}", "--batch-size", "0"], "must be positive"),
    ("sampler-unknown", ["sample", "{run}", "--sampler", "beam"], "unknown sampler 'beam'"),
    ("sampler-ar-on-mdlm", ["sample", "{run}", "--sampler", "ar"], "does not apply to a model trained with"),
    ("option-not-taken", ["sample", "{run}", "--sampler", "ancestral", "--threshold", "0.9"], "--threshold does"),
    ("block-length-5", ["sample", "{run}", "--gen-length", "16", "--block-length", "5"], "divisible by block_len"),
    ("cache-unknown", ["sample", "{run}", "--cache", "lru"], "unknown cache 'lru'"),
    ("remasking-unknown", ["sample", "{run}", "--remasking", "best"], "best"),
    ("refresh-every-0", ["sample", "{run}", "--steps", "16", "--refresh-every", "0"], "refresh_every must be"),
    ("dtype-unknown", ["sample", "{run}", "--dtype", "fp8"], "fp8"),
    ("objective-unknown-sample", ["sample", "{run}", "--objective", "gpt"], "unknown objective 'gpt'"),
    ("ar-temperature-nan", ["sample", "{ar}", "--temperature", "nan"], "temperature must be a finite number"),
    # damaged checkpoints
    ("config-string-int", ["sample", "{strint}"], "config.json: model.n_layers must be an int, got '2'"),
    ("config-no-objective", ["sample", "{noobj}"], "config.json: the config has no train.objective"),
    ("config-negative-context", ["sample", "{negctx}"], "config.json: model.max_seq_len must be > 0, got -1"),
    ("config-dropout", ["eval", "{dropout}"], "config.json: model.dropout must be in [0, 1)"),
    ("config-not-json", ["sample", "{badjson}"], "config.json is not valid JSON"),
    ("weights-nan", ["sample", "{nanw}"], "holds NaN or infinite values"),
    ("weights-nan-eval", ["eval", "{nanw}"], "holds NaN or infinite values"),
    ("weights-int64", ["sample", "{intw}"], "is int64, the model expects float32"),
    ("weights-truncated", ["sample", "{trunc}"], "is corrupt or truncated"),
    ("tokenizer-corrupt", ["sample", "{badtok}"], "is not a valid tokenizer.json"),
    ("eval-missing", ["eval", "{root}/none"], "none"),
    ("eval-max-sequences-0", ["eval", "{run}", "--max-sequences", "0"], "must be positive"),
    # infill, edit, export
    ("infill-text-not-utf8", ["infill", "{run}", "--text", "a [MASK] \udcff"], "--text is not valid UTF-8"),
    ("infill-bad-hole", ["infill", "{run}", "--text", "a [MASK*x] b"], "MASK"),
    ("infill-on-ar", ["infill", "{ar}", "--text", "a [MASK] b"], "cannot infill"),
    ("edit-text-not-utf8", ["edit", "{run}", "--text", "\udcffa", "--span", "0:1"], "--text is not valid UTF-8"),
    ("edit-bad-span", ["edit", "{run}", "--text", "It is a truth", "--span", "8-13"], "--span '8-13' must be"),
    ("export-onto-a-file", ["export", "{run}", "{root}/afile"], "afile is a file or lies under one"),
    ("export-under-a-file", ["export", "{run}", "{root}/afile/hf"], "afile/hf is a file or lies under one"),
    ("export-not-empty", ["export", "{run}", "{root}/mdlm"], "is not empty; pass --overwrite"),
]


@pytest.mark.parametrize("args, message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_a_bad_command_is_one_error_line_and_exit_2(w, args, message):
    args = [a.format(**w) for a in args]
    code, stdout, stderr = cli(*args)
    lines = stderr.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr, stdout[-500:])
    assert message in lines[0], lines[0]


def test_nothing_was_written_by_the_refused_training_runs(w):
    """The refusals above come before any run directory is made or filled (the case ids say which ran)."""
    assert not (w["root"] / "new").exists() or not any((w["root"] / "new").glob("*/model.safetensors"))
    assert (w["root"] / "afile").read_text() == "a file, not a directory\n"
    assert ckpt.checkpoint_step(w["run"] / ckpt.CHECKPOINT) == 2  # the --resume refusals left it as it was


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_one_error_line(w, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, _, stderr = cli(*TRAIN, "--out", ro / "run")
    assert code == 2 and stderr.startswith("error: cannot create --out") and stderr.count("\n") == 1


def test_as_subprocesses_bytes_that_are_not_utf8_and_the_usage_box(w):
    """Real processes: argv bytes that are not UTF-8 reach Python as surrogates, and typer's own usage box is
    replaced by the one line."""
    run = str(w["run"])
    for args, message in (
        (
            [b"sample", run.encode(), b"--prompt", b"Elizabeth \xe9tait"],
            "--prompt is not valid UTF-8 text (the byte 0xe9",
        ),
        ([b"train", b"--bogus"], "error: dlm train: No such option: --bogus"),
        ([b"sample", run.encode(), b"--temperature", b"nan"], "temperature must be a finite number >= 0, got nan"),
    ):
        proc = subprocess.run([sys.executable.encode(), b"-m", b"dlm.cli", *args], capture_output=True)
        lines = proc.stderr.decode(errors="replace").splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert message in lines[0] and proc.stdout == b""


def test_resume_compares_only_the_flags_given(w, tmp_path):
    """The ar run resumed without --objective (whose default is mdlm) is not an error: only given flags count."""
    run = tmp_path / "ar"
    shutil.copytree(w["ar"], run)
    code, stdout, stderr = cli("train", "--out", run, "--resume", "--max-steps", "3", "--quiet", "--lr", "2e-3")
    assert code == 0, stderr
    assert ckpt.checkpoint_step(run / ckpt.CHECKPOINT) == 3
    assert ckpt.load_config(run / ckpt.CHECKPOINT).train.objective == "ar"


def test_other_encodings_train_with_encoding(w, tmp_path):
    from dlm.data.corpus import read_text_file

    text = read_text_file(w["root"] / "utf16.txt", "utf-16")
    assert text == w["corpus"].read_text() and "\ufffd" not in text
    assert "\u2014" in read_text_file(w["root"] / "cp1252.txt", "cp1252")
    cfg = preset_config("tiny")
    cfg.data.name, cfg.data.encoding, cfg.data.vocab_size = str(w["root"] / "cp1252.txt"), "cp1252", 320
    from dlm.data.packing import load_packed

    tokenizer, train_set, _ = load_packed(cfg.data)
    assert "\u2014" in tokenizer.decode(train_set.tokens[:20_000].tolist())


def test_a_tokenizer_without_its_mask_token_gets_a_free_id(w, tmp_path):
    """tokenizer.json with <|mask|> deleted by hand (a gap in the ids): it is added back at the free id, not at
    the id of a regular token, and the corpus check no longer blames the data."""
    from dlm.data.tokenizer import MASK, load_tokenizer

    spec = json.loads((w["run"] / ckpt.CHECKPOINT / "tokenizer.json").read_text())
    gap = next(t["id"] for t in spec["added_tokens"] if t["content"] == MASK)
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != MASK]
    del spec["model"]["vocab"][MASK]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    before = {v: k for k, v in spec["model"]["vocab"].items()}
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.mask_id == gap and tok.token(tok.mask_id) == MASK
    assert all(tok.token(i) == t for i, t in before.items())  # no regular token lost its id
    assert tok.encode("Mr. Darcy" + MASK) == tok.encode("Mr. Darcy") + [gap]
    assert len({tok.eos_id, tok.mask_id, tok.pad_id}) == 3


# --- the API ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(w):
    model, tokenizer, config = dlm.load(w["run"])
    return model, tokenizer, config, dlm.Engine(model, tokenizer, config)


def api_cases():
    p = [[1, 2, 3]]
    return [
        ("forward-list", lambda m, t, e, V: m([[1, 2]]), DlmTypeError, "x must be a tensor [B, L]"),
        ("forward-1d", lambda m, t, e, V: m(torch.tensor([1, 2])), DlmError, "x[None]"),
        ("forward-float", lambda m, t, e, V: m(torch.ones(1, 2)), DlmTypeError, "integer token ids"),
        ("forward-id-too-big", lambda m, t, e, V: m(torch.tensor([[V]])), DlmError, "outside the model's vocab"),
        ("forward-id-negative", lambda m, t, e, V: m(torch.tensor([[-1]])), DlmError, "token id -1, outside"),
        ("forward-too-long", lambda m, t, e, V: m(torch.zeros(1, 65, dtype=torch.long)), DlmError, "context of 64"),
        (
            "generate-list",
            lambda m, t, e, V: dlm.generate(m, p, mask_id=t.mask_id, gen_length=4),
            DlmTypeError,
            "tensor",
        ),
        (
            "generate-1d",
            lambda m, t, e, V: dlm.generate(m, torch.tensor(p[0]), mask_id=t.mask_id, gen_length=4),
            DlmError,
            "prompt[None]",
        ),
        (
            "generate-id-too-big",
            lambda m, t, e, V: dlm.generate(m, torch.tensor([[V + 5]]), mask_id=t.mask_id, gen_length=4),
            DlmError,
            "outside the model's",
        ),
        (
            "generate-mask-id",
            lambda m, t, e, V: dlm.generate(m, torch.tensor(p), mask_id=V, gen_length=4),
            DlmError,
            "mask_id",
        ),
        (
            "generate-mask-id-neg",
            lambda m, t, e, V: dlm.generate(m, torch.tensor(p), mask_id=-1, gen_length=4),
            DlmError,
            "mask_id -1 is outside",
        ),
        (
            "generate-top-k-neg",
            lambda m, t, e, V: dlm.generate(m, torch.tensor(p), mask_id=t.mask_id, gen_length=4, top_k=-1),
            DlmError,
            "top_k must be >= 0",
        ),
        (
            "generate-temperature-nan",
            lambda m, t, e, V: dlm.generate(m, torch.tensor(p), mask_id=t.mask_id, gen_length=4, temperature=math.nan),
            DlmError,
            "temperature must be a finite",
        ),
        (
            "generate-too-long",
            lambda m, t, e, V: dlm.generate(m, torch.tensor(p), mask_id=t.mask_id, gen_length=62),
            DlmError,
            "exceeds the model's context of 64",
        ),
        (
            "generate-gen-length-0",
            lambda m, t, e, V: dlm.generate(m, torch.tensor(p), mask_id=t.mask_id, gen_length=0),
            DlmError,
            "gen_length must be",
        ),
        (
            "engine-temperature-nan",
            lambda m, t, e, V: e.generate("Emma", temperature=math.nan),
            DlmError,
            "temperature must be a finite",
        ),
        ("engine-top-k-neg", lambda m, t, e, V: e.generate("Emma", top_k=-2), DlmError, "top_k must be >= 0"),
        ("engine-too-long", lambda m, t, e, V: e.generate("Emma", gen_length=100), DlmError, "context of 64"),
        ("engine-ids-too-big", lambda m, t, e, V: e.generate_ids([[V]]), DlmError, "prompt 0 holds the token id"),
        ("engine-ids-negative", lambda m, t, e, V: e.generate_ids([[5, -3]]), DlmError, "token id -3, outside"),
        ("engine-ids-flat", lambda m, t, e, V: e.generate_ids([1, 2]), DlmTypeError, "list of int token ids"),
        ("engine-prompt-int", lambda m, t, e, V: e.generate(5), DlmTypeError, "a str or a list of str"),
        ("engine-prompt-bytes", lambda m, t, e, V: e.generate([b"Emma"]), DlmTypeError, "prompt 0 must be a str"),
        ("engine-surrogate", lambda m, t, e, V: e.generate("Emma \udcff"), DlmError, "not valid UTF-8 text"),
        ("engine-gen-length-float", lambda m, t, e, V: e.generate("Emma", gen_length=4.5), DlmTypeError, "ints"),
        ("engine-unknown-option", lambda m, t, e, V: e.generate("Emma", beam=4), DlmError, "beam"),
        ("engine-seeds", lambda m, t, e, V: e.generate(["a", "b"], seed=[1]), DlmError, "1 seeds for 2 prompts"),
        ("engine-unknown-sampler", lambda m, t, e, V: e.generate("Emma", "beam"), DlmError, "unknown sampler"),
        (
            "nelbo-id-too-big",
            lambda m, t, e, V: dlm.masked_nelbo(m, torch.tensor([[V]]), mask_id=t.mask_id),
            DlmError,
            "outside the model's vocabulary",
        ),
        ("load-missing", lambda m, t, e, V: dlm.load("/nonexistent/run"), DlmError, "nonexistent"),
        (
            "config-string-int",
            lambda m, t, e, V: RunConfig.from_dict(
                {**RunConfig().to_dict(), "model": {**RunConfig().to_dict()["model"], "d_model": "384"}}
            ),
            DlmError,
            "model.d_model must be an int",
        ),
        (
            "config-dropout",
            lambda m, t, e, V: RunConfig(model=ModelConfig(dropout=2.0)).validate(),
            DlmError,
            "model.dropout must be in [0, 1), got 2.0",
        ),
    ]


API_CASES = api_cases()


@pytest.mark.parametrize("call, kind, message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_a_bad_api_call_raises_a_clear_exception(loaded, call, kind, message):
    model, tokenizer, config, engine = loaded
    with pytest.raises(kind) as info:
        call(model, tokenizer, engine, config.model.vocab_size)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, (ValueError, TypeError))  # what a Python caller expects to catch
