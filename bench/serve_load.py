"""Load test of ``dlm serve``: closed-loop clients on loopback against a masked-diffusion model served with
batching, the same model one request at a time (``--max-batch 1``), and an AR model of the same shape served with
batching. Writes docs/bench/serve_load.json, the load-test section of docs/SERVING.md and docs/playground.png.

    python bench/serve_load.py                          # trains the two models into runs/serve_load/ if missing
    python bench/serve_load.py --duration 5 --levels 1,4 --no-screenshot     # a quick look

Each level runs C clients for --duration seconds; every client sends one streamed completion after another
(stream_options.include_usage for the token count), each with its own prompt and seed. A request started within
the window is waited for; the level's rates are over its requests and its wall time. Per request: latency (send to
the last event) and time to first committed token (send to the first chunk with text). Batch occupancy: the
server's /health counters over the level, rows run / batched calls (the rows a model call carries, out of
--max-batch). The server and the clients share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, machine, machine_line, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "It is a truth universally acknowledged, that",
    "Emma Woodhouse, handsome, clever, and rich,",
    "The family of Dashwood had long been settled in",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who",
    "No one who had ever seen Catherine Morland in her infancy would have supposed",
    "She was",
    "Mr. Darcy",
    "Elizabeth could not but smile at",
]


# --- the models -----------------------------------------------------------------------------------------------


def train_model(out: Path, objective: str, steps: int) -> None:
    """The tiny preset (2 layers, d = 64, context 64) trained on Austen for ``steps`` (dlm train --preset tiny)."""
    from dlm.presets import preset_config
    from dlm.train.loop import train

    cfg = preset_config("tiny")
    cfg.train.objective, cfg.train.max_steps, cfg.train.precision = objective, steps, "fp32"
    print(f"training {objective} for {steps} steps into {out}", flush=True)
    train(cfg, out, progress=False)


def parameters(model: str) -> int:
    from dlm.loader import load

    return sum(p.numel() for p in load(str(ROOT / model))[0].parameters())


# --- the server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``dlm serve MODEL ARGS`` as a subprocess on a free loopback port, stopped by its PID (SIGTERM)."""

    def __init__(self, model: str, log: Path, *args):
        import httpx

        self.port, self.log = free_port(), log
        command = [sys.executable, "-m", "dlm.cli", "serve", model, "--port", str(self.port), "--name", "m", *args]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(1200):
            if self.proc.poll() is not None:
                raise SystemExit(f"dlm serve exited with {self.proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"dlm serve did not come up:\n{log.read_text()[-2000:]}")

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- the clients ----------------------------------------------------------------------------------------------


async def one_request(client, url: str, body: dict) -> dict:
    """One streamed completion: latency, time to the first text, completion tokens, or the error."""
    start = time.perf_counter()
    first, tokens, error = None, None, None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}", "start": start}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    error = data["error"]["message"]
                    break
                if data.get("usage"):
                    tokens = data["usage"]["completion_tokens"]
                if first is None and any(c.get("text") for c in data["choices"]):
                    first = time.perf_counter() - start
    except Exception as e:  # a transport error is an error of the level, not of the benchmark
        error = f"{type(e).__name__}: {e}"
    end = time.perf_counter()
    if error is None and tokens is None:
        error = "the stream ended without its usage chunk"
    return {"start": start, "latency": end - start, "ttft": first, "tokens": tokens, "error": error, "end": end}


async def level(url: str, clients: int, duration: float, settings: dict, max_tokens: int, seed0: int) -> list:
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    deadline = time.perf_counter() + duration
    records: list[dict] = []

    async def client_loop(i: int, client):
        k = 0
        while time.perf_counter() < deadline:
            body = {"model": "m", "prompt": PROMPTS[(i + k) % len(PROMPTS)], "max_tokens": max_tokens}
            body.update(seed=seed0 + 1000 * i + k, stream=True, stream_options={"include_usage": True})
            if settings:
                body["dlm"] = settings
            records.append(await one_request(client, url, body))
            k += 1

    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
    return records


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    rank = q / 100 * (len(values) - 1)  # linear interpolation between order statistics
    lo = int(rank)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (rank - lo)


def summarise(records: list[dict], before: dict, after: dict, max_batch: int) -> dict:
    ok = [r for r in records if r["error"] is None]
    start, end = min(r["start"] for r in records), max(r.get("end", r["start"]) for r in records)
    wall = end - start
    latency = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    batches, rows = after["batches"] - before["batches"], after["rows"] - before["rows"]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "error_examples": sorted({r["error"] for r in records if r["error"]})[:3],
        "seconds": wall,
        "requests_per_s": len(ok) / wall,
        "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "mean_tokens": sum(r["tokens"] for r in ok) / max(len(ok), 1),
        "latency_p50": percentile(latency, 50),
        "latency_p99": percentile(latency, 99),
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "batches": batches,
        "mean_batch_rows": rows / batches if batches else None,
        "occupancy": rows / batches / max_batch if batches else None,
        "nfe_per_batch": (after["nfe"] - before["nfe"]) / batches if batches else None,
    }


def run_config(name: str, model: str, serve_args: list[str], settings: dict, args, max_batch: int) -> dict:
    log = ROOT / "runs" / "serve_load" / f"server-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = Server(model, log, *serve_args, "--max-batch", str(max_batch), "--max-queue", "256")
    try:
        asyncio.run(level(server.url, 1, 0.5, settings, args.max_tokens, 0))  # warm-up, not counted
        results = {}
        for clients in args.levels:
            before = server.health()
            records = asyncio.run(level(server.url, clients, args.duration, settings, args.max_tokens, clients))
            row = summarise(records, before, server.health(), max_batch)
            results[str(clients)] = row
            occupancy = "-" if row["mean_batch_rows"] is None else f"{row['mean_batch_rows']:.1f}"
            print(
                f"{name:>22} C={clients:<3} {row['requests_per_s']:7.2f} req/s {row['tokens_per_s']:8.1f} tok/s "
                f"p50 {row['latency_p50']:.3f}s p99 {row['latency_p99']:.3f}s ttft p50 {row['ttft_p50']:.3f}s "
                f"errors {row['errors']} batch rows {occupancy}",
                flush=True,
            )
        return results
    finally:
        server.stop()


# --- the screenshot -------------------------------------------------------------------------------------------


def screenshot(model: str, out: Path, settings: dict, max_tokens: int) -> str:
    """The playground in headless chromium (system browser and chromedriver), mid-replay of one generation."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (browser and driver_path):
        return "skipped: no chromium + chromedriver (apt-get install -y chromium chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    server = Server(model, ROOT / "runs" / "serve_load" / "server-screenshot.log")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,760")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.get(server.url + "/")
        end = time.monotonic() + 30
        while not driver.execute_script("return document.getElementById('sampler').options.length > 0"):
            if time.monotonic() > end:
                raise SystemExit("the playground did not load the model")
            time.sleep(0.1)
        # temperature 1: the tiny model's greedy candidates are mostly punctuation
        fields = {"prompt": PROMPTS[1], "max_tokens": max_tokens, "seed": 3, "temperature": 1.0, **settings}
        for name, value in fields.items():
            box = driver.find_element("id", name)
            box.clear()
            box.send_keys(str(value))
        driver.find_element("id", "generate").click()
        while not driver.execute_script("return window.dlmPlayground.runs > 0"):
            time.sleep(0.1)
        steps = driver.execute_script("return window.dlmPlayground.history.length")
        shown = int(steps * 0.45)  # mid-generation: committed blocks, a block unmasking, masked blocks after it
        driver.execute_script(
            "const s = document.getElementById('step-slider'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('input'));",
            shown,
        )
        driver.save_screenshot(str(out))
        return f"step {shown + 1} of {steps}"
    finally:
        driver.quit()
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mdlm", default="runs/serve_load/mdlm")
    p.add_argument("--ar", default="runs/serve_load/ar")
    p.add_argument("--train-steps", type=int, default=150, help="training steps of a model that is missing")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per level")
    p.add_argument("--levels", default="1,4,16,64", help="concurrent clients, comma-separated")
    p.add_argument("--max-batch", type=int, default=16, help="--max-batch of the batched servers")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=32, help="denoising steps of the diffusion requests")
    p.add_argument("--block-length", type=int, default=8)
    p.add_argument("--no-screenshot", action="store_true")
    args = p.parse_args()
    args.levels = [int(c) for c in args.levels.split(",")]
    started = time.time()
    for path, objective in ((args.mdlm, "mdlm"), (args.ar, "ar")):
        if not (ROOT / path / "checkpoint").exists():
            train_model(ROOT / path, objective, args.train_steps)
    settings = {"steps": args.steps, "block_length": args.block_length}
    sizes = {"mdlm": parameters(args.mdlm), "ar": parameters(args.ar)}
    shot = "not taken (--no-screenshot)"
    if not args.no_screenshot:
        shot = screenshot(args.mdlm, DOCS / "playground.png", settings, args.max_tokens)
        print("screenshot:", shot, flush=True)

    configs = [
        ("mdlm, batched", args.mdlm, settings, args.max_batch),
        ("mdlm, one at a time", args.mdlm, settings, 1),
        ("ar, batched", args.ar, {}, args.max_batch),
    ]
    results, load = {}, {}
    for name, model, dlm_settings, max_batch in configs:
        before = os.getloadavg()[0]
        results[name] = run_config(name, model, [], dlm_settings, args, max_batch)
        load[name] = [before, os.getloadavg()[0]]  # other work on the machine shares its cores
    report = {
        "command": "python bench/serve_load.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "minutes": (time.time() - started) / 60,
        "protocol": {
            "duration": args.duration,
            "levels": args.levels,
            "max_tokens": args.max_tokens,
            "diffusion_settings": settings,
            "max_batch": args.max_batch,
            "models": {"mdlm": args.mdlm, "ar": args.ar},
            "parameters": sizes,
            "train_steps": args.train_steps,
            "load_average": load,
            "screenshot": shot,
        },
        "results": results,
    }
    md = markdown(report)
    write_results("serve_load", report, md, document="SERVING.md")
    print(md)


def markdown(report: dict) -> str:
    pr, results = report["protocol"], report["results"]

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [
        "| server | clients | requests/s | output tokens/s | latency p50 / p99 (s) | first token p50 / p99 (s) "
        "| errors | mean batch rows |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, levels in results.items():
        for clients, r in levels.items():
            lines.append(
                f"| {name} | {clients} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                f"{num(r['latency_p50'], '.2f')} / {num(r['latency_p99'], '.2f')} | "
                f"{num(r['ttft_p50'], '.2f')} / {num(r['ttft_p99'], '.2f')} | {r['errors']} | "
                f"{num(r['mean_batch_rows'], '.1f')} |"
            )
    s = pr["diffusion_settings"]
    sizes = " and ".join(f"{n / 1e6:.2f}M" for n in pr["parameters"].values())
    loads = ", ".join(f"{name} {a:.1f} / {b:.1f}" for name, (a, b) in pr["load_average"].items())
    return f"""Measured with `{report["command"].strip()}` on {machine_line(report["machine"])}; {report["minutes"]:.0f}
minutes. Server and clients share the machine's cores (torch threads {report["machine"]["torch_threads"]}).
Load averages (1 min) before / after each server's levels: {loads}.
Models (trained by the script if missing): `{pr["models"]["mdlm"]}` (MDLM) and `{pr["models"]["ar"]}` (AR), both the
`tiny` preset (2 layers, d = 64, context 64; {sizes} parameters with the 8k BPE), {pr["train_steps"]} steps on Austen.
Each request: a streamed completion of one of 8 prompts (5 to 17 tokens), `max_tokens` {pr["max_tokens"]},
its own seed; diffusion: `"dlm": {{"steps": {s["steps"]}, "block_length": {s["block_length"]}}}` (confidence
sampler, greedy, no cache); AR: the ar sampler with its defaults. {pr["duration"]:g} s of closed-loop load per
level; batched servers `--max-batch {pr["max_batch"]}`. Output tokens: the answers' tokens (up to the first EOS);
first token: the first streamed chunk with text (a diffusion row's first block must close first). Mean batch
rows: rows per batched model call over the level (/health counters).

{chr(10).join(lines)}
"""


if __name__ == "__main__":
    main()
