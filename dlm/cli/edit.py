"""``dlm edit``: Instant Edit through the Engine: re-mask spans or the least likely tokens, regenerate them."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dlm.cli.app import (
    MODEL_HELP,
    app,
    block_length_option,
    device_option,
    dtype_option,
    given,
    objective_option,
    remasking_option,
    steps_option,
    temperature_option,
    threshold_option,
    top_k_option,
    top_p_option,
)
from dlm.cli.infill import INFILL_SAMPLER_HELP
from dlm.errors import DlmError


@app.command()
def edit(
    run_dir: Path = typer.Argument(..., help=MODEL_HELP),
    text: str = typer.Option(..., "--text", help="The text to revise."),
    span: List[str] = typer.Option(
        [],
        "--span",
        help="START:END character offsets into --text (end exclusive) to re-mask: every token overlapping it. "
        "Repeat the flag for several spans. Default: the tokens the model finds least likely.",
    ),
    rounds: int = typer.Option(1, help="Re-mask and regenerate this many times (by score: re-scored each round)."),
    below: Optional[float] = typer.Option(
        None, help="Re-mask every token whose probability given all the others is below P."
    ),
    remask_k: Optional[int] = typer.Option(
        None, "--remask-k", help="Re-mask the K least likely tokens (default without --span or --below: a tenth)."
    ),
    sampler: Optional[str] = typer.Option(None, help=INFILL_SAMPLER_HELP),
    steps: Optional[int] = steps_option(),
    block_length: Optional[int] = block_length_option(),
    temperature: Optional[float] = temperature_option(),
    top_p: Optional[float] = top_p_option(),
    top_k: Optional[int] = top_k_option(),
    remasking: Optional[str] = remasking_option(),
    threshold: Optional[float] = threshold_option(),
    seed: int = typer.Option(0, help="Seed; round r draws from seed + r."),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    objective: Optional[str] = objective_option(),
) -> None:
    """Revise a text in place and show a word-level diff. Examples:
    dlm edit runs/tiny --text "It is a truth universally acknowledged" --span 8:13;
    dlm edit runs/tiny --text "..." --rounds 3 --below 0.01"""
    from dlm.data.tokenizer import check_text
    from dlm.engine import Engine

    check_text(text, "--text")
    spans = [parse_span(s) for s in span]
    options = given(
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        remasking=remasking,
        threshold=threshold,
    )
    engine = Engine.load(run_dir, dtype=dtype, device=device, objective=objective)
    result = engine.edit(text, sampler, seed, spans=spans, rounds=rounds, below=below, remask_k=remask_k, **options)
    typer.echo(result.text)
    typer.echo(f"diff: {result.diff}")
    tokens = engine.tokenizer.encode_offsets(text)[0]
    shown = []
    for i in result.positions:
        score = "" if result.scores is None else f" (p={result.scores[i]:.3g})"
        shown.append(repr(engine.tokenizer.decode([tokens[i]], skip_special_tokens=False)) + score)
    n, r = len(result.positions), len(result.rounds)
    typer.echo(
        f"re-masked {n} token{'s' * (n != 1)} in {r} round{'s' * (r != 1)}: {', '.join(shown) or 'none'}; "
        f"NFE {result.nfe}, {result.seconds:.2f} s"
    )


def parse_span(spec: str) -> tuple[int, int]:
    """``"8:13"`` -> (8, 13)."""
    start, sep, end = spec.partition(":")
    if not (sep and start.strip().isdigit() and end.strip().isdigit()):
        raise DlmError(f"--span {spec!r} must be START:END, character offsets with the end exclusive (e.g. 8:13)")
    return int(start), int(end)
