"""``dlm export``: a model as a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dlm.cli.app import MODEL_HELP, app, dtype_option


@app.command()
def export(
    run_dir: str = typer.Argument(..., help=MODEL_HELP),
    out_dir: Path = typer.Argument(..., help="The folder to write (safetensors, config.json, tokenizer, README.md)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it is not empty."),
    dtype: Optional[str] = dtype_option(),
) -> None:
    """Write a Llama-family model as a Hugging Face folder. An AR model loads in transformers'
    AutoModelForCausalLM with the same logits; a diffusion model keeps its objective, mask token and logits shift
    in config.json["dlm"], which dlm.load reads back. Example: dlm export runs/smol-mdlm exports/smol-mdlm"""
    from dlm.export import export as run_export

    out = run_export(run_dir, out_dir, overwrite=overwrite, dtype=dtype)
    typer.echo(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
