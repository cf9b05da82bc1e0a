"""``dlm eval``: likelihood on the validation split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dlm.cli.app import MODEL_HELP, app, device_option, dtype_option, objective_option
from dlm.errors import DlmError


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help=MODEL_HELP),
    json_: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    num_samples: int = typer.Option(4, help="Monte Carlo draws of t per sequence (diffusion only)."),
    seed: int = typer.Option(0, help="Seed of the Monte Carlo draws."),
    max_sequences: Optional[int] = typer.Option(None, help="Evaluate only the first N validation sequences."),
    batch_size: int = typer.Option(16, help="Sequences per forward pass."),
    data: Optional[str] = typer.Option(
        None, help="Evaluate on this corpus: 'austen', a .txt file or folder, hf:NAME (default: the run's own)."
    ),
    seq_len: Optional[int] = typer.Option(
        None, "--seq-len", help="Tokens per evaluated sequence (default: the run's)."
    ),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    objective: Optional[str] = objective_option(),
) -> None:
    """Likelihood on the validation split: nats/token, perplexity (a bound for diffusion), bits per byte."""
    import dlm
    from dlm.data.packing import load_packed
    from dlm.eval.likelihood import evaluate
    from dlm.objectives import OBJECTIVES

    if num_samples <= 0 or batch_size <= 0 or (max_sequences is not None and max_sequences <= 0):
        raise DlmError("--num-samples, --batch-size and --max-sequences must be positive")
    model, tokenizer, cfg = dlm.load(run_dir, dtype=dtype, device=device, objective=objective)
    if tokenizer is None:
        raise DlmError(f"{run_dir} has no tokenizer.json; dlm eval needs the model's tokenizer")
    if data is not None:
        cfg.data.name = data
    if seq_len is not None:
        if not 0 < seq_len <= cfg.model.max_seq_len - cfg.model.logits_shift:
            raise DlmError(f"--seq-len must be in [1, {cfg.model.max_seq_len - cfg.model.logits_shift}], got {seq_len}")
        cfg.data.seq_len = seq_len
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
