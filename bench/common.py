"""Shared by the benchmark scripts: a description of the machine, and writing results into docs/."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1)
        flags = re.search(r"flags\s*:\s*(.*)", text).group(1).split()
        simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    except (OSError, AttributeError):
        simd = []
    info = {
        "cpu": cpu,
        "simd": simd,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.date.today().isoformat(),
    }
    return info


def machine_line(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ", no GPU"
    return (
        f"{info['cpu']} ({'/'.join(info['simd']) or 'no AVX'}), {info['cores']} cores, torch "
        f"{info['torch']}{gpu}, {info['date']}"
    )


HEADERS = {
    "RESULTS.md": "# Results\n\nEvery number below comes from the command printed beside it.\n",
    "CAPABILITIES.md": "# Capabilities\n\nStudies of what the models can do; every number comes from the command "
    "printed beside it.\n",
}


def write_results(name: str, data: dict, markdown: str, document: str = "RESULTS.md", docs=None) -> None:
    """Write docs/bench/NAME.json and replace the NAME section of docs/DOCUMENT (RESULTS.md unless told) with
    ``markdown``; a section not there yet is appended, a document not there yet is created (with its ``HEADERS``
    line). ``docs``: another folder than docs/ (a smoke test's temporary one)."""
    docs = DOCS if docs is None else Path(docs)
    (docs / "bench").mkdir(parents=True, exist_ok=True)
    (docs / "bench" / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    results = docs / document
    text = results.read_text() if results.exists() else HEADERS.get(document, f"# {Path(document).stem}\n")
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    results.write_text(text)
