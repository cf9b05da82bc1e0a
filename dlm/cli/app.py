"""The typer application every verb module registers its command on."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Diffusion language models: train, evaluate and sample masked-diffusion and autoregressive LMs.",
)

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: sampling speed against quality.")
app.add_typer(bench_app, name="bench")
