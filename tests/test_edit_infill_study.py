"""bench/edit_infill.py: the corruption helper, the AR baseline's left-context-only rule, and a --quick run."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import edit_infill  # noqa: E402

import dlm  # noqa: E402


def test_corrupt_replaces_ten_percent_rounded_half_up_and_never_a_special_token():
    special = {0, 1, 2}
    generator = torch.Generator().manual_seed(0)
    for length, expected in ((12, 1), (15, 2), (25, 3), (40, 4), (5, 1)):  # floor(0.1 n + 1/2), at least 1
        ids = [0] + list(range(3, 3 + length - 1))  # a special token at position 0
        out, positions = edit_infill.corrupt(ids, 50, special, generator)
        changed = [i for i in range(length) if out[i] != ids[i]]
        assert changed == positions and len(positions) == expected
        assert 0 not in positions and not any(out[p] in special for p in positions)


def test_ar_left_edit_never_reads_to_the_right(tiny_ar_run):
    model, tok, _ = dlm.load(tiny_ar_run)
    ids = tok.encode("It is a truth universally acknowledged, that a single man in possession")
    i = 6
    right = ids[: i + 1] + [(t * 7 + 11) % 500 + 10 for t in ids[i + 1 :]]  # everything after i changed
    for kw in (dict(below=0.05), dict(positions=[2, i])):
        a = edit_infill.ar_left_edit(model, tok.bos_id, ids, **kw)
        b = edit_infill.ar_left_edit(model, tok.bos_id, right, **kw)
        assert a[: i + 1] == b[: i + 1]  # the decisions up to i: the same
    scores = edit_infill.ar_left_log_probs(model, tok.bos_id, ids)
    assert torch.equal(scores[: i + 1], edit_infill.ar_left_log_probs(model, tok.bos_id, right)[: i + 1])
    assert not torch.equal(scores, edit_infill.ar_left_log_probs(model, tok.bos_id, right))  # (the right differs)


def test_quick_run_end_to_end_writes_where_it_is_told(tmp_path):
    edit_infill.main(["--quick", "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"), "--jobs", "1"])
    doc = (tmp_path / "docs" / "CAPABILITIES.md").read_text()
    assert "Instant Edit quality" in doc and "Infill quality" in doc and "| oracle positions | AR (left only)" in doc
    data = json.loads((tmp_path / "docs" / "bench" / "edit_quality.json").read_text())
    repaired, clean_changed = data["edit"][0]["mdlm"]["oracle positions"]
    assert 0 <= repaired <= 1 and clean_changed == 0  # oracle positions never touch a clean token
    assert set(json.loads((tmp_path / "docs" / "bench" / "infill_quality.json").read_text())["infill"][0]) == {
        "AR, left side (exact)", "MDLM, both sides (NELBO bound)", "MDLM, left side only (NELBO bound)",
    }  # fmt: skip
