"""bench/smol_capabilities.py end to end on tiny stand-ins: a random Llama folder as the AR source and its
clean-causal adaptation as the diffusion model (SmolLM2 itself is too large for a test)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import smol_capabilities  # noqa: E402

from dlm.errors import DlmError  # noqa: E402
from dlm.train import checkpoint as ckpt  # noqa: E402
from tests.test_adapt import adapted  # noqa: E402
from tests.test_adapt import source as source  # noqa: E402, F401 (the fixture)


@pytest.fixture
def pair(tmp_path, source):
    model, tokenizer, cfg = adapted(source, clean_causal=True)
    ckpt.save_checkpoint(tmp_path / "adapted", model=model, tokenizer=tokenizer, config=cfg)
    return source, tmp_path / "adapted"


def test_a_run_writes_its_section_with_both_studies_and_examples(tmp_path, pair):
    source, model = pair
    docs = tmp_path / "docs"
    smol_capabilities.main(
        ["--model", str(model), "--source", str(source), "--sentences", "3", "--nelbo-samples", "2",
         "--examples", "1", "--docs", str(docs)]
    )  # fmt: skip
    text = (docs / "CAPABILITIES.md").read_text()
    assert (
        "## Infill and Instant Edit with a real model" in text and "| oracle positions | adapted (both sides)" in text
    )
    data = json.loads((docs / "bench" / "smol_edit_infill.json").read_text())
    assert data["edit_sentences"] == 3 and len(data["infill_examples"]) == 1 and len(data["edit_examples"]) == 1
    for objective in ("ar", "mdlm"):
        repaired, clean_changed = data["edit"][objective]["oracle positions"]
        assert 0 <= repaired <= 1 and clean_changed == 0  # given the true positions, no clean token moves
    assert set(data["edit"]["mdlm"]) == {"K = #corrupted, 1 round", "p below 0.01, 1 round", "oracle positions"}


def test_the_models_must_be_what_their_flags_say(pair):
    source, model = pair
    with pytest.raises(DlmError, match="--source must be an ar model"):
        smol_capabilities.load_pair(str(model), str(model))
    with pytest.raises(DlmError, match="--model must be an mdlm model"):
        smol_capabilities.load_pair(str(source), str(source))
