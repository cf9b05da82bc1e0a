"""Shared by the tests of ``dlm serve`` (test_serve.py, test_playground.py): a tiny random run to serve, and the
server itself as a subprocess on a free loopback port, stopped by its PID."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import torch

LINES = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of "
    "a wife.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, seemed to unite some "
    "of the best blessings of existence.",
    "The family of Dashwood had long been settled in Sussex.",
]


def tiny_run(path):
    """A random 2-layer masked-diffusion model with a 320-token BPE, saved as a dlm run directory."""
    from dlm.config import ModelConfig, RunConfig, TrainConfig
    from dlm.data.tokenizer import train_tokenizer
    from dlm.models.transformer import Transformer
    from dlm.train.checkpoint import save_checkpoint

    tokenizer = train_tokenizer(LINES * 4, vocab_size=320)
    torch.manual_seed(0)
    mc = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=96)
    config = RunConfig(preset="tiny", model=mc, train=TrainConfig(objective="mdlm"))
    save_checkpoint(path, model=Transformer(mc).eval(), tokenizer=tokenizer, config=config)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dlm_serve(model, log, *args):
    """``dlm serve MODEL ARGS`` on a free loopback port, its output in the file ``log``: yields the base URL once
    ``/health`` answers; at the end SIGTERM must stop it cleanly (exit 0). Killed by its PID if anything fails."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "dlm.cli", "serve", str(model), "--port", str(port), *map(str, args)]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise AssertionError(f"dlm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"dlm serve did not come up:\n{log.read_text()[-3000:]}")
        yield url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert "dlm serve: stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
