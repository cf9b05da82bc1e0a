"""``dlm demo``: train the small masked-diffusion LM for a few minutes, evaluate it, sample from it."""

from __future__ import annotations

from pathlib import Path

import typer

from dlm.cli.app import app
from dlm.cli.sample import print_steps

DEMO_PROMPTS = [
    "It is a truth universally acknowledged,",
    "Mr. Darcy looked at Elizabeth and",
    "The weather at Bath was",
]


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
    typer.echo(
        f"   perplexity <= {report['ppl']:.1f}, bits per byte <= {report['bits_per_byte']:.3f} "
        f"({report['tokens']} tokens; an upper bound; `dlm eval {out}` evaluates the whole split)"
    )
    typer.echo("== 3/3 sampling with MDLM's ancestral sampler: 48 tokens, 48 steps, temperature 1")
    engine = Engine(model, tokenizer, cfg)
    for i, p in enumerate(DEMO_PROMPTS):
        (result,) = engine.generate(
            [p], "ancestral", seed + i, gen_length=48, steps=48, temperature=1.0, stop_at_eos=False, history=(i == 0)
        )
        if result.history:
            print_steps("ancestral", result.history)
        typer.echo(f"--- {p!r} ->\n{p}{result.text}\n")
    typer.echo(
        f'done. Try LLaDA\'s sampler: dlm sample {out} --prompt "Emma" --gen-length 64 --steps 64 '
        "--block-length 16 --temperature 1 --show-steps"
    )
