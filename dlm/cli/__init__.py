"""The ``dlm`` command: train, sft, eval, sample, chat, infill, edit, export, demo, bench, serve (``--help``).

A thin package, one module per verb; each parses flags into configs and calls the library (``dlm.Engine``,
``dlm.train.loop.train``, ``dlm.eval``). ``python -m dlm.cli`` runs it too.
"""

from __future__ import annotations

import sys

import typer

# isort: off
from dlm.cli import train, sft, evaluate, sample, chat, infill, edit, export, demo, bench, serve  # noqa: F401  (each registers its command, in this order)

# isort: on
from dlm.cli.app import app
from dlm.cli.sample import sample_texts  # noqa: F401  (deprecated alias, kept for one release)
from dlm.errors import DlmError


def main() -> None:
    try:
        app()
    except DlmError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
