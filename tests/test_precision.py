"""--precision auto: fp32 on a CPU without AMX-bf16, bf16 on an AMX CPU only where the probe is faster, the
environment override, and the start line that says which was chosen and why."""

import pytest
import torch

from dlm.errors import DlmError
from dlm.train import precision as P
from tests.helpers import dlm as run_cli

CPU = torch.device("cpu")


def test_auto_on_a_cpu_follows_the_isa_and_the_probe(monkeypatch):
    monkeypatch.delenv("DLM_AUTO_PRECISION")
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "avx512f"})
    monkeypatch.setattr(P, "bf16_speedup", lambda *a, **k: pytest.fail("no probe without AMX"))
    assert P.resolve_precision("auto", CPU) == (
        "fp32",
        "this CPU has no AMX-bf16, where bf16 autocast is slower than fp32",
    )
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    for speedup, want in ((2.5, "bf16"), (1.1, "fp32")):
        monkeypatch.setattr(P, "bf16_speedup", lambda *a, s=speedup, **k: s)
        precision, why = P.resolve_precision("auto", CPU)
        assert precision == want and f"{speedup:.1f}x" in why
    assert P.resolve_precision("auto", CPU, d_model=64)[0] == "fp32"  # too narrow to probe
    assert P.resolve_precision("bf16", CPU) == ("bf16", "as asked")  # explicit choices are never second-guessed
    with pytest.raises(DlmError, match="choose one of: auto, fp32, bf16"):
        P.resolve_precision("fp16", CPU)


def test_the_environment_fixes_auto(monkeypatch):
    monkeypatch.setenv("DLM_AUTO_PRECISION", "bf16")
    assert P.auto_precision(CPU) == ("bf16", "DLM_AUTO_PRECISION")
    monkeypatch.setenv("DLM_AUTO_PRECISION", "fp16")
    with pytest.raises(DlmError, match="set it to fp32 or bf16"):
        P.auto_precision(CPU)


def test_the_probe_measures_a_ratio():
    speedup = P.bf16_speedup(32, 64, tokens=16, repeats=1)
    assert speedup > 0 and speedup == speedup  # a positive finite ratio (its value depends on the CPU)


def test_train_says_which_precision_auto_chose(tmp_path):
    proc = run_cli("train", "--preset", "tiny", "--objective", "ar", "--max-steps", "1", "--out", tmp_path / "r")
    assert "fp32 (auto: DLM_AUTO_PRECISION)" in proc.stderr + proc.stdout
