"""The `dlm` command end to end, as a user runs it (subprocesses, tiny preset)."""

import json

import pytest
from helpers import dlm


def test_help_lists_the_verbs():
    out = dlm("--help").stdout
    for verb in ("train", "eval", "sample", "demo", "bench"):
        assert verb in out
    train_help = dlm("train", "--help").stdout
    for flag in ("--preset", "--objective", "--max-steps", "--out", "--seed", "--resume", "--compile", "--data"):
        assert flag in train_help


def test_train_eval_sample_ar(tmp_path):
    run = tmp_path / "ar"
    proc = dlm(
        "train",
        "--preset",
        "tiny",
        "--objective",
        "ar",
        "--max-steps",
        20,
        "--out",
        run,
        "--seed",
        1,
        "--quiet",
        "--set",
        "train.log_every=10",
    )
    assert "done: step 20" in proc.stdout + proc.stderr
    report = json.loads(dlm("eval", run, "--json", "--max-sequences", 16).stdout)
    assert report["objective"] == "ar" and report["is_bound"] is False and report["mc_draws"] == 0
    assert report["tokens"] == 16 * 64 and report["ppl"] > 1 and report["bits_per_byte"] > 0
    again = json.loads(dlm("eval", run, "--json", "--max-sequences", 16).stdout)
    assert again == report  # deterministic
    out = dlm("sample", run, "--prompt", "Emma was", "--gen-length", 12, "--seed", 3).stdout
    assert out.startswith("--- sample 0 ---\nEmma was")
    assert out == dlm("sample", run, "--prompt", "Emma was", "--gen-length", 12, "--seed", 3).stdout
    proc = dlm("sample", run, "--gen-length", 12, "--steps", 4, check=False)  # AR has no denoising steps
    assert proc.returncode == 2 and proc.stdout == ""
    assert (
        proc.stderr == "error: --steps does not apply to the ar sampler; it takes: --temperature, --top-k, "
        "--top-p, --cache\n"
    )


def test_eval_and_sample_mdlm(tiny_mdlm_run):
    report = json.loads(dlm("eval", tiny_mdlm_run, "--json", "--max-sequences", 16, "--num-samples", 2).stdout)
    assert report["is_bound"] is True and report["mc_draws"] == 2 and report["nats_per_token"] > 0
    text = dlm("eval", tiny_mdlm_run, "--max-sequences", 16).stdout
    assert "<=" in text and "bits per byte" in text
    out = dlm(
        "sample",
        tiny_mdlm_run,
        "--prompt",
        "Anne",
        "--gen-length",
        16,
        "--steps",
        8,
        "--block-length",
        8,
        "--show-steps",
    ).stdout
    assert "[1/8]" in out and "[8/8]" in out and "░" in out.splitlines()[1]
    assert "░" not in out.split("--- sample 0 ---")[1]
    out = dlm(
        "sample", tiny_mdlm_run, "--gen-length", 16, "--steps", 16, "--sampler", "ancestral", "--num-samples", 2
    ).stdout
    assert "--- sample 1 ---" in out
    out = dlm(
        "sample",
        tiny_mdlm_run,
        "--gen-length",
        16,
        "--block-length",
        8,
        "--threshold",
        0.3,
        "--remasking",
        "margin",
        "--show-steps",
    ).stdout
    assert "░" not in out.split("--- sample 0 ---")[1]


def test_sample_batches_prompts_of_any_length_without_changing_a_sample(tiny_mdlm_run, tmp_path):
    args = [
        "--prompt",
        "Anne",
        "--prompt",
        "Captain Wentworth was",
        "--num-samples",
        2,
        "--gen-length",
        16,
        "--block-length",
        8,
        "--temperature",
        1,
        "--cache",
        "dual",
        "--no-stop-at-eos",
    ]
    together = dlm("sample", tiny_mdlm_run, *args, "--batch-size", 4).stdout
    one_by_one = dlm("sample", tiny_mdlm_run, *args, "--batch-size", 1).stdout
    assert together == one_by_one
    parts = together.split("--- sample ")[1:]
    assert len(parts) == 4 and parts[2].split("\n", 1)[1].startswith("Captain Wentworth was")
    (tmp_path / "prompts.txt").write_text("Anne\nCaptain Wentworth was\n")
    from_file = dlm("sample", tiny_mdlm_run, "--prompt-file", tmp_path / "prompts.txt", *args[4:]).stdout
    assert from_file == together


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--preset", "huge", "--out", "{tmp}/x"], "unknown preset 'huge'; choose one of: tiny, small, base"),
        (["train", "--objective", "gpt", "--out", "{tmp}/x"], "unknown objective 'gpt'; choose one of: ar, mdlm"),
        (
            ["train", "--preset", "tiny", "--out", "{tmp}/x", "--set", "model.width=3"],
            "unknown config key 'model.width'",
        ),
        (["eval", "{tmp}/missing"], "no checkpoint found"),
        (["train", "--preset", "tiny", "--out", "{tmp}/x", "--set", "model.n_heads=5"], "must split into 5 heads"),
        (["sample", "{run}", "--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
        (["eval", "{run}", "--max-sequences", "0"], "must be positive"),
        (["train", "--preset", "tiny", "--out", "{run}"], "already holds a checkpoint; pass --resume"),
        (["sample", "{run}", "--sampler", "ar"], "does not apply to a model trained with --objective mdlm"),
        (["sample", "{run}", "--gen-length", "100"], "exceeds the model's context of 64 tokens"),
        (["sample", "{run}", "--sampler", "beam"], "unknown sampler 'beam'"),
        (["sample", "{run}", "--gen-length", "16", "--block-length", "5"], "divisible by block_length"),
        (
            ["sample", "{run}", "--cache", "lru"],
            "unknown cache 'lru' for the confidence sampler; choose one of: none, prefix, dual",
        ),
        (
            ["sample", "{run}", "--sampler", "ancestral", "--cache", "dual"],
            "--cache does not apply to the ancestral sampler; it takes: --steps, --temperature, --top-k, --top-p",
        ),
        (["sample", "{run}", "--steps", "16", "--refresh-every", "0"], "refresh_every must be a positive integer"),
        (["sample", "{run}", "--prompt-file", "{tmp}/none.txt"], "cannot read --prompt-file"),
    ],
)
def test_bad_input_gets_a_one_line_error(args, message, tmp_path, tiny_mdlm_run):
    args = [a.format(tmp=tmp_path, run=tiny_mdlm_run) for a in args]
    proc = dlm(*args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr


def test_sample_rejects_an_option_the_sampler_does_not_take(tiny_mdlm_run):
    """Sampler flags default to "not given": one that does not apply (here Fast-dLLM's threshold with MDLM's
    ancestral sampler) is a one-line error instead of being ignored, and nothing is generated."""
    proc = dlm("sample", tiny_mdlm_run, "--sampler", "ancestral", "--threshold", 0.9, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert [line for line in lines if "error:" in line] == lines
    assert "--threshold does not apply to the ancestral sampler" in lines[0]
    # the same option is fine with the sampler that takes it
    out = dlm("sample", tiny_mdlm_run, "--sampler", "confidence", "--threshold", 0.9, "--gen-length", 8).stdout
    assert out.startswith("--- sample 0 ---")
