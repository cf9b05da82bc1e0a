"""x0 vs eps vs v prediction when 2-D data lives in D dimensions (JiT: Li & He 2025, "Back to basics").

    python bench/prediction_targets.py

Data: the ring of 8 Gaussians of bench/toy_mixture.py (radius 1, std 0.1), embedded as x = P z with P [D, 2]
random orthonormal columns, D in {2, 16, 128, 512}; a fresh batch every step.
Training: for each D and each target (x0, eps, v), the same denoiser (``TimeMLP``: 4 hidden layers of width 256,
SiLU; the same initial weights for every target), the same budget (``--steps`` Adam steps of ``--batch`` points,
lr 1e-3 with a cosine decay) and the same data stream, trained with ``dlm.objectives.gaussian.gaussian_loss`` on
DDPM's vp-linear schedule, under two losses (``--weightings``): ``snr+1``, the same loss in x0 terms for every
target, v-prediction's MSE whatever the network outputs (JiT's "x-prediction with v-loss"), so that only what the
network is asked to output changes; and ``own``, each target's own plain MSE (DDPM's eps loss, the x0 MSE, the v
MSE), what each is usually trained with (for v the two are the same loss, trained once). Under ``snr+1`` an
eps-predictor's loss weight is (1 + SNR) / SNR, which reaches ~2e4 at t = 1 on vp-linear: the x0 error of an
eps-predictor there is its eps error over alpha_1 = 6.6e-3.
Sampling: N points by DPM-Solver++(2M) with ``--sample-steps`` steps on the lambda grid from x_1 ~ N(0, I_D) to
t_min = 1e-3, then one more call returns x0_hat at t_min (the sample). The exact denoiser (``mixture_x0``) is
sampled the same way as a reference.
Quality, per sample set:

- ``sw``: sliced 2-Wasserstein distance between the in-plane part z = P^T x of the N samples and N fresh data
  points (floor: the same distance from 8 other data samples of size N, reported beside);
- ``off``: off-manifold energy, the RMS norm of the part outside the data plane, sqrt(mean ||x - P P^T x||^2)
  (0 for data; the data's own scale is ||z|| ~ 1).

Writes docs/bench/prediction_targets.json, docs/prediction_targets.png and its section of docs/CONTINUOUS.md;
``--rerender docs/bench/prediction_targets.json`` redoes the floor, table and plot from a saved run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import DOCS, machine, machine_line, write_results  # noqa: E402
from time_mlp import build_mlp  # noqa: E402
from toy_mixture import Ring, mixture_x0, random_embedding, sliced_wasserstein  # noqa: E402

from dlm.noise.gaussian import predict_x0_eps  # noqa: E402
from dlm.objectives.gaussian import gaussian_loss  # noqa: E402
from dlm.samplers.ode import dpm_solver_2m_sample, time_grid  # noqa: E402

TARGETS = ["x0", "eps", "v"]
FLOOR_DRAWS = 8
OWN = {"x0": "x0", "eps": "snr", "v": "snr+1"}  # each target's plain MSE as a weighting of the x0 error
SCHEDULE, T_MIN = "vp-linear", 1e-3


def train(
    dim: int,
    target: str,
    embed: torch.Tensor,
    ring: Ring,
    *,
    steps: int,
    batch: int,
    width: int,
    weighting: str | None,
    seed: int,
) -> tuple[torch.nn.Module, float]:
    """A TimeMLP trained to predict ``target`` for the embedded ring: (model, mean loss over the last 10% steps)."""
    model = build_mlp(dim, width, depth=4, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cosine = lambda i: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * i / steps))  # noqa: E731
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    g = torch.Generator().manual_seed(seed + 1)  # the data and noise stream, the same for every target
    tail = []
    for step in range(steps):
        x0 = (ring.sample(batch, g) @ embed.T).float()  # (B, D)
        out = gaussian_loss(model, x0, schedule=SCHEDULE, target=target, weighting=weighting, generator=g)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        lr_schedule.step()
        if step >= steps - max(1, steps // 10):
            tail.append(out.loss.item())
    return model, sum(tail) / len(tail)


@torch.no_grad()
def sample(denoiser, target: str, dim: int, n: int, sample_steps: int, generator: torch.Generator) -> torch.Tensor:
    """N samples [N, D]: DPM-Solver++(2M) from t = 1 to T_MIN on the lambda grid, then x0_hat at T_MIN."""
    times = time_grid(sample_steps, schedule=SCHEDULE, t_max=1.0, t_min=T_MIN, spacing="lambda")
    x = torch.randn(n, dim, generator=generator)  # (N, D)
    x, _ = dpm_solver_2m_sample(denoiser, x, times, schedule=SCHEDULE, target=target)
    t = torch.full((n,), T_MIN)
    x0_hat, _ = predict_x0_eps(denoiser(x, t), target, x, t, SCHEDULE)  # (N, D)
    return x0_hat


def quality(x: torch.Tensor, embed: torch.Tensor, data_z: torch.Tensor) -> dict:
    """sw: sliced W2 of the in-plane part to the data; off: RMS norm of the part off the data plane."""
    x = x.double()
    z = x @ embed  # (N, 2)
    off = (x - z @ embed.T).pow(2).sum(1).mean().sqrt()
    finite = bool(torch.isfinite(x).all())
    return {
        "sw": sliced_wasserstein(z, data_z).item() if finite else float("inf"),
        "off": off.item() if finite else float("inf"),
    }


def data_and_floor(ring: Ring, n: int, seed: int) -> tuple[torch.Tensor, list[float]]:
    """The N data points [N, 2] that samples are compared with, and the sliced W2 of FLOOR_DRAWS other data
    samples of size N to them: the distance that sampling alone leaves."""
    g = torch.Generator().manual_seed(seed)
    data_z = ring.sample(n, g)  # (N, 2)
    return data_z, [sliced_wasserstein(ring.sample(n, g), data_z).item() for _ in range(FLOOR_DRAWS)]


def run(
    dims: list[int],
    *,
    steps: int,
    batch: int,
    width: int,
    weightings: list[str],
    n: int,
    sample_steps: int,
    seed: int,
    log=print,
) -> dict:
    ring = Ring()
    data_z, floor = data_and_floor(ring, n, seed)
    out = {
        "dims": dims,
        "targets": TARGETS,
        "steps": steps,
        "batch": batch,
        "width": width,
        "depth": 4,
        "weightings": weightings,
        "n": n,
        "sample_steps": sample_steps,
        "seed": seed,
        "schedule": SCHEDULE,
        "sw_floor": floor,
        "exact": {},
        "results": {w: {} for w in weightings},
    }
    for dim in dims:
        embed = random_embedding(dim, torch.Generator().manual_seed(seed + dim))  # (D, 2) float64
        exact = lambda x, t: mixture_x0(x.double(), t, ring, SCHEDULE, embed).float()  # noqa: E731
        out["exact"][str(dim)] = quality(
            sample(exact, "x0", dim, n, sample_steps, torch.Generator().manual_seed(seed)), embed, data_z
        )
        done = {}  # (target, weighting in x0 terms) -> result: a run that another loss name repeats is not redone
        for weighting in weightings:
            res = out["results"][weighting][str(dim)] = {}
            for target in TARGETS:
                same = OWN[target] if weighting == "own" else weighting
                if (target, same) in done:
                    res[target] = {**done[(target, same)], "same_run_as": same}
                    continue
                start = time.time()
                model, loss = train(
                    dim, target, embed, ring, steps=steps, batch=batch, width=width, weighting=same, seed=seed
                )
                model.eval()
                samples = sample(model, target, dim, n, sample_steps, torch.Generator().manual_seed(seed))
                res[target] = {**quality(samples, embed, data_z), "final_loss": loss, "seconds": time.time() - start}
                done[(target, same)] = res[target]
                log(
                    f"D={dim:4d} {weighting:6s} {target:3s}: sw {res[target]['sw']:.3f}  off {res[target]['off']:.3f}  "
                    f"loss {loss:.4f}  ({res[target]['seconds']:.0f} s)"
                )
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims, weightings = data["dims"], data["weightings"]
    fig, axes = plt.subplots(len(weightings), 2, figsize=(10, 3.6 * len(weightings)), squeeze=False)
    for row, weighting in zip(axes, weightings):
        for key, ax, label in (("sw", row[0], "sliced W2 to data (in plane)"), ("off", row[1], "RMS off-plane norm")):
            for i, target in enumerate(TARGETS):
                ys = [data["results"][weighting][str(d)][target][key] for d in dims]
                ax.plot(dims, ys, marker="o", color=f"C{i}", label=f"{target}-prediction")
            ax.plot(
                dims,
                [data["exact"][str(d)][key] for d in dims],
                marker="o",
                ls=":",
                color="gray",
                label="exact denoiser",
            )
            ax.set(
                xscale="log",
                xlabel="ambient dimension D",
                ylabel=label,
                title=f"loss: {'v-loss for all (snr+1)' if weighting == 'snr+1' else 'each its own MSE'}",
            )
            if key == "off":  # 0 for D = 2 and for the exact denoiser: linear below 1e-2
                ax.set_yscale("symlog", linthresh=1e-2)
                ax.set_ylim(bottom=0)
            else:
                ax.set_yscale("log")
            ax.set_xticks(dims, [str(d) for d in dims])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.grid(True, which="both", alpha=0.3)
        row[0].axhspan(
            min(data["sw_floor"]), max(data["sw_floor"]), color="k", alpha=0.15, label="floor: data vs data (range)"
        )
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"2-D ring embedded in D dims: same MLP, {data['steps']} steps per run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(data: dict, command: str) -> str:
    dims, floor = data["dims"], torch.tensor(data["sw_floor"])
    head = (
        "| loss | target | "
        + " | ".join(f"D = {d}" for d in dims)
        + " |\n| --- | --- | "
        + " | ".join("---:" for _ in dims)
        + " |\n"
    )

    def fmt(v):
        return f"{v:.3f}" if v < 1e3 else f"{v:.1e}"

    def table(key):
        rows = [
            f"| {w} | {t} | " + " | ".join(fmt(data["results"][w][str(d)][t][key]) for d in dims) + " |\n"
            for w in data["weightings"]
            for t in TARGETS
        ]
        rows.append("| - | exact denoiser | " + " | ".join(fmt(data["exact"][str(d)][key]) for d in dims) + " |\n")
        return head + "".join(rows)

    return f"""## x0 vs eps vs v prediction in high dimension

Command: `{command}`
Machine: {machine_line(data["machine"])}

The ring of 8 Gaussians embedded in D dimensions by random orthonormal columns; the same MLP (4 x {data["width"]},
SiLU, the same initial weights), {data["steps"]} Adam steps of {data["batch"]} fresh points per run, {data["schedule"]}.
Loss `snr+1`: v-prediction's MSE for every target (only the output changes); `own`: each target's plain MSE.
{data["n"]:,} samples by DPM-Solver++(2M), {data["sample_steps"]} steps, then x0_hat at t_min; the exact denoiser is
sampled the same way (what the sampler alone gives).

Sliced W2 between the in-plane part of the samples and the data. Floor from sampling alone: other data samples of
the same size are at {floor.mean():.3f} +- {floor.std():.3f} (mean +- sd of {len(floor)}, max {floor.max():.3f}).

{table("sw")}
Off-manifold energy, RMS norm of the part outside the data plane (data: 0; the data's in-plane norm is about 1):

{table("off")}
![quality vs D](prediction_targets.png)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 16, 128, 512])
    ap.add_argument("--steps", type=int, default=2000, help="training steps per (D, loss, target) (default 2000)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=256, help="MLP width (default 256)")
    ap.add_argument(
        "--weightings",
        nargs="+",
        default=["snr+1", "own"],
        help="x0-loss weightings shared by all targets ('own': each target's plain MSE)",
    )
    ap.add_argument("--n", type=int, default=4000, help="samples per model (default 4000)")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print the table only; write nothing into docs/")
    ap.add_argument(
        "--rerender", metavar="JSON", help="skip training: redo the floor, table and plot from a saved docs/bench JSON"
    )
    args = ap.parse_args()
    start = time.time()
    if args.rerender:
        data = json.loads(Path(args.rerender).read_text())
        old = data["sw_floor"] if isinstance(data["sw_floor"], list) else [data["sw_floor"]]
        data["sw_floor"] = data_and_floor(Ring(), data["n"], data["seed"])[1]
        assert math.isclose(data["sw_floor"][0], old[0], rel_tol=1e-9), "the floor does not match the saved run"
        options = {k: data[k] for k in ("dims", "steps", "batch", "width", "weightings", "n", "sample_steps", "seed")}
    else:
        data = run(
            args.dims,
            steps=args.steps,
            batch=args.batch,
            width=args.width,
            weightings=args.weightings,
            n=args.n,
            sample_steps=args.sample_steps,
            seed=args.seed,
        )
        data["machine"], data["seconds"] = machine(), time.time() - start
        options = {k: v for k, v in vars(args).items() if k not in ("no_write", "rerender")}
    command = "python bench/prediction_targets.py" + "".join(
        f" --{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in options.items()
        if v != ap.get_default(k)
    )
    md = markdown(data, command)
    print(md)
    if not args.no_write:
        plot(data, DOCS / "prediction_targets.png")
        write_results("prediction_targets", data, md, document="CONTINUOUS.md")
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
