"""``dlm serve``: the OpenAI-compatible HTTP server (FastAPI + uvicorn, the serve extra; docs/SERVING.md)."""

from __future__ import annotations

import logging
import signal
from typing import Optional

import typer

from dlm.cli.app import MODEL_HELP, app, device_option, dtype_option, objective_option
from dlm.errors import DlmError


@app.command()
def serve(
    model: str = typer.Argument(..., help=MODEL_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 exposes the server to the network)."),
    port: int = typer.Option(8000, help="TCP port."),
    max_batch: int = typer.Option(16, "--max-batch", help="Rows (choices) run together in one batched call."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests that may wait; more get 503 with Retry-After."),
    timeout: float = typer.Option(300.0, help="Seconds a request may take, queueing included (then 408)."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="DLM_API_KEY", help="Require Authorization: Bearer KEY (also from $DLM_API_KEY)."
    ),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="The most max_tokens one request may ask for."),
    max_body: int = typer.Option(1 << 20, "--max-body", help="The largest request body in bytes (then 413)."),
    name: Optional[str] = typer.Option(None, "--name", help="The model id clients send (default: MODEL as given)."),
    batch_window: float = typer.Option(
        0.01, "--batch-window", help="Seconds the queue waits after a request for others to join its batch."
    ),
    grace: float = typer.Option(10.0, help="On SIGTERM, seconds to let running requests finish before cancelling."),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    objective: Optional[str] = objective_option(),
) -> None:
    """Serve a model over OpenAI's API. Example: dlm serve runs/tiny --port 8000, then
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{"model": "runs/tiny", "prompt": "Emma"}'
    """
    try:
        import uvicorn

        from dlm.serve.app import create_app
        from dlm.serve.requests import Limits
    except ImportError as e:
        raise DlmError(f"dlm serve needs the serve extra ({e.name} is missing): pip install 'dlm[serve]'") from None
    from dlm.engine import Engine

    if min(max_batch, max_queue, max_tokens, max_body) <= 0 or timeout <= 0:
        raise DlmError("--max-batch, --max-queue, --max-tokens, --max-body and --timeout must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    engine = Engine.load(model, dtype=dtype, device=device, objective=objective)
    served = create_app(
        engine,
        model_id=name or model,
        limits=Limits(max_tokens=max_tokens, rows=max_batch),
        max_batch=max_batch,
        max_queue=max_queue,
        timeout=timeout,
        api_key=api_key or None,  # an empty $DLM_API_KEY is no key, not the empty key
        max_body=max_body,
        window=batch_window,
    )
    # uvicorn turns SIGTERM into a graceful shutdown, then raises the signal again to end the process: with this
    # handler in place that second signal does nothing, and the command exits 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    config = uvicorn.Config(
        served, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=grace
    )
    uvicorn.Server(config).run()
    typer.echo("dlm serve: stopped", err=True)
