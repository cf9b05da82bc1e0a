"""``dlm infill``: fill the holes of a text through the Engine, with both sides as context."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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
from dlm.cli.sample import print_steps

INFILL_SAMPLER_HELP = (
    "A sampler that reads both sides of a hole: confidence or ancestral (mdlm), sedd-analytic or sedd-euler "
    "(sedd), udlm (udlm), block (bd3lm: the right side within the hole's block). Default: the model's own."
)


@app.command()
def infill(
    run_dir: Path = typer.Argument(..., help=MODEL_HELP),
    text: str = typer.Option(
        ...,
        "--text",
        help='Text with holes: [MASK] is one token, [MASK*N] N tokens, anywhere (e.g. "It is a truth [MASK*6] '
        'acknowledged"). The text outside the holes is kept token for token.',
    ),
    lengths: Optional[str] = typer.Option(
        None,
        "--lengths",
        help="Try every hole length A-B (e.g. 2-10) and keep the one whose whole text has the best NELBO, "
        "hole by hole (a hole's [MASK*N] is its length until it is searched).",
    ),
    nelbo_samples: int = typer.Option(16, "--nelbo-samples", help="Monte Carlo draws of each NELBO (--lengths)."),
    sampler: Optional[str] = typer.Option(None, help=INFILL_SAMPLER_HELP),
    steps: Optional[int] = steps_option(),
    block_length: Optional[int] = block_length_option(),
    temperature: Optional[float] = temperature_option(),
    top_p: Optional[float] = top_p_option(),
    top_k: Optional[int] = top_k_option(),
    remasking: Optional[str] = remasking_option(),
    threshold: Optional[float] = threshold_option(),
    seed: int = typer.Option(0, help="Seed of the sampler (and of the NELBO's draws)."),
    show_steps: bool = typer.Option(False, "--show-steps", help="Print every intermediate state of the canvas."),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    objective: Optional[str] = objective_option(),
) -> None:
    """Fill the holes of a text, everything else fixed. Example:
    dlm infill runs/tiny --text "It is a truth [MASK*6] acknowledged, that a single man" --lengths 2-10

    An AR model cannot infill (it sees only the left side); the error names the samplers that can."""
    from dlm.data.tokenizer import check_text
    from dlm.engine import Engine
    from dlm.infill import parse_holes, parse_lengths

    parse_holes(check_text(text, "--text"))  # bad holes are an error before the model loads
    candidates = None if lengths is None else parse_lengths(lengths)
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
    result = engine.infill(
        text, sampler, seed, lengths=candidates, nelbo_samples=nelbo_samples, history=show_steps, **options
    )
    if show_steps:
        print_steps(sampler or engine.infill_sampler_config()[0], result.history)
    typer.echo(result.text)
    for h, (fill, (a, b)) in enumerate(zip(result.fills, result.holes)):
        typer.echo(f"hole {h + 1} ({b - a} tokens): {fill!r}")
        if result.nelbo is not None:
            table = "  ".join(f"{n}: {v:.2f}" for n, v in result.nelbo[h].items())
            typer.echo(f"  NELBO of the whole text by length (nats, <=): {table}")
    typer.echo(f"NFE {result.nfe}, {result.seconds:.2f} s")
