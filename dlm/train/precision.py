"""``--precision auto``: bf16 autocast where it is measurably faster than fp32, fp32 everywhere else.

- CUDA: bf16 when the GPU supports it.
- CPU: bf16 autocast runs the matmuls through oneDNN in bf16, which is fast only with AMX-bf16 tiles (Intel Xeon
  4th generation and later). Without them (AVX2, AVX-512 without AMX) the bf16 kernels are several times slower
  than fp32 (``bench/cpu_precision.py``, docs/RESULTS.md). So auto picks bf16 on a CPU only when the CPU reports
  ``amx_bf16`` *and* a probe of the model's own matmul shapes (about a tenth of a second) runs at least
  ``SPEEDUP`` times faster in bf16; models narrower than ``MIN_WIDTH`` stay fp32.
- ``DLM_AUTO_PRECISION=fp32`` (or ``bf16``) fixes auto's choice; the tests set fp32, so that the suite computes the
  same numbers on every CPU.

``auto_precision`` returns the choice and the reason, which ``dlm train`` prints at start.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch

from dlm.errors import DlmError

PRECISIONS = ("auto", "fp32", "bf16")
SPEEDUP = 1.2  # the least probe speed-up for which auto picks bf16 on a CPU
MIN_WIDTH = 256  # narrower models stay fp32: the probe's timings there are overhead (1.3x "faster" on AVX2, where
#                  tiny trains 0.6x as fast in bf16; docs/RESULTS.md)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is none (then auto stays fp32)."""
    try:
        match = re.search(r"^flags\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return set()
    return set(match.group(1).split()) if match else set()


def bf16_speedup(d_model: int, d_ff: int, tokens: int = 512, repeats: int = 5) -> float:
    """fp32 time / bf16-autocast time of one MLP's forward and backward at the model's shapes on the CPU: the best
    of ``repeats`` interleaved timings of each, after a warm-up (oneDNN builds its kernels on the first call)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, d_model, generator=generator)
    w1 = torch.randn(d_model, d_ff, generator=generator).requires_grad_()
    w2 = torch.randn(d_ff, d_model, generator=generator).requires_grad_()

    def seconds(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = torch.relu(x @ w1) @ w2
        y.float().sum().backward()
        return time.perf_counter() - start

    seconds(False), seconds(True)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):
        for bf16 in (False, True):
            best[bf16] = min(best[bf16], seconds(bf16))
    return best[False] / best[True]


def auto_precision(device: torch.device, d_model: int = 512, d_ff: int = 2048) -> tuple[str, str]:
    """(precision, reason) that ``--precision auto`` resolves to on ``device`` for a model of that width."""
    fixed = os.environ.get("DLM_AUTO_PRECISION")
    if fixed:
        if fixed not in ("fp32", "bf16"):
            raise DlmError(f"DLM_AUTO_PRECISION={fixed!r}: set it to fp32 or bf16, or unset it")
        return fixed, "DLM_AUTO_PRECISION"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU supports bf16"
        return "fp32", "this GPU has no bf16"
    if device.type != "cpu":
        return "fp32", f"auto picks bf16 only on CUDA and AMX CPUs, not on {device.type}"
    if "amx_bf16" not in cpu_flags():
        return "fp32", "this CPU has no AMX-bf16, where bf16 autocast is slower than fp32"
    if d_model < MIN_WIDTH:
        return "fp32", f"d_model {d_model} < {MIN_WIDTH}: too narrow for bf16 matmuls to pay (a probe there is noise)"
    speedup = bf16_speedup(d_model, d_ff)
    if speedup >= SPEEDUP:
        return "bf16", f"AMX-bf16: a probe ran {speedup:.1f}x faster in bf16"
    return "fp32", f"AMX-bf16, but a probe ran only {speedup:.1f}x faster in bf16"


def resolve_precision(precision: str, device: torch.device, d_model: int = 512, d_ff: int = 2048) -> tuple[str, str]:
    """``--precision`` -> (fp32 or bf16, why): auto as ``auto_precision`` decides, the others as given."""
    if precision not in PRECISIONS:
        raise DlmError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return auto_precision(device, d_model, d_ff)
    return precision, "as asked"
