"""The ``dlm`` command: train, sft, eval, sample, chat, infill, edit, export, demo, bench, serve (``--help``).

A thin package, one module per verb; each parses flags into configs and calls the library (``dlm.Engine``,
``dlm.train.loop.train``, ``dlm.eval``). ``python -m dlm.cli`` runs it too.

Every refusal, a ``DlmError`` of the library or a usage error of the command line (an unknown flag, a value that
does not parse), is one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import typer

try:  # newer typer releases carry their own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover (older typer)
    from click import exceptions as click_errors

# isort: off
from dlm.cli import train, sft, evaluate, sample, chat, infill, edit, export, demo, bench, serve  # noqa: F401  (each registers its command, in this order)

# isort: on
from dlm.cli.app import app  # noqa: E402
from dlm.cli.sample import sample_texts  # noqa: E402, F401  (deprecated alias, kept for one release)
from dlm.errors import DlmError  # noqa: E402

# `dlm` or `dlm bench` alone: typer has printed the help (click < 8.2 exits 0 there instead)
NO_ARGS = getattr(click_errors, "NoArgsIsHelpError", ())


def usage_error_line(e: click_errors.UsageError) -> str:
    """A usage error (typer/click: an unknown flag, a missing one, a value that does not parse) as one line."""
    command = e.ctx.command_path if e.ctx is not None else "dlm"
    message = " ".join(e.format_message().split()).rstrip(".")  # click wraps some messages over several lines
    return f"{command}: {message}; see {command} --help"


def main(argv: list[str] | None = None) -> None:
    """Run ``dlm`` with ``argv`` (default: the process's arguments); exits with the command's status."""
    try:
        code = app(args=argv, prog_name="dlm", standalone_mode=False)
    except NO_ARGS:
        sys.exit(2)
    except click_errors.UsageError as e:
        typer.echo(f"error: {usage_error_line(e)}", err=True)
        sys.exit(2)
    except click_errors.ClickException as e:
        typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(2)
    except DlmError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    if code == 130:  # typer turns a KeyboardInterrupt inside a command into exit status 130
        typer.echo("interrupted", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)
