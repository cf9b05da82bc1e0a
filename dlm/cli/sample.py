"""``dlm sample``: continuations of prompts through the Engine, with every sampler's options."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dlm.cli.app import (
    MODEL_HELP,
    app,
    block_length_option,
    cfg_scale_option,
    device_option,
    dtype_option,
    given,
    objective_option,
    remasking_option,
    steps_option,
    temperature_option,
    threshold_option,
    top_k_option,
    top_p_option,
)
from dlm.errors import DlmError


@app.command()
def sample(
    run_dir: Path = typer.Argument(..., help=MODEL_HELP),
    prompt: List[str] = typer.Option(
        [""], help="Text to continue (may be empty). Repeat the flag for a batch of prompts of any lengths."
    ),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="One prompt per line (replaces --prompt)."),
    gen_length: int = typer.Option(
        64, "--gen-length", "--max-new-tokens", help="Tokens to generate (fewer when a sample ends at EOS)."
    ),
    sampler: Optional[str] = typer.Option(
        None,
        help="ar, ancestral, confidence; sedd-analytic, sedd-euler (sedd); udlm (udlm); embed-ddpm, "
        "embed-ddim, embed-dpmpp-2m (diffusion-lm); block (bd3lm); esolm (esolm). Default: the model's own.",
    ),
    steps: Optional[int] = steps_option(),
    block_length: Optional[int] = block_length_option(),
    temperature: Optional[float] = temperature_option(),
    top_p: Optional[float] = top_p_option(),
    top_k: Optional[int] = top_k_option(),
    remasking: Optional[str] = remasking_option(),
    threshold: Optional[float] = threshold_option(),
    cache: Optional[str] = typer.Option(
        None,
        help="confidence: none (default), prefix or dual (Fast-dLLM's approximate caches, refreshed at every "
        "block start); ar, block, esolm: kv (default, exact) or none.",
    ),
    refresh_every: Optional[int] = typer.Option(
        None, "--refresh-every", help="confidence with --cache: also refresh the cache every N steps in a block."
    ),
    cfg_scale: Optional[float] = cfg_scale_option(),
    stop_at_eos: bool = typer.Option(
        True,
        "--stop-at-eos/--no-stop-at-eos",
        help="End a sample at its first end token (<|endoftext|>; a chat model's end-of-turn ids too).",
    ),
    num_samples: int = typer.Option(1, help="Continuations per prompt."),
    batch_size: int = typer.Option(16, "--batch-size", help="Samples generated together (left-padded)."),
    seed: int = typer.Option(0, help="Seed; sample i uses seed + i, so batching never changes a sample."),
    show_steps: bool = typer.Option(False, "--show-steps", help="Print every intermediate state of the first sample."),
    dtype: Optional[str] = dtype_option(),
    device: str = device_option(),
    objective: Optional[str] = objective_option(),
) -> None:
    """Generate continuations of prompts. Example: dlm sample runs/tiny --prompt "Emma" --gen-length 32 --steps 32

    Sampler options that do not apply to the chosen sampler are an error (e.g. --threshold with ancestral)."""
    from dlm.data.tokenizer import check_text
    from dlm.engine import Engine

    if prompt_file is not None:
        prompt = read_prompt_file(prompt_file)
    prompt = [check_text(p, "--prompt") for p in prompt]
    if num_samples <= 0 or batch_size <= 0 or not prompt:
        raise DlmError("--num-samples and --batch-size must be positive, and there must be a prompt")
    options = given(
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        remasking=remasking,
        threshold=threshold,
        cache=cache,
        refresh_every=refresh_every,
        cfg_scale=cfg_scale,
    )  # only what was given reaches the sampler
    engine = Engine.load(run_dir, dtype=dtype, device=device, objective=objective)
    prompts = [p for p in prompt for _ in range(num_samples)]
    results = engine.generate(
        prompts,
        sampler,
        seed,
        gen_length=gen_length,
        stop_at_eos=stop_at_eos,
        batch_size=batch_size,
        history=show_steps,
        **options,
    )
    if show_steps:
        print_steps(sampler or engine.samplers[0], results[0].history)
    for i, r in enumerate(results):
        typer.echo(f"--- sample {i} ---\n{r.prompt}{r.text}")


def print_steps(sampler: str, states: list[str]) -> None:
    """The canvas after every step of one sample (--show-steps)."""
    typer.echo(f"denoising steps of sample 0 ({sampler} sampler, ░ = still masked):")
    width = len(str(len(states)))
    for i, state in enumerate(states):
        typer.echo(f"[{i + 1:>{width}}/{len(states)}] " + state.replace("\n", " "))


def read_prompt_file(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DlmError(f"cannot read --prompt-file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DlmError(f"--prompt-file {path} is not UTF-8 text; convert it (e.g. iconv -t utf-8)") from None


def sample_texts(
    model, tokenizer, cfg, prompts, *, gen_length, sampler=None, stop_at_eos=False, seed=0, show_steps=False, **options
) -> list[str]:
    """Deprecated (moved to ``dlm.Engine(model, tokenizer, cfg).generate``; kept for one release): prompt +
    continuation texts, prompt i seeded ``seed + i``."""
    import warnings

    from dlm.engine import Engine

    warnings.warn(
        "dlm.cli.sample_texts is deprecated: use dlm.Engine(model, tokenizer, config).generate",
        DeprecationWarning,
        stacklevel=2,
    )
    options = {k: v for k, v in options.items() if v is not None}
    results = Engine(model, tokenizer, cfg).generate(
        prompts, sampler, seed, gen_length=gen_length, stop_at_eos=stop_at_eos, batch_size=len(prompts), **options
    )
    return [r.prompt + r.text for r in results]
