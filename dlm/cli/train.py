"""``dlm train``: train a model from a preset, an objective and data."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dlm.cli.app import app
from dlm.errors import DlmError

INIT_LR = 1e-4  # adaptation's default peak learning rate (a pretrained model needs a gentler one than a new one)


@app.command()
def train(
    ctx: typer.Context,
    preset: str = typer.Option("small", help="Model + training preset: tiny (tests), small (CPU), base (GPU)."),
    objective: str = typer.Option(
        "mdlm",
        help="Training objective: ar (next-token), mdlm (masked diffusion), sedd (score entropy), "
        "udlm (uniform-state diffusion), diffusion-lm (embeddings), bd3lm (block diffusion), esolm (diffusion then "
        "AR, Eso-LM).",
    ),
    block_size: Optional[int] = typer.Option(
        None, "--block-size", help="bd3lm: tokens per block, a divisor of the sequence length (default 16)."
    ),
    graph: Optional[str] = typer.Option(None, help="sedd only: the noise graph, absorb (masking; default) or uniform."),
    alpha0: Optional[float] = typer.Option(
        None,
        "--alpha0",
        help="esolm: expected fraction of tokens made by diffusion, in [0, 1] (1 = masked "
        "diffusion, 0 = autoregressive; default 1).",
    ),
    variant: Optional[str] = typer.Option(
        None,
        "--variant",
        help="esolm: attention variant, A (clean tokens attend both ways; better likelihood) or "
        "B (causal in a random order; KV cache in both sampling phases; default).",
    ),
    max_steps: int = typer.Option(1000, "--max-steps", help="Optimiser steps to train for."),
    out: Path = typer.Option(..., "--out", help="Run directory: checkpoint/, metrics.jsonl."),
    seed: int = typer.Option(0, help="Seed of the initialisation, data order and noise."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from OUT's newest complete checkpoint (bit-exact on CPU); an error when there is none.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Start afresh even if OUT holds a checkpoint; with --resume: start afresh only when there is none.",
    ),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (slow start, faster steps)."),
    data: str = typer.Option("austen", help="'austen' (bundled), a .txt file or folder, or hf:NAME[:CONFIG]."),
    encoding: str = typer.Option(
        "utf-8", "--encoding", help="Encoding of --data's text files (utf-8; e.g. utf-16, cp1252, latin-1)."
    ),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per process per micro-step (preset default)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (preset default)."),
    precision: str = typer.Option(
        "auto",
        help="fp32, bf16 (autocast) or auto: bf16 on CUDA and on CPUs with AMX-bf16 where a probe shows it faster, "
        "else fp32 (the reason is printed at start; DLM_AUTO_PRECISION=fp32 fixes it).",
    ),
    schedule: Optional[str] = typer.Option(
        None, help="Schedule: linear, loglinear (default), cosine; diffusion-lm: vp-sqrt (default), vp-cosine, ..."
    ),
    tokenizer: Optional[str] = typer.Option(None, help="A tokenizer.json to use instead of training a BPE."),
    time_limit: float = typer.Option(
        0.0, "--time-limit", help="Stop (and checkpoint) after this many minutes of training; --resume continues."
    ),
    eval_every: int = typer.Option(0, help="Validate every N steps (0: only at the end)."),
    save_every: int = typer.Option(0, help="Checkpoint every N steps (0: only at the end)."),
    set_: Optional[List[str]] = typer.Option(
        None,
        "--set",
        help="Override any config field: --set model.d_model=256 --set train.ema=0.999; the "
        "objective's options: --set objective.block_size=8 (--graph, --block-size, --alpha0, --variant: shorthands).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    init: Optional[str] = typer.Option(
        None,
        "--init",
        help="Start from this model (a run, a HF folder or a .gguf) and keep its shape and tokenizer: adaptation. "
        "From an AR model to a diffusion objective: bidirectional attention and Dream's shifted prediction "
        "(--set model.logits_shift=false: unshifted). The preset then sets only the training hyper-parameters; "
        f"the learning rate defaults to {INIT_LR:g}.",
    ),
    lora: int = typer.Option(
        0,
        "--lora",
        help="With --init: train rank-R adapters on the attention and MLP projections only (dlm.train.lora); the "
        "checkpoint holds the merged weights, adapter.safetensors the adapters (for --resume).",
    ),
    anneal_steps: int = typer.Option(
        0, "--anneal-steps", help="Anneal the attention from causal to full over the first K steps (DiffuLLaMA)."
    ),
    clean_causal: bool = typer.Option(
        False,
        "--clean-causal",
        help="mdlm: clean-causal attention instead of full (model.clean_causal): unmasked tokens attend causally "
        "to the unmasked ones, masked tokens to every unmasked token and themselves. With --init from an AR model "
        "the source keeps its view of the text, so a short adaptation keeps its English (docs/REAL_MODELS.md).",
    ),
    device: Optional[str] = typer.Option(None, "--device", help="Device (default: cuda when there is one, or cpu)."),
    log: Optional[List[str]] = typer.Option(
        None,
        "--log",
        help="Also log to tensorboard (OUT/tensorboard) or wandb (offline under OUT/wandb unless W&B is configured); "
        "repeatable; the extras dlm[tensorboard] / dlm[wandb].",
    ),
) -> None:
    """Train a model. Example: dlm train --preset tiny --objective mdlm --max-steps 40 --out runs/tiny

    Adapt a pretrained AR model into a diffusion LM: dlm train --init models/SmolLM2-135M-Instruct --objective mdlm
    --anneal-steps 200 --max-steps 400 --out runs/smol-mdlm"""
    from dlm.config import apply_overrides
    from dlm.objectives import OBJECTIVES
    from dlm.presets import preset_config
    from dlm.train.loop import train as run_training

    cfg = preset_config(preset)
    schedule = schedule or OBJECTIVES.get(objective).default_schedule
    cfg.train.objective, cfg.train.max_steps, cfg.train.seed = objective, max_steps, seed
    cfg.train.compile, cfg.train.precision, cfg.train.schedule = compile, precision, schedule
    cfg.train.time_limit_minutes, cfg.train.eval_every, cfg.train.save_every = time_limit, eval_every, save_every
    cfg.data.name, cfg.data.tokenizer, cfg.data.encoding = data, tokenizer, encoding
    cfg.train.anneal_steps, cfg.train.log, cfg.train.lora_rank = anneal_steps, ",".join(log or []), lora
    if init is not None:
        from dlm.train.adapt import init_config

        if tokenizer is not None:
            raise DlmError("--init keeps the source model's tokenizer; drop --tokenizer")
        init_config(cfg, init)
        cfg.train.lr = INIT_LR
    if clean_causal:
        cfg.model.clean_causal = True
    if batch_size is not None:
        cfg.train.batch_size = batch_size
    if lr is not None:
        cfg.train.lr = lr
    _set_objective_options(cfg, graph=graph, block_size=block_size, alpha0=alpha0, variant=variant)
    apply_overrides(cfg, set_ or [])
    if max_steps <= 0:
        raise DlmError("--max-steps must be positive")
    if resume:
        check_resume_flags(cfg, out, given_flags(ctx), [item.split("=", 1)[0].strip() for item in set_ or []])
    run_training(cfg, out, resume=resume, overwrite=overwrite, progress=not quiet, device=device)


# the flags that set a field of the run config (--max-steps and --time-limit too, but a resumed run takes those)
FLAG_FIELDS = {
    "preset": "preset",
    "objective": "train.objective",
    "block_size": "objective.block_size",
    "graph": "objective.graph",
    "alpha0": "objective.alpha0",
    "variant": "objective.variant",
    "seed": "train.seed",
    "compile": "train.compile",
    "data": "data.name",
    "encoding": "data.encoding",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "precision": "train.precision",
    "schedule": "train.schedule",
    "tokenizer": "data.tokenizer",
    "clean_causal": "model.clean_causal",
    "eval_every": "train.eval_every",
    "save_every": "train.save_every",
    "init": "train.init",
    "anneal_steps": "train.anneal_steps",
}


# what a resumed run takes from the command line (how long it runs, how it is spread and logged), not the checkpoint
RESUME_MAY_CHANGE = (
    "train.max_steps",
    "train.time_limit_minutes",
    "train.log",
    "train.parallel",
    "train.activation_checkpointing",
)


def given_flags(ctx: typer.Context) -> list[str]:
    """The parameters of this command that the user wrote on the command line (not those left at their default)."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return [name for name, source in sources.items() if source is not None and source.name == "COMMANDLINE"]


def check_resume_flags(cfg, out: Path, flags: list[str], set_keys: list[str]) -> None:
    """--resume continues the run with its saved config: a flag or --set the user gave whose value differs from
    the saved one is a one-line error, not silently dropped (the flags left at their defaults are not compared)."""
    from dlm.train import checkpoint as ckpt

    saved_dir = ckpt.newest_complete(out)
    if saved_dir is None:  # nothing to resume: the training run says so (or --overwrite starts a new one)
        return
    saved, wanted = ckpt.load_config(saved_dir).to_dict(), cfg.to_dict()

    def at(d: dict, path: str):
        for part in path.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    asked = [(f"--{flag.replace('_', '-')}", FLAG_FIELDS[flag]) for flag in flags if flag in FLAG_FIELDS]
    asked += [(f"--set {key}", key) for key in set_keys if key not in RESUME_MAY_CHANGE]
    for flag, path in asked:
        if at(wanted, path) != at(saved, path):
            raise DlmError(
                f"--resume continues {out} with its saved config, and {flag} {at(wanted, path)} differs from its "
                f"{path} {at(saved, path)}; drop {flag.split()[0]}, or start a new run (--overwrite, or another --out)"
            )


def _set_objective_options(cfg, **shorthands) -> None:
    """``--graph`` etc.: shorthands for ``--set objective.graph=...``; given to an objective that does not take
    them, a one-line error that names the objectives that do."""
    from dataclasses import fields

    from dlm.objectives import OBJECTIVES

    def takes(name: str, key: str) -> bool:
        return key in {f.name for f in fields(OBJECTIVES.get(name).Config)}

    for key, value in shorthands.items():
        if value is None:
            continue
        if not takes(cfg.train.objective, key):
            owners = " or ".join(n for n in OBJECTIVES if takes(n, key))
            raise DlmError(
                f"--{key.replace('_', '-')} {value} applies to --objective {owners} only (got {cfg.train.objective})"
            )
        cfg.objective[key] = value
