"""``dlm sft``: supervised fine-tuning on prompt -> response records (``dlm.train.sft``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dlm.cli.app import MODEL_HELP, app


@app.command()
def sft(
    source: str = typer.Argument(..., metavar="RUN_OR_HF", help=MODEL_HELP),
    data: Path = typer.Option(
        ...,
        "--data",
        help='JSONL records {"messages": [{"role": ..., "content": ...}, ...]} (the last message is the '
        'assistant\'s answer) or {"prompt": ..., "response": ...}.',
    ),
    out: Path = typer.Option(..., "--out", help="Run directory: checkpoint/, metrics.jsonl."),
    objective: Optional[str] = typer.Option(
        None, "--objective", help="mdlm or ar (default: the source's; mdlm on an AR source adapts it too)."
    ),
    lora: int = typer.Option(
        0, "--lora", help="Train rank-R adapters on the attention and MLP projections only (merged when saved)."
    ),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimiser steps (default 300)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per step (default 16)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 1e-4)."),
    seed: int = typer.Option(0, help="Seed of the adapters, data order and noise."),
    precision: str = typer.Option("auto", help="fp32, bf16 (autocast) or auto (bf16 on CUDA, fp32 on CPU)."),
    time_limit: float = typer.Option(0.0, "--time-limit", help="Stop (and checkpoint) after this many minutes."),
    set_: Optional[List[str]] = typer.Option(
        None,
        "--set",
        help="Override any config field: --set sft.cond_dropout=0.1 (drop the prompt for CFG), "
        "--set sft.template=raw (no chat template), --set sft.max_len=256, --set train.warmup_steps=50.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a checkpoint already in OUT."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    device: Optional[str] = typer.Option(None, "--device", help="Device (default: cuda when there is one, or cpu)."),
) -> None:
    """Fine-tune a model on prompt -> response records, the loss on the responses only. Example:
    dlm sft runs/tiny --data chat.jsonl --max-steps 200 --out runs/tiny-sft

    With LoRA and a prompt dropped 10% of the time (then dlm chat ... --cfg-scale 1):
    dlm sft runs/smol-mdlm --data chat.jsonl --lora 8 --set sft.cond_dropout=0.1 --out runs/smol-sft"""
    from dlm.config import apply_overrides
    from dlm.train.sft import sft as run_sft
    from dlm.train.sft import sft_config

    cfg = sft_config(source, data, objective)
    cfg.train.seed, cfg.train.precision, cfg.train.time_limit_minutes = seed, precision, time_limit
    cfg.train.lora_rank = lora
    for name, value in (("max_steps", max_steps), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            setattr(cfg.train, name, value)
    apply_overrides(cfg, set_ or [])
    run_sft(cfg, out, overwrite=overwrite, progress=not quiet, device=device)
