"""The X-Fusion miniature end to end: train the three variants, sample both ways, measure, write docs/MULTIMODAL.md.

    python bench/multimodal.py                      # the measured study (docs/MULTIMODAL.md), ~35 min on 2 cores
    python bench/multimodal.py --quick --no-write   # a smoke run: 1 seed, few steps, nothing written

1. The text tower: ``--text-tower DIR``, a dlm AR run; if DIR holds none, it is trained first with
   ``TEXT_TOWER_COMMAND`` (the ``small`` preset narrowed to d=128, 4 layers, seq 128, a few minutes).
2. Data and VAE: the fixed digits split with generated captions (``dlm.multimodal.data``); a ConvVAE to 4x4x2
   latents (reconstruction MSE and KL on the held-out images reported), 2x2 patches = 4 image tokens of 8 dims.
3. The judge: an SVC fitted to the real training digits, its held-out accuracy reported.
4. Per variant (dual-tower, single-tower, dual-projection, and dual-tower without image-to-text data) and seed:
   ``--steps`` of the joint loss in the same budget (same steps, same text-to-image batch), then
   - text-to-image accuracy (the judge's label = the caption's digit) of 100 captions (10 per digit) per sampler
     (DDIM, DPM-Solver++(2M)) and NFE, guidance scale ``--guidance``; also at scale 0 for DPM-Solver++ at NFE 8;
   - image-to-text accuracy (the greedy caption names the digit) on every held-out image;
   - the text tower's validation nats/token on the bundled corpus, before and after.
Writes docs/bench/multimodal.json, docs/multimodal_t2i.png, docs/multimodal_samples.png and the ``multimodal``
section of docs/MULTIMODAL.md; ``--rerender docs/bench/multimodal.json`` redoes tables and plots from a saved run.
Threads default to 1 (``--threads``): on 2 cores shared with other jobs, two threads were 5-10x slower here.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import DOCS, machine, machine_line, write_results  # noqa: E402

import dlm  # noqa: E402
from dlm.data.packing import load_packed  # noqa: E402
from dlm.multimodal.data import TEMPLATES, CaptionCodec, caption, load_digits_split  # noqa: E402
from dlm.multimodal.evaluate import digit_classifier, i2t_accuracy, t2i_accuracy, text_nats  # noqa: E402
from dlm.multimodal.model import XFusion  # noqa: E402
from dlm.multimodal.sample import SAMPLERS, caption_images, generate_images  # noqa: E402
from dlm.multimodal.train import MultimodalConfig, train_multimodal  # noqa: E402
from dlm.multimodal.vae import latent_scale, patchify, train_vae, vae_report  # noqa: E402

TEXT_TOWER_COMMAND = (
    "OMP_NUM_THREADS=1 dlm train --preset small --objective ar --set model.d_model=128 --set model.n_layers=4 "
    "--set model.n_heads=4 --set model.d_ff=512 --set data.seq_len=128 --set model.max_seq_len=128 "
    "--max-steps 400 --time-limit 4 --seed 0 --out {out}"
)
RUNS = [("dual-tower", True), ("single-tower", True), ("dual-projection", True), ("dual-tower", False)]
NFES = [2, 4, 8, 16]
VAE_BETA = 1e-3


def run_name(variant: str, with_i2t: bool) -> str:
    return variant if with_i2t else f"{variant} (t2i data only)"


def eval_captions(per_digit: int) -> tuple[list[str], torch.Tensor]:
    """per_digit captions of each digit, cycling through templates and styles."""
    texts, labels = [], []
    for d in range(10):
        for j in range(per_digit):
            texts.append(caption(d, j % 3, j % len(TEMPLATES)))
            labels.append(d)
    return texts, torch.tensor(labels)


def ensure_text_tower(path: Path) -> None:
    if (path / "checkpoint").exists():
        return
    cmd = TEXT_TOWER_COMMAND.format(out=path).replace("dlm train", f"{sys.executable} -m dlm.cli train")
    print(f"training the text tower: {cmd}", flush=True)
    subprocess.run(cmd, shell=True, check=True)


def study(args) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.time()
    ensure_text_tower(Path(args.text_tower))
    text_model, tokenizer, run_cfg = dlm.load(args.text_tower)
    _, _, val = load_packed(run_cfg.data, tokenizer)
    codec = CaptionCodec(tokenizer)
    train, held = load_digits_split()

    vae = train_vae(train.images, steps=args.vae_steps, beta=VAE_BETA, seed=0)
    scale = latent_scale(vae, train.images)
    with torch.no_grad():
        train_lat = patchify(vae.encode(train.images)[0] * scale)  # (N, 4, 8)
        held_lat = patchify(vae.encode(held.images)[0] * scale)
    classifier = digit_classifier(train.images, train.labels)
    texts, labels = eval_captions(args.per_digit)
    result = {
        "machine": machine(),
        "args": vars(args),
        "text_tower": {"path": args.text_tower, "config": run_cfg.model.__dict__, "command": TEXT_TOWER_COMMAND},
        "text_nats_before": text_nats(text_model, val, bos_id=tokenizer.bos_id),
        "vae": vae_report(vae, held.images, VAE_BETA) | {"latent_scale": scale, "tokens": list(train_lat.shape[1:])},
        "classifier_held_out_accuracy": t2i_accuracy(classifier, held.images, held.labels),
        "split": {"train": len(train), "held_out": len(held)},
        "caption_length": codec.length,
        "runs": [],
    }
    print(json.dumps({k: result[k] for k in ("text_nats_before", "vae", "classifier_held_out_accuracy")}), flush=True)
    for variant, with_i2t in RUNS:
        for seed in args.seeds:
            t0 = time.time()
            cfg = MultimodalConfig(
                variant=variant,
                steps=args.steps,
                i2t_batch=args.i2t_batch if with_i2t else 0,
                seed=seed,
                lr=args.lr,
            )
            torch.manual_seed(seed)
            model = XFusion(copy.deepcopy(text_model), variant, train_lat.shape[2], train_lat.shape[1])
            history = train_multimodal(model, cfg, codec, train, train_lat)
            t_train = time.time() - t0
            run = {
                "variant": variant,
                "with_i2t": with_i2t,
                "name": run_name(variant, with_i2t),
                "seed": seed,
                "config": cfg.to_dict(),
                "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
                "history": history,
                "train_seconds": t_train,
                "t2i": {},
            }
            for sampler in SAMPLERS:
                for nfe in NFES:
                    g = torch.Generator().manual_seed(1000 + seed)
                    images = generate_images(
                        model, codec, vae, scale, texts, sampler=sampler, steps=nfe, guidance=args.guidance, generator=g
                    )
                    run["t2i"][f"{sampler}/{nfe}"] = t2i_accuracy(classifier, images, labels)
                    if sampler == "dpmpp-2m" and nfe == max(NFES) and seed == args.seeds[0]:
                        run["grid"] = images[:, 0].tolist()
                        run["image_range"] = [images.min().item(), images.max().item()]
            g = torch.Generator().manual_seed(1000 + seed)
            images = generate_images(
                model, codec, vae, scale, texts, sampler="dpmpp-2m", steps=8, guidance=0.0, generator=g
            )
            run["t2i_no_guidance"] = t2i_accuracy(classifier, images, labels)
            captions = caption_images(model, codec, held_lat)
            run["i2t"] = i2t_accuracy(captions, held.labels)
            run["caption_examples"] = [[int(d), c] for d, c in zip(held.labels[:8], captions[:8])]
            run["text_nats_after"] = text_nats(model.text, val, bos_id=tokenizer.bos_id)
            run["seconds"] = time.time() - t0
            result["runs"].append(run)
            print(
                f"{run['name']} seed {seed}: t2i {run['t2i']} no-cfg {run['t2i_no_guidance']:.2f} i2t {run['i2t']:.3f}"
                f" nats {run['text_nats_after']:.4f} ({run['seconds']:.0f} s; {history[-1]})",
                flush=True,
            )
    result["total_seconds"] = time.time() - t_start
    return result


def mean_range(values: list[float]) -> str:
    m = sum(values) / len(values)
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ({min(values):.2f}-{max(values):.2f})"


def names(result: dict) -> list[str]:
    return list(dict.fromkeys(r["name"] for r in result["runs"]))


def by_name(result: dict, name: str) -> list[dict]:
    return [r for r in result["runs"] if r["name"] == name]


def render(result: dict) -> str:
    a, info = result["args"], result["machine"]
    seeds = " ".join(str(s) for s in a["seeds"])
    cmd = f"python bench/multimodal.py --steps {a['steps']} --seeds {seeds} --guidance {a['guidance']}"
    v = result["vae"]
    lines = [
        "## Measured",
        "",
        f"Command: `{cmd}` (text tower: `{result['text_tower']['command'].format(out=a['text_tower'])}`).",
        f"Machine: {machine_line(info)}; torch threads {a['threads']}; whole study {result['total_seconds'] / 60:.1f}"
        " min. Mean over seeds, (min-max) in brackets.",
        "",
        f"- Split: {result['split']['train']} training / {result['split']['held_out']} held-out digits; captions of up"
        f" to {result['caption_length']} tokens (BOS and EOS included).",
        f"- VAE (4x4x2 latents, beta {v['beta']:g}): held-out reconstruction MSE {v['recon_mse']:.4f} per pixel (data"
        f" range [-1, 1]), KL {v['kl_per_dim']:.2f} nats per latent dimension; latent scale {v['latent_scale']:.3f};"
        f" {v['tokens'][0]} image tokens of {v['tokens'][1]} dimensions.",
        f"- Judge (SVC on real training digits): held-out accuracy {result['classifier_held_out_accuracy']:.3f}.",
        f"- Text tower before training: {result['text_nats_before']:.4f} nats/token on the first 32 validation"
        " sequences of the bundled corpus.",
        "",
        f"Text-to-image accuracy (judge's label = caption's digit; 100 captions, guidance scale {a['guidance']}),"
        " image-to-text accuracy (held-out images), text nats/token after training, trainable parameters, seconds"
        " per run (train + evaluation):",
        "",
        "| variant | " + " | ".join(f"{s} NFE {n}" for s in SAMPLERS for n in NFES) + " | no CFG (dpmpp 8) | i2t |"
        " text nats after | trainable | s/run |",
        "| --- | " + " | ".join("---:" for _ in SAMPLERS for _ in NFES) + " | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names(result):
        runs = by_name(result, name)
        cells = [mean_range([r["t2i"][f"{s}/{n}"] for r in runs]) for s in SAMPLERS for n in NFES]
        cells += [
            mean_range([r["t2i_no_guidance"] for r in runs]),
            mean_range([r["i2t"] for r in runs]),
            " / ".join(f"{r['text_nats_after']:.4f}" for r in runs),
            f"{runs[0]['trainable_parameters'] / 1e6:.2f}M",
            f"{sum(r['seconds'] for r in runs) / len(runs):.0f}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Final training losses (mean of the last 25 steps; image: flow MSE, text: caption CE in nats):",
        "",
        "| variant | image loss | text loss |",
        "| --- | ---: | ---: |",
    ]
    for name in names(result):
        runs = by_name(result, name)
        img = mean_range([r["history"][-1]["image_loss"] for r in runs])
        txt = [r["history"][-1].get("text_loss") for r in runs]
        lines.append(f"| {name} | {img} | {mean_range(txt) if None not in txt else '-'} |")
    lines += ["", "Greedy captions of the first held-out images (seed 0):", ""]
    for name in names(result):
        r = by_name(result, name)[0]
        lines.append(f"- {name}: " + "; ".join(f"{d} -> `{json.dumps(c)}`" for d, c in r["caption_examples"][:5]))
    lines += [
        "",
        "![text-to-image accuracy vs NFE](multimodal_t2i.png)",
        "",
        "![samples](multimodal_samples.png)",
    ]
    return "\n".join(lines)


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SAMPLERS), figsize=(5 * len(SAMPLERS), 3.6), sharey=True)
    for ax, sampler in zip(axes, SAMPLERS):
        for name in names(result):
            runs = by_name(result, name)
            acc = torch.tensor([[r["t2i"][f"{sampler}/{n}"] for n in NFES] for r in runs])  # (seeds, nfes)
            m = acc.mean(0)
            ax.errorbar(NFES, m, yerr=[m - acc.min(0).values, acc.max(0).values - m], marker="o", capsize=3, label=name)
        ax.axhline(result["classifier_held_out_accuracy"], color="gray", ls=":", label="judge on real digits")
        ax.axhline(0.1, color="gray", ls="--", lw=0.8, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(NFES, [str(n) for n in NFES])
        ax.set_xlabel("NFE (steps; each runs the model twice for CFG)")
        ax.set_title(sampler)
    axes[0].set_ylabel("text-to-image label accuracy")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "multimodal_t2i.png", dpi=120)
    plt.close(fig)

    grids = [(name, by_name(result, name)[0]) for name in names(result)]
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.6))
    per_digit = result["args"]["per_digit"]
    for ax, (name, r) in zip(axes, grids):
        imgs = torch.tensor(r["grid"]).view(10, per_digit, 8, 8)[:, :8]  # (digit, sample, 8, 8)
        canvas = imgs.permute(0, 2, 1, 3).reshape(10 * 8, -1)  # rows: digits 0-9
        ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(f"{name}\nDPM-Solver++ NFE {max(NFES)}", fontsize=8)
        ax.set_yticks([4 + 8 * d for d in range(10)], [str(d) for d in range(10)])
        ax.set_xticks([])
    fig.tight_layout()
    fig.savefig(DOCS / "multimodal_samples.png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text-tower", default="runs/mm-text")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--i2t-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--per-digit", type=int, default=10)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--quick", action="store_true", help="1 seed, 20 steps, 300 VAE steps, 2 captions per digit: a smoke run"
    )
    p.add_argument("--no-write", action="store_true", help="print the table, write nothing into docs/")
    p.add_argument("--rerender", type=Path, help="a saved docs/bench/multimodal.json: redo the tables and plots")
    args = p.parse_args()
    if args.rerender:
        result = json.loads(args.rerender.read_text())
    else:
        if args.quick:
            args.seeds, args.steps, args.vae_steps, args.per_digit = args.seeds[:1], 20, 300, 2
        result = study(args)
    markdown = render(result)
    print(markdown)
    if not args.no_write:
        plot(result)
        write_results("multimodal", result, markdown, document="MULTIMODAL.md")


if __name__ == "__main__":
    main()
