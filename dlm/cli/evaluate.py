"""``dlm eval``: likelihood on the validation split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dlm.cli.app import app
from dlm.errors import DlmError


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
    report = evaluate(
        model,
        objective,
        val,
        tokenizer,
        num_samples=num_samples,
        seed=seed,
        max_sequences=max_sequences,
        batch_size=batch_size,
    )
    if json_:
        typer.echo(json.dumps(report, indent=2))
        return
    rel = "<=" if report["is_bound"] else "="
    typer.echo(
        f"{run_dir}: {objective.name} on {cfg.data.name} validation, {report['tokens']} tokens"
        + (f", {num_samples} Monte Carlo draws per sequence (an upper bound)" if report["is_bound"] else " (exact)")
    )
    typer.echo(f"  nats/token     {rel} {report['nats_per_token']:.4f}")
    typer.echo(f"  perplexity     {rel} {report['ppl']:.2f}")
    typer.echo(f"  bits per byte  {rel} {report['bits_per_byte']:.4f}")
