"""Smoke tests of the order-of-generation studies in bench/ (reversal, Sudoku): the Sudoku checker and generator on
hand-made grids, the reversal data's one direction, and each script end to end at a toy size. The studies
themselves are run by hand (docs/CAPABILITIES.md)."""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import reversal  # noqa: E402
import sudoku  # noqa: E402

GRID = [1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 2, 1]


def test_sudoku_checker_on_hand_made_grids():
    assert sudoku.valid_grid(GRID)
    swapped = GRID[:2][::-1] + GRID[2:]  # rows fine except the columns of the first two cells
    assert not sudoku.valid_grid(swapped)
    assert not sudoku.valid_grid(GRID[:15] + [0])
    assert len(sudoku.solutions([0] * 16)) == 288  # every 4x4 Sudoku grid
    # a 2x2 rectangle of 1s and 2s over two boxes left blank: its two values can swap, two solutions
    two = [0 if i in (0, 1, 8, 9) else v for i, v in enumerate(GRID)]
    assert len(sudoku.solutions(two)) == 2 and not sudoku.unique(two)
    assert sudoku.solutions(GRID) == [GRID] and sudoku.unique(GRID)
    assert sudoku.solved([1] + [0] * 15, GRID) and not sudoku.solved([2] + [0] * 15, GRID)


def test_sudoku_puzzles_have_one_solution_and_test_grids_are_unseen():
    rng = random.Random(0)
    for givens in (4, 6, 10):
        puzzle = sudoku.make_puzzle(GRID, givens, rng)
        assert sudoku.solutions(puzzle) == [GRID]
        assert all(p in (0, g) for p, g in zip(puzzle, GRID)) and sum(p != 0 for p in puzzle) >= givens
    train, test = sudoku.dataset(50, 20, seed=1)
    assert all(sudoku.unique(p) for p, _ in train + test)
    assert not {tuple(g) for _, g in train} & {tuple(g) for _, g in test}


def test_reversal_data_trains_the_test_pairs_in_one_direction_only():
    records, test = reversal.facts(20, 5, seed=0)
    texts = {r["response"] for r in records}
    assert len(test) == 15 and all(r["prompt"] == "" for r in records)
    for a, b in test:
        assert reversal.forward(a, b) in texts
        assert not any(b in t and t.startswith("The mentee") for t in texts)
    assert sum(t.startswith("The mentee") for t in texts) == 5


def test_both_scripts_run_end_to_end_quick(tmp_path):
    sudoku.main(["--quick", "--out-docs", str(tmp_path)])
    reversal.main(["--quick", "--out-docs", str(tmp_path), "--out", str(tmp_path / "runs")])
    doc = (tmp_path / "CAPABILITIES.md").read_text()
    assert "<!-- BEGIN sudoku -->" in doc and "<!-- BEGIN reversal -->" in doc
    data = json.loads((tmp_path / "bench" / "sudoku.json").read_text())
    assert set(data["summary"]["all"]) == set(sudoku.METHODS)
    data = json.loads((tmp_path / "bench" / "reversal.json").read_text())
    assert set(data["summary"]["mdlm"]) == set(reversal.QUESTIONS)
    [state] = (tmp_path / "runs").glob("seed0-*/mdlm/checkpoint/trainer_state.json")
    before = state.stat().st_mtime_ns
    reversal.main(["--quick", "--out-docs", str(tmp_path), "--out", str(tmp_path / "runs")])
    assert state.stat().st_mtime_ns == before  # a finished run is reused, not trained again
    again = json.loads((tmp_path / "bench" / "reversal.json").read_text())
    assert again["summary"] == data["summary"]
