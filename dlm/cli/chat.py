"""``dlm chat``: talk to a model, the answer streamed as it is denoised (``Engine.chat``, ``dlm.chat``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dlm.cli.app import (
    MODEL_HELP,
    app,
    block_length_option,
    cfg_scale_option,
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

PLACEHOLDER = "░"  # a still-masked position of the canvas (dlm.engine.render)


@app.command()
def chat(
    run_dir: Path = typer.Argument(..., help=MODEL_HELP),
    message: Optional[str] = typer.Option(
        None, "--message", "-m", help="One message, one answer on stdout, then exit (scriptable)."
    ),
    system: Optional[str] = typer.Option(None, "--system", help="A system message that opens the conversation."),
    gen_length: int = typer.Option(64, "--gen-length", "--max-new-tokens", help="Tokens of an answer at most."),
    stop: Optional[List[str]] = typer.Option(
        None, "--stop", help="End the answer at this string (repeatable); EOS and end-of-turn tokens always end it."
    ),
    sampler: Optional[str] = typer.Option(None, help="The sampler (default: the model's own, e.g. confidence)."),
    steps: Optional[int] = steps_option(),
    block_length: Optional[int] = block_length_option(),
    temperature: Optional[float] = temperature_option(),
    top_p: Optional[float] = top_p_option(),
    top_k: Optional[int] = top_k_option(),
    remasking: Optional[str] = remasking_option(),
    threshold: Optional[float] = threshold_option(),
    cfg_scale: Optional[float] = cfg_scale_option(),
    seed: int = typer.Option(0, help="Seed of the first answer (the n-th answer of a session draws from seed + n)."),
    stream: bool = typer.Option(
        True, "--stream/--no-stream", help="Show the canvas as it is denoised (on a terminal; masks as ░)."
    ),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    objective: Optional[str] = objective_option(),
) -> None:
    """Chat with a model: interactive with history (/reset, /exit), or one answer with --message. Examples:
    dlm chat runs/tiny-sft      and      dlm chat runs/tiny-sft --message "2 + 3 =" --stop "\\n"

    The conversation goes through the tokenizer's chat template; the oldest turns are dropped (with a note) when
    it outgrows the context. Each answer reports its model calls (NFE) and time."""
    from rich.console import Console

    from dlm.engine import Engine

    options = given(
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        remasking=remasking,
        threshold=threshold,
        cfg_scale=cfg_scale,
    )
    engine = Engine.load(run_dir, dtype=dtype, device=device, objective=objective)
    engine.sampler_config(sampler, **options)  # a bad option is an error before the first message
    out, err = Console(), Console(stderr=True)
    opening = [{"role": "system", "content": system}] if system else []
    history: list[dict] = list(opening)

    def answer(text: str, turn: int) -> None:
        history.append({"role": "user", "content": text})
        reply = _stream_answer(engine, history, out, stream, sampler, seed + turn, gen_length, stop or [], options)
        if reply.dropped:
            err.print(f"[dim](the {reply.dropped} oldest turn(s) were dropped to fit the context)[/dim]")
        history[:] = reply.messages
        history.append({"role": "assistant", "content": reply.text})
        err.print(f"[dim]NFE {reply.nfe}, {reply.seconds:.2f} s, {len(reply.tokens)} tokens ({reply.ended})[/dim]")

    if message is not None:
        answer(message, 0)
        return
    err.print(f"[dim]dlm chat with {run_dir}: /reset clears the history, /exit (or Ctrl-D) leaves[/dim]")
    turn = 0
    while True:
        try:
            text = out.input("[bold]you>[/bold] ")
        except EOFError:
            break
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history[:] = list(opening)
            err.print("[dim](history cleared)[/dim]")
            continue
        if text.strip():
            answer(text, turn)
            turn += 1


def _stream_answer(engine, history, out, stream: bool, sampler, seed: int, gen_length: int, stop, options):
    """The answer, its canvas shown live while it is denoised (on a terminal), then printed on ``out``."""
    from rich.live import Live
    from rich.text import Text

    from dlm.engine import render

    def canvas(state) -> Text:
        text = Text(render(engine.tokenizer, state.tokens[0, -gen_length:].tolist()))
        text.highlight_regex(PLACEHOLDER + "+", "dim")
        return text

    if stream and out.is_terminal:
        with Live(Text(PLACEHOLDER * 8, style="dim"), console=out, transient=True, refresh_per_second=20) as live:
            reply = engine.chat(
                history, sampler, seed, lambda s: live.update(canvas(s)), gen_length=gen_length, stop=stop, **options
            )
    else:
        reply = engine.chat(history, sampler, seed, gen_length=gen_length, stop=stop, **options)
    out.print(Text(reply.text.strip()), soft_wrap=True)
    return reply
