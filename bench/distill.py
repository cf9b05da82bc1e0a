"""Distilled SFT answers: how fast SmolLM2-135M-Instruct answers the generated prompts of ``--task distill`` on
this CPU, batched and one by one (and whether both give the same tokens), how many answers the filter keeps, and
a few records. Writes docs/bench/distill.json and the distill section of docs/RESULTS.md.

    python bench/distill.py              # 64 prompts, 64 new tokens, batch 8 and batch 1
    python bench/distill.py --quick      # 8 prompts, 16 new tokens: a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, write_results  # noqa: E402

from dlm.data.distill import distill_prompts, keep_answer, teacher_answers  # noqa: E402
from dlm.engine import Engine  # noqa: E402


def timed(engine, prompts, **options):
    start = time.perf_counter()
    results = teacher_answers(engine, prompts, progress=False, **options)
    seconds = time.perf_counter() - start
    tokens = sum(len(r.tokens) for r in results)
    return results, {"seconds": seconds, "prompts_per_s": len(prompts) / seconds, "tokens_per_s": tokens / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="smollm2")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="8 prompts, 16 new tokens, nothing written to docs")
    args = p.parse_args()
    if args.quick:
        args.n, args.max_new_tokens = 8, 16
    torch.set_num_threads(1)
    engine = Engine.load(args.teacher)
    prompts = distill_prompts(args.n, args.seed)
    options = dict(max_new_tokens=args.max_new_tokens, seed=args.seed)
    batched, fast = timed(engine, prompts, batch_size=args.batch_size, **options)
    single, slow = timed(engine, prompts, batch_size=1, **options)
    same = sum(a.tokens == b.tokens for a, b in zip(batched, single))
    cut = [len(r.tokens) == args.max_new_tokens for r in batched]
    kept = [keep_answer(r.text.strip(), c) for r, c in zip(batched, cut)]
    records = [{"prompt": q, "response": r.text.strip()} for q, r, k in zip(prompts, batched, kept) if k]
    info = machine()
    data = {
        "teacher": args.teacher,
        "n": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "batched": fast,
        "one_by_one": slow,
        "same_tokens": same,
        "answer_tokens": sum(len(r.tokens) for r in batched),
        "cut": sum(cut),
        "kept": len(records),
        "records": records,
        "machine": info,
    }
    print(json.dumps({k: v for k, v in data.items() if k != "records"}, indent=2))
    for r in records[:5]:
        print(json.dumps(r))
    if args.quick:
        return
    command = f"python bench/distill.py --n {args.n} --max-new-tokens {args.max_new_tokens}"
    examples = "\n".join(json.dumps(r) for r in records[:5])
    md = f"""### Distilled answers (`--task distill`)

`{command}` (torch threads 1; {machine_line(info)}; the machine's 2 cores were shared with other developers' jobs,
so the times are contended ones): {args.teacher} answers {len(prompts)} generated prompts greedily through its
chat template, at most {args.max_new_tokens} new tokens each.

| batch | seconds | prompts/s | answer tokens/s |
| --- | --- | --- | --- |
| {args.batch_size} (left-padded) | {fast["seconds"]:.1f} | {fast["prompts_per_s"]:.2f} | {fast["tokens_per_s"]:.1f} |
| 1 | {slow["seconds"]:.1f} | {slow["prompts_per_s"]:.2f} | {slow["tokens_per_s"]:.1f} |

Batched and one-by-one answers have the same tokens for {same} of {len(prompts)} prompts. {sum(cut)} answers ran
to the token limit without an end of turn; the filter (`dlm.data.distill.keep_answer`: empty, cut or looping)
keeps {len(records)} of {len(prompts)}. The first five kept records:

```
{examples}
```

Quality: a 135M model's answers are often wrong, padded or off the point (in earlier runs, a "synonym" of bright
that defined a made-up noun; above, a calendar definition that repeats "events"); the filter catches form, not
truth. Distilled records teach a student the chat format and short fluent answers, not facts. The chat prompt
starts with SmolLM2's BOS `<|im_start|>` once (since the Engine's start-token fix; before it, twice).
"""
    write_results("distill", data, md)


if __name__ == "__main__":
    main()
