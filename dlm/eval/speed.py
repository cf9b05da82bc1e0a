"""The speed-quality benchmark of ``dlm bench sample``: every sampler setting of a diffusion model, and an AR model
of the same size with its KV cache, timed at batch 1 and batch B, with the quality of the same samples.

Protocol (the same for every setting): prompts are the first ``prompt_tokens`` tokens of validation sequences;
each continues for ``gen_length`` tokens (no stopping at EOS, so every setting writes the same number of tokens);
sample i uses the seed ``seed + i`` with one generator per row, so a sample is the same at batch 1 and in a batch
(checked: ``batch1_equals_batch``). Tokens/s counts generated tokens over wall-clock time of the sampler call
(prompt processing included); latency is the wall-clock time of one call, i.e. until a whole batch is answered;
NFE/token is model calls per generated token of one row (a cached call over one block counts as one call, like a
full one: compare tokens/s, not NFE, across cache settings). Quality: generative perplexity of the continuations
given their prompts under a reference LM, mean unigram entropy (nats) and distinct-2 of the continuations.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

from dlm.eval.generative import ReferenceLM, distinct_n, generative_perplexity, unigram_entropy


@dataclass
class Setting:
    name: str
    sampler: str  # ar, ancestral or confidence
    steps: int | None = None  # None: one per token
    block_length: int | None = None
    threshold: float | None = None
    cache: str | None = None  # None: the sampler's default
    temperature: float = 1.0
    remasking: str | None = None

    def options(self) -> dict:
        """The sampler options this setting sets (those its sampler takes, not left at their default)."""
        from dlm.samplers import SAMPLERS, user_fields

        takes = user_fields(SAMPLERS.get(self.sampler).config)
        return {k: v for k, v in asdict(self).items() if k in takes and v is not None}


def default_settings(gen_length: int, block_length: int = 32, quick: bool = False) -> list[Setting]:
    """The grid of ``dlm bench sample`` for a masked-diffusion model (``quick``: four settings, for tests)."""
    G, K = gen_length, min(block_length, gen_length)
    grid = [
        Setting(f"ancestral T=1, {G} steps", "ancestral", steps=G),
        Setting(f"confidence T=1, {G} steps, block {K}", "confidence", steps=G, block_length=K),
        Setting(
            f"confidence T=1, {G} steps, block {K}, dual cache", "confidence", steps=G, block_length=K, cache="dual"
        ),
        Setting(
            f"confidence T=1, tau=0.9, block {K}, dual cache", "confidence", block_length=K, threshold=0.9, cache="dual"
        ),
    ]
    if quick:
        return grid
    return grid + [
        Setting(f"ancestral T=1, {G // 4} steps", "ancestral", steps=G // 4),
        Setting(
            f"confidence T=1, {G} steps, block {K}, prefix cache", "confidence", steps=G, block_length=K, cache="prefix"
        ),
        Setting(f"confidence T=1, {G // 4} steps, block {K}", "confidence", steps=G // 4, block_length=K),
        Setting(
            f"confidence T=1, {G // 4} steps, block {K}, dual cache",
            "confidence",
            steps=G // 4,
            block_length=K,
            cache="dual",
        ),
        Setting(f"confidence T=1, tau=0.9, block {K}", "confidence", block_length=K, threshold=0.9),
        Setting(
            f"confidence T=1, tau=0.7, block {K}, dual cache", "confidence", block_length=K, threshold=0.7, cache="dual"
        ),
        Setting(
            f"confidence T=1, tau=0.5, block {K}, dual cache", "confidence", block_length=K, threshold=0.5, cache="dual"
        ),
        Setting(
            f"confidence T=0, tau=0.9, block {K}, dual cache",
            "confidence",
            block_length=K,
            threshold=0.9,
            cache="dual",
            temperature=0.0,
        ),
    ]


class CallCounter:
    """Wraps a model and counts its calls (``new_cache`` passes through for the samplers' KV caches)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def new_cache(self, batch: int, max_len: int):
        return self.model.new_cache(batch, max_len)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def generate_timed(
    model, tokenizer, cfg, setting: Setting, prompts: list[list[int]], *, gen_length: int, batch_size: int, seed: int
) -> dict:
    """One continuation per prompt, ``batch_size`` at a time: samples (generated ids), seconds, calls per batch."""
    from dlm.engine import Engine

    counter = CallCounter(model)
    with torch.inference_mode():
        results = Engine(counter, tokenizer, cfg).generate_ids(
            prompts,
            setting.sampler,
            seed,
            gen_length=gen_length,
            stop_at_eos=False,
            batch_size=batch_size,
            **setting.options(),
        )
    times = [r.seconds for r in results[::batch_size]]  # one per batch
    return {
        "samples": [r.tokens for r in results],
        "tokens_per_s": len(prompts) * gen_length / sum(times),
        "latency_s": sum(times) / len(times),
        "nfe_per_token": counter.calls / len(times) / gen_length,
    }


@dataclass
class BenchResult:
    name: str
    model: str  # the run's objective
    setting: dict
    batch1: dict
    batch: dict
    gen_ppl: float
    entropy: float
    distinct2: float
    batch1_equals_batch: bool
    examples: list[str] = field(default_factory=list)
    gen_ppl_judges: dict[str, float] = field(default_factory=dict)  # under the second judges (--judge), by name


def bench_setting(
    model,
    tokenizer,
    cfg,
    setting: Setting,
    prompts: list[list[int]],
    reference: ReferenceLM,
    *,
    gen_length: int,
    batch_size: int,
    batch1_samples: int,
    seed: int,
    judges: tuple = (),
) -> BenchResult:
    """Time ``setting`` at batch 1 (first ``batch1_samples`` prompts) and at ``batch_size`` (all prompts), and score
    the samples of the batched run."""
    batched = generate_timed(
        model, tokenizer, cfg, setting, prompts, gen_length=gen_length, batch_size=batch_size, seed=seed
    )
    single = generate_timed(
        model, tokenizer, cfg, setting, prompts[:batch1_samples], gen_length=gen_length, batch_size=1, seed=seed
    )
    special = {tokenizer.eos_id, tokenizer.mask_id, tokenizer.pad_id}
    texts = [tokenizer.decode(s) for s in batched["samples"]]
    contexts = [tokenizer.decode(p) for p in prompts]
    words = [[t for t in s if t not in special] for s in batched["samples"]]
    strip = lambda d: {k: v for k, v in d.items() if k != "samples"}  # noqa: E731
    return BenchResult(
        name=setting.name,
        model=cfg.train.objective,
        setting=asdict(setting),
        batch1=strip(single),
        batch=strip(batched),
        gen_ppl=generative_perplexity(reference, texts, contexts),
        entropy=unigram_entropy(words),
        distinct2=distinct_n(words, 2),
        batch1_equals_batch=single["samples"] == batched["samples"][:batch1_samples],
        examples=[contexts[i] + " ||| " + texts[i] for i in range(min(2, len(texts)))],
        gen_ppl_judges={judge.name: generative_perplexity(judge, texts, contexts) for judge in judges},
    )


def warm_up(model, tokenizer, cfg, gen_length: int) -> None:
    """One untimed short generation, so the first timed setting does not pay for allocator / kernel warm-up."""
    sampler = "ar" if cfg.train.objective == "ar" else "confidence"
    generate_timed(
        model,
        tokenizer,
        cfg,
        Setting("warm-up", sampler, steps=4),
        [[tokenizer.eos_id]] * 2,
        gen_length=min(gen_length, 16),
        batch_size=2,
        seed=0,
    )


def summarise(results: list[BenchResult], ppl_tolerance: float = 0.10, entropy_tolerance: float = 0.10) -> dict:
    """Speed of every diffusion setting relative to the AR baseline, and the settings that match AR's quality:
    generative perplexity within ``ppl_tolerance`` (relative) and entropy within ``entropy_tolerance`` nats."""
    ar = next((r for r in results if r.model == "ar"), None)
    rows = []
    for r in results:
        if r.model == "ar" or ar is None:
            continue
        rows.append(
            {
                "name": r.name,
                "speedup_batch1": r.batch1["tokens_per_s"] / ar.batch1["tokens_per_s"],
                "speedup_batch": r.batch["tokens_per_s"] / ar.batch["tokens_per_s"],
                "meets_quality": abs(r.gen_ppl / ar.gen_ppl - 1.0) <= ppl_tolerance
                and abs(r.entropy - ar.entropy) <= entropy_tolerance,
            }
        )
    good = [row for row in rows if row["meets_quality"]]
    return {
        "ppl_tolerance": ppl_tolerance,
        "entropy_tolerance": entropy_tolerance,
        "settings": rows,
        "best_batch1": max(good, key=lambda row: row["speedup_batch1"], default=None),
        "best_batch": max(good, key=lambda row: row["speedup_batch"], default=None),
        "fastest_batch1_any_quality": max(rows, key=lambda row: row["speedup_batch1"], default=None),
        "fastest_batch_any_quality": max(rows, key=lambda row: row["speedup_batch"], default=None),
    }


def markdown_table(results: list[BenchResult], summary: dict, batch_size: int) -> str:
    speed = {row["name"]: row for row in summary["settings"]}
    judges = list(results[0].gen_ppl_judges) if results else []
    lines = [
        f"| setting | NFE/token (b=1 / b={batch_size}) | tokens/s (b=1) | latency s (b=1) | "
        f"tokens/s (b={batch_size}) | "
        f"latency s (b={batch_size}) | x AR (b=1) | x AR (b={batch_size}) | gen-PPL | "
        + "".join(f"gen-PPL ({j}) | " for j in judges)
        + "entropy | distinct-2 | AR quality? |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(judges) + "---:|---:|:---:|",
    ]
    for r in results:
        s = speed.get(r.name)
        vs_ar = f"{s['speedup_batch1']:.2f} | {s['speedup_batch']:.2f}" if s else "1.00 | 1.00"
        verdict = ("yes" if s["meets_quality"] else "no") if s else "(baseline)"
        lines.append(
            f"| {r.model}: {r.name} | {r.batch1['nfe_per_token']:.3f} / {r.batch['nfe_per_token']:.3f} | "
            f"{r.batch1['tokens_per_s']:.1f} | "
            f"{r.batch1['latency_s']:.2f} | {r.batch['tokens_per_s']:.1f} | {r.batch['latency_s']:.2f} | {vs_ar} | "
            f"{r.gen_ppl:.1f} | "
            + "".join(f"{r.gen_ppl_judges[j]:.1f} | " for j in judges)
            + f"{r.entropy:.2f} | {r.distinct2:.3f} | {verdict} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path, batch_size: int) -> None:
    """Speed (tokens/s, log) against quality (gen-PPL, log) of every setting at batch 1 and batch B, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, key, title in ((axes[0], "batch1", "batch 1"), (axes[1], "batch", f"batch {batch_size}")):
        for i, r in enumerate(results):
            is_ar, point = r["model"] == "ar", (r[key]["tokens_per_s"], r["gen_ppl"])
            ax.scatter(
                *point,
                marker="*" if is_ar else "o",
                s=160 if is_ar else 40,
                color="crimson" if is_ar else f"C{i % 10}",
                zorder=3,
            )
            label = f"{'AR' if is_ar else i} (H={r['entropy']:.2f})"
            ax.annotate(label, point, fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("generated tokens / s (log)"), ax.set_title(title), ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("generative perplexity under the reference (log; lower is better)")
    legend = "\n".join(f"{i}: {r['name']}" for i, r in enumerate(results) if r["model"] != "ar")
    fig.text(
        0.70, 0.5, legend + "\n\nH: mean unigram entropy (nats)", fontsize=7, va="center", ha="left", family="monospace"
    )
    fig.tight_layout(rect=(0, 0, 0.69, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_benchmark(
    run_dir,
    ar_run_dir=None,
    *,
    reference: str = "smollm2",
    gen_length: int = 128,
    num_samples: int = 32,
    batch_size: int = 16,
    batch1_samples: int = 4,
    prompt_tokens: int = 16,
    block_length: int = 32,
    seed: int = 0,
    quick: bool = False,
    only: str | None = None,
    log=print,
    dtype: str | None = None,
    device: str = "cpu",
    judges: tuple = (),
) -> dict:
    """Run the grid of ``dlm bench sample`` (``only``: a regular expression; just the settings whose "objective: name"
    it matches, e.g. ``^ar:|ancestral``); returns the JSON report (results, summary, protocol). ``dtype`` and
    ``device``: where both models are loaded (``dlm.load``). ``judges``: more reference models (the same specs as
    ``reference``) whose generative perplexity is reported beside the reference's."""
    import dlm
    from dlm.data.packing import load_packed
    from dlm.errors import DlmError
    from dlm.eval.generative import load_reference

    if min(gen_length, num_samples, batch_size, batch1_samples, prompt_tokens, block_length) <= 0:
        raise DlmError(
            "--gen-length, --num-samples, --batch-size, --batch1-samples, --prompt-tokens and "
            "--block-length must be positive"
        )
    if gen_length % min(block_length, gen_length):
        raise DlmError(f"--gen-length {gen_length} must be divisible by --block-length {block_length}")
    model, tokenizer, cfg = dlm.load(run_dir, dtype=dtype, device=device)
    if cfg.train.objective == "ar":
        raise DlmError(f"{run_dir} is an AR model; give the diffusion run first and the AR run with --ar")
    if prompt_tokens + gen_length > cfg.model.max_seq_len:
        raise DlmError(
            f"--prompt-tokens + --gen-length ({prompt_tokens + gen_length}) exceed the model's context "
            f"of {cfg.model.max_seq_len} tokens"
        )
    _, _, val = load_packed(cfg.data, tokenizer)
    if len(val) < num_samples:
        raise DlmError(f"the validation split has {len(val)} sequences, fewer than --num-samples {num_samples}")
    prompt_texts = [tokenizer.decode(row[:prompt_tokens].tolist()) for row in val.batch(range(num_samples))]
    log(f"reference model: {reference}")
    ref = load_reference(reference)
    others = tuple(load_reference(j) for j in judges)

    def wanted(objective: str, setting: Setting) -> bool:
        return only is None or re.search(only, f"{objective}: {setting.name}") is not None

    runs = [
        (
            model,
            tokenizer,
            cfg,
            [st for st in default_settings(gen_length, block_length, quick) if wanted(cfg.train.objective, st)],
        )
    ]
    if ar_run_dir is not None and wanted("ar", Setting("T=1, KV cache", "ar")):
        ar_model, ar_tok, ar_cfg = dlm.load(ar_run_dir, dtype=dtype, device=device)
        if ar_cfg.train.objective != "ar":
            raise DlmError(f"--ar {ar_run_dir} is a {ar_cfg.train.objective} model, not an AR one")
        runs.insert(0, (ar_model, ar_tok, ar_cfg, [Setting("T=1, KV cache", "ar")]))
    results = []
    for m, tok, c, settings in runs:
        warm_up(m, tok, c, gen_length)
        prompts = [tok.encode(t) for t in prompt_texts]
        for setting in settings:
            r = bench_setting(
                m,
                tok,
                c,
                setting,
                prompts,
                ref,
                gen_length=gen_length,
                batch_size=batch_size,
                batch1_samples=batch1_samples,
                seed=seed,
                judges=others,
            )
            log(
                f"{r.model}: {r.name}: {r.batch1['tokens_per_s']:.1f} tok/s at batch 1, {r.batch['tokens_per_s']:.1f} "
                f"at batch {batch_size}, NFE/token {r.batch['nfe_per_token']:.3f}, gen-PPL {r.gen_ppl:.1f}, "
                f"entropy {r.entropy:.2f}"
            )
            results.append(r)
    return report(
        results,
        {
            "run": str(run_dir),
            "ar_run": None if ar_run_dir is None else str(ar_run_dir),
            "reference": ref.name,
            "judges": [j.name for j in others],
            "gen_length": gen_length,
            "num_samples": num_samples,
            "batch_size": batch_size,
            "batch1_samples": batch1_samples,
            "prompt_tokens": prompt_tokens,
            "block_length": block_length,
            "seed": seed,
            "threads": torch.get_num_threads(),
        },
    )


def report(results: list[BenchResult], protocol: dict) -> dict:
    """The JSON report of a list of results: protocol, results, summary against the AR baseline, Markdown table."""
    summary = summarise(results)
    return {
        "protocol": protocol,
        "results": [asdict(r) for r in results],
        "summary": summary,
        "table": markdown_table(results, summary, protocol["batch_size"]),
    }
