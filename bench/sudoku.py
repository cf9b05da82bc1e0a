"""Sudoku (4x4): masked diffusion choosing its own order (confidence / margin) vs AR filling the cells left to right.

    python bench/sudoku.py --seeds 0 1 2 --steps 1500

Puzzles are generated and checked by code: every valid 4x4 grid (288) is enumerated by a backtracking solver, the
grids are split (seeded) into training and held-out grids, and a puzzle is a grid with cells removed in a random
order for as long as the solver still finds exactly one solution, down to a drawn number of givens (4 to 10).
Held-out puzzles come from held-out grids only: no test solution was ever a training answer.

Serialisation (the same for both models): prompt = the 16 cells row by row, "_" for a blank, space-separated;
response = the 16 cells of the solution, then EOS. Each cell is one token (checked). Both models train with the SFT
loss on the response given the puzzle (``bench/order_common.py``), same backbone, weights at start, batches, steps.
Decoding, greedy: AR writes the 16 solution cells left to right; MDLM starts from 17 masks after the puzzle and
commits one position per step (17 steps, one block) in the order of its confidence (``low_confidence``) or of the
top-1 minus top-2 probability margin (``margin``). A puzzle is solved when the 16 cells are a valid grid that keeps
the givens (the solution is unique, so it is the solution). Writes docs/bench/sudoku.json and its section of
docs/CAPABILITIES.md (``--out-docs`` elsewhere).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, write_results  # noqa: E402
from order_common import init_checkpoints, mean_spread, train_pair  # noqa: E402

N, BOX = 4, 2  # a 4x4 grid of 2x2 boxes
CELLS = N * N
METHODS = ("ar", "mdlm-confidence", "mdlm-margin")


def valid_grid(grid: list[int]) -> bool:
    """A full grid with 1..N once in every row, column and box."""
    if len(grid) != CELLS or any(v not in range(1, N + 1) for v in grid):
        return False
    units = [[r * N + c for c in range(N)] for r in range(N)] + [[r * N + c for r in range(N)] for c in range(N)]
    units += [
        [(br + r) * N + bc + c for r in range(BOX) for c in range(BOX)]
        for br in range(0, N, BOX)
        for bc in range(0, N, BOX)
    ]
    return all(sorted(grid[i] for i in unit) == list(range(1, N + 1)) for unit in units)


def _allowed(grid: list[int], i: int) -> list[int]:
    r, c = divmod(i, N)
    br, bc = r - r % BOX, c - c % BOX
    seen = {grid[r * N + k] for k in range(N)} | {grid[k * N + c] for k in range(N)}
    seen |= {grid[(br + a) * N + bc + b] for a in range(BOX) for b in range(BOX)}
    return [v for v in range(1, N + 1) if v not in seen]


def solutions(puzzle: list[int], limit: int | None = None) -> list[list[int]]:
    """The completions of ``puzzle`` (0 = blank), by backtracking, at most ``limit`` of them."""
    grid, found = list(puzzle), []

    def fill() -> bool:  # True: stop, the limit is reached
        blanks = [i for i, v in enumerate(grid) if v == 0]
        if not blanks:
            found.append(list(grid))
            return limit is not None and len(found) >= limit
        i = blanks[0]
        for v in _allowed(grid, i):
            grid[i] = v
            if fill():
                return True
        grid[i] = 0
        return False

    fill()
    return found


def unique(puzzle: list[int]) -> bool:
    return len(solutions(puzzle, limit=2)) == 1


def make_puzzle(grid: list[int], givens: int, rng: random.Random) -> list[int]:
    """``grid`` with cells removed in a random order while the solution stays unique, down to ``givens`` cells
    (or fewer removals when no further cell can go)."""
    puzzle = list(grid)
    for i in rng.sample(range(CELLS), CELLS):
        if sum(v != 0 for v in puzzle) <= givens:
            break
        kept, puzzle[i] = puzzle[i], 0
        if not unique(puzzle):
            puzzle[i] = kept
    return puzzle


def dataset(n_train: int, n_test: int, seed: int) -> tuple[list, list]:
    """(puzzle, solution) pairs: training ones from 80 % of the grids, held-out ones from the rest."""
    rng = random.Random(f"sudoku:{seed}")
    grids = solutions([0] * CELLS)
    rng.shuffle(grids)
    cut = int(0.8 * len(grids))
    split = {"train": (grids[:cut], n_train), "test": (grids[cut:], n_test)}
    out = {}
    for name, (pool, n) in split.items():
        pairs = []
        for _ in range(n):
            grid = rng.choice(pool)
            pairs.append((make_puzzle(grid, rng.randint(4, 10), rng), grid))
        out[name] = pairs
    return out["train"], out["test"]


def prompt_text(puzzle: list[int]) -> str:
    return " ".join(str(v) if v else "_" for v in puzzle)


def response_text(grid: list[int]) -> str:
    return " " + " ".join(map(str, grid))


def parse_cells(engine, tokens: list[int]) -> list[int]:
    cells = []
    for t in tokens[:CELLS]:
        s = engine.tokenizer.decode([t]).strip()
        cells.append(int(s) if s.isdigit() else 0)
    return cells


def solved(puzzle: list[int], cells: list[int]) -> bool:
    return valid_grid(cells) and all(p == 0 or p == c for p, c in zip(puzzle, cells))


def evaluate(engines: dict, test: list) -> dict[str, list[bool]]:
    prompts = [prompt_text(p) for p, _ in test]
    runs = {
        "ar": ("ar", engines["ar"], dict(temperature=0.0)),
        "mdlm-confidence": ("confidence", engines["mdlm"], dict(steps=CELLS + 1, remasking="low_confidence")),
        "mdlm-margin": ("confidence", engines["mdlm"], dict(steps=CELLS + 1, remasking="margin")),
    }
    out = {}
    for method, (sampler, engine, options) in runs.items():
        results = engine.generate(prompts, sampler, gen_length=CELLS + 1, stop_at_eos=False, batch_size=64, **options)
        out[method] = [solved(p, parse_cells(engine, r.tokens)) for (p, _), r in zip(test, results)]
    return out


def run_seed(seed: int, args, work: Path) -> dict:
    train, test = dataset(args.train_puzzles, args.test_puzzles, seed)
    records = [{"prompt": prompt_text(p), "response": response_text(g)} for p, g in train]
    texts = [r["prompt"] + r["response"] for r in records]
    init = init_checkpoints(work, texts, vocab_size=300, max_seq_len=40, d_model=args.d_model,
                            n_layers=args.n_layers, seed=seed)  # fmt: skip
    trained = train_pair(work, init, records, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=seed,
                         pad_to=0)  # fmt: skip
    engines = {k: e for k, (e, _) in trained.items()}
    tok = engines["ar"].tokenizer
    for p, g in train[:50]:  # the serialisation: one token per cell
        if len(tok.encode(prompt_text(p))) != CELLS or len(tok.encode(response_text(g))) != CELLS:
            raise SystemExit("a Sudoku cell is not one token under the trained BPE")
    results = evaluate(engines, test)
    givens = [sum(v != 0 for v in p) for p, _ in test]
    return {
        "seed": seed,
        "parameters": engines["ar"].model.num_parameters(),
        "tokens_seen": {k: s["tokens_seen"] for k, (_, s) in trained.items()},
        "train_seconds": {k: s["elapsed_seconds"] for k, (_, s) in trained.items()},
        "givens": givens,
        "solved": results,
    }


def table(runs: list[dict]) -> tuple[list[str], dict]:
    buckets = {"4-5": (4, 5), "6-7": (6, 7), "8-10": (8, 10), "all": (0, CELLS)}
    summary, rows = {}, []
    for name, (lo, hi) in buckets.items():
        cells, n = [], 0
        for method in METHODS:
            rates = []
            for r in runs:
                picked = [s for s, g in zip(r["solved"][method], r["givens"]) if lo <= g <= hi]
                n = len(picked)
                rates.append(100.0 * sum(picked) / max(len(picked), 1))
            mean, sd = mean_spread(rates)
            summary.setdefault(name, {})[method] = {"mean": mean, "std": sd, "per_seed": rates}
            cells.append(f"{mean:.1f} ± {sd:.1f}")
        rows.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return rows, summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--train-puzzles", type=int, default=4000)
    ap.add_argument("--test-puzzles", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="a smoke run: a few steps, a few puzzles, one seed")
    ap.add_argument("--out-docs", default=None, help="write the JSON and Markdown under this folder, not docs/")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.train_puzzles, args.test_puzzles = [0], 4, 64, 8
        args.d_model, args.n_layers = 32, 1
    torch.set_num_threads(1)
    start, runs = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            work = Path(tmp) / f"seed{seed}"
            work.mkdir()
            runs.append(run_seed(seed, args, work))
            print(f"seed {seed}: " + ", ".join(f"{m} {sum(runs[-1]['solved'][m])}" for m in METHODS), flush=True)
    rows, summary = table(runs)
    info = machine()
    first = runs[0]
    cmd = (
        f"python bench/sudoku.py --seeds {' '.join(map(str, args.seeds))} --steps {args.steps} "
        f"--batch-size {args.batch_size} --lr {args.lr} --d-model {args.d_model} --n-layers {args.n_layers} "
        f"--train-puzzles {args.train_puzzles} --test-puzzles {args.test_puzzles}" + (" --quick" if args.quick else "")
    )
    data = {"machine": info, "args": vars(args), "runs": runs, "summary": summary, "seconds": time.time() - start}
    md = f"""## Sudoku 4x4: solve rate by number of givens

Command: `{cmd}`
Machine: {machine_line(info)}; {data["seconds"] / 60:.1f} min in all.

Generated 4x4 puzzles with a unique solution (checked by a backtracking solver), held-out puzzles from held-out
grids; AR and MDLM of the same backbone ({first["parameters"]:,} parameters, {args.n_layers} layers, d =
{args.d_model}), same initial weights, {args.steps} steps of {args.batch_size} puzzles ({args.train_puzzles:,}
training puzzles; tokens seen per seed: AR {first["tokens_seen"]["ar"]:,}, MDLM {first["tokens_seen"]["mdlm"]:,}),
trained on solution given puzzle. Greedy decoding; MDLM commits
one cell per step in confidence or margin order, AR left to right. Solve rate in %, mean ± standard deviation over
seeds {", ".join(map(str, args.seeds))} (the puzzles, grid split and initial weights change with the seed); n =
held-out puzzles per seed in the bucket.

| givens | n | AR | MDLM confidence | MDLM margin |
| --- | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}"""
    write_results("sudoku", data, md, document="CAPABILITIES.md", docs=args.out_docs)
    print(md)


if __name__ == "__main__":
    main()
