"""CPU precision: bf16 autocast vs fp32 for training, bf16 vs fp32 weights for sampling, and the probe that
``--precision auto`` runs (dlm/train/precision.py), on this CPU.

    python bench/cpu_precision.py

Training: the bare masked-diffusion loop of bench/throughput.py on ``tiny`` (20 + 20 steps, tokens/s of the second
half). Sampling: ``small`` untrained (the speed does not depend on the weights), LLaDA's confidence sampler, 64
tokens in 64 steps, one prompt, weights loaded in fp32 or bf16 (``--dtype``), the median of 3. Probe:
``bf16_speedup`` at each preset's width, the number auto compares with 1.2 on CPUs that report AMX-bf16. Writes
docs/bench/cpu_precision.json and its section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, write_results  # noqa: E402
from throughput import bare_tokens_per_sec  # noqa: E402

import dlm  # noqa: E402
from dlm.data.packing import load_packed  # noqa: E402
from dlm.engine import Engine  # noqa: E402
from dlm.models.transformer import Transformer  # noqa: E402
from dlm.presets import preset_config  # noqa: E402
from dlm.train.checkpoint import save_checkpoint  # noqa: E402
from dlm.train.precision import auto_precision, bf16_speedup, cpu_flags  # noqa: E402


def sampling_tokens_per_sec(run: Path, dtype: str, repeats: int) -> float:
    model, tokenizer, cfg = dlm.load(run, dtype=dtype)
    engine = Engine(model, tokenizer, cfg)
    engine.generate(["Emma"], "confidence", gen_length=8, steps=8, stop_at_eos=False)  # warm-up
    rates = []
    for seed in range(repeats):
        (r,) = engine.generate(["Emma"], "confidence", seed, gen_length=64, steps=64, stop_at_eos=False)
        rates.append(len(r.tokens) / r.seconds)
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    info = machine()
    rows = []
    for preset in ("tiny", "small"):
        m = preset_config(preset).model
        rows.append(
            {"what": f"probe, {preset} width ({m.d_model} x {m.d_ff})", "ratio": bf16_speedup(m.d_model, m.d_ff)}
        )
    fp32, bf16 = (bare_tokens_per_sec("tiny", args.train_steps, False, p) for p in ("fp32", "bf16"))
    rows.append({"what": "training tiny, tokens/s", "fp32": fp32, "bf16": bf16, "ratio": bf16 / fp32})
    cfg = preset_config("small")
    tokenizer, _, _ = load_packed(cfg.data)
    cfg.model.vocab_size = tokenizer.vocab_size
    with tempfile.TemporaryDirectory() as out:
        save_checkpoint(Path(out), model=Transformer(cfg.model), tokenizer=tokenizer, config=cfg)
        fp32, bf16 = (sampling_tokens_per_sec(Path(out), d, args.repeats) for d in ("fp32", "bf16"))
    rows.append({"what": "sampling small, tokens/s", "fp32": fp32, "bf16": bf16, "ratio": bf16 / fp32})
    choice, why = auto_precision(torch.device("cpu"), cfg.model.d_model, cfg.model.d_ff)
    data = {"machine": info, "amx_bf16": "amx_bf16" in cpu_flags(), "auto": [choice, why], "rows": rows}
    table = "\n".join(
        f"| {r['what']} | {r['fp32']:,.1f} | {r['bf16']:,.1f} | {r['ratio']:.2f}x |"
        if "fp32" in r
        else f"| {r['what']} | | | {r['ratio']:.2f}x |"
        for r in rows
    )
    markdown = f"""## CPU precision: bf16 vs fp32

Command: `python bench/cpu_precision.py`
Machine: {machine_line(info)}

Training: the bare masked-diffusion loop on `tiny` (bf16 = autocast). Sampling: `small`, confidence sampler, 64
tokens in 64 steps, weights in fp32 or bf16 (`--dtype`). Probe: what `--precision auto` times on a CPU with
AMX-bf16 (one MLP forward + backward at the model's width; bf16 is chosen at 1.2x or more). bf16 / fp32 > 1 means
bf16 is faster. This CPU {"has" if data["amx_bf16"] else "has no"} AMX-bf16: auto chooses **{choice}** ({why}).

| measurement | fp32 | bf16 | bf16 / fp32 |
| --- | ---: | ---: | ---: |
{table}
"""
    write_results("cpu_precision", data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
