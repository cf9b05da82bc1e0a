"""ODE samplers vs NFE on a 2-D Gaussian mixture whose denoiser is exact: every error is the sampler's own.

    python bench/ode_samplers.py

Data: the ring of 8 Gaussians of bench/toy_mixture.py (radius 1, std 0.1), DDPM's vp-linear schedule; the
denoiser is the exact E[x0 | x_t] (``mixture_x0``, target x0), so there is no training noise. From the same N
starting points x_1 ~ N(0, I) each sampler of ``dlm.samplers.ode`` (DDIM with eta = 0, DPM-Solver++(2M), Heun and
Euler on the probability-flow ODE; all four solve the same ODE) integrates from t = 1 to t_min = 1e-3 with a given
number of model calls (NFE; Heun makes 2 per step, so it gets NFE // 2 steps), on two grids: uniform in t and
uniform in lambda = log(alpha / sigma). Two errors:

- solution error: the RMS over samples of ||x_hat - x_ref||, where x_ref solves the same ODE from the same start
  with a reference solver (Heun, ``--ref-steps`` steps on the lambda grid); the reference's own error is estimated
  as its distance to the solve with half as many steps and reported beside;
- distribution error: the sliced 2-Wasserstein distance between the N samples and N exact draws of the noisy
  marginal at t_min (the mixture convolved with N(0, sigma_{t_min}^2 I)). It has a floor from sampling alone: the
  same distance from 8 other independent exact draws of size N (mean and spread reported), and the reference
  solve's own distance. The JSON also holds ``sw_to_ref``, the sliced distance to the reference solve's N points,
  which has no such floor.

The observed order is the least-squares slope of -log(solution error) against log(NFE) for NFE >= 10. Writes
docs/bench/ode_samplers.json, docs/ode_samplers.png and the ode_samplers section of docs/CONTINUOUS.md;
``--rerender docs/bench/ode_samplers.json`` redoes the table and plot from a saved run.
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
from toy_mixture import Ring, mixture_x0, sliced_wasserstein  # noqa: E402

from dlm.noise.gaussian import add_noise, get_gaussian_schedule  # noqa: E402
from dlm.samplers.ode import ODE_SAMPLERS, time_grid  # noqa: E402

SAMPLERS = ["ddim", "dpmpp-2m", "heun", "euler"]
SPACINGS = ["lambda", "time"]
NFES = [5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50]
TABLE_NFES = [6, 10, 20, 50]
T_MAX, T_MIN = 1.0, 1e-3
FLOOR_DRAWS = 8


def steps_for(sampler: str, nfe: int) -> int:
    """Steps that spend at most ``nfe`` model calls (Heun: 2 a step)."""
    return max(1, nfe // 2) if sampler == "heun" else nfe


def solve(sampler: str, x: torch.Tensor, steps: int, spacing: str, ring: Ring, schedule) -> tuple[torch.Tensor, int]:
    """Integrate the PF-ODE from T_MAX to T_MIN with the exact denoiser: (x at T_MIN [N, 2], nfe)."""
    times = time_grid(steps, schedule=schedule, t_max=T_MAX, t_min=T_MIN, spacing=spacing)
    denoiser = lambda x, t: mixture_x0(x, t, ring, schedule)  # noqa: E731
    return ODE_SAMPLERS.get(sampler)(denoiser, x.clone(), times, schedule=schedule, target="x0")


def observed_order(nfes: list[int], errors: list[float], min_nfe: int = 10) -> float:
    """Least-squares slope of -log(error) on log(NFE) over NFE >= min_nfe (nan with fewer than 2 such points)."""
    pts = [(math.log(n), math.log(e)) for n, e in zip(nfes, errors) if n >= min_nfe and 0 < e < math.inf]
    if len({x for x, _ in pts}) < 2:
        return float("nan")
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return -sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)


def run(n: int, ref_steps: int, nfes: list[int], seed: int, schedule_name: str = "vp-linear") -> dict:
    schedule, ring = get_gaussian_schedule(schedule_name), Ring()
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 2, generator=g, dtype=torch.float64)  # (N, 2): the common start at t = 1
    t_min = torch.full((n,), T_MIN, dtype=torch.float64)
    exact = [add_noise(ring.sample(n, g), t_min, schedule, g)[0] for _ in range(1 + FLOOR_DRAWS)]  # (N, 2) each
    start = time.time()
    ref, _ = solve("heun", x1, ref_steps, "lambda", ring, schedule)  # (N, 2)
    half, _ = solve("heun", x1, ref_steps // 2, "lambda", ring, schedule)
    out = {
        "n": n,
        "seed": seed,
        "schedule": schedule_name,
        "t_max": T_MAX,
        "t_min": T_MIN,
        "ring": {"components": ring.components, "radius": ring.radius, "std": ring.std},
        "reference": {
            "sampler": "heun",
            "spacing": "lambda",
            "steps": ref_steps,
            "error_vs_half_steps": (ref - half).norm(dim=1).pow(2).mean().sqrt().item(),
            "sw_to_exact": sliced_wasserstein(ref, exact[0]).item(),
            "seconds": time.time() - start,
        },
        "sw_floor": [sliced_wasserstein(e, exact[0]).item() for e in exact[1:]],
        "runs": [],
    }
    for sampler in SAMPLERS:
        for spacing in SPACINGS:
            row = {"sampler": sampler, "spacing": spacing, "nfe": [], "solution_error": [], "sw": [], "sw_to_ref": []}
            for nfe in nfes:
                x, used = solve(sampler, x1, steps_for(sampler, nfe), spacing, ring, schedule)
                err = (x - ref).norm(dim=1).pow(2).mean().sqrt()
                row["nfe"].append(used)
                row["solution_error"].append(err.item() if torch.isfinite(err) else float("inf"))
                finite = bool(torch.isfinite(x).all())
                row["sw"].append(sliced_wasserstein(x, exact[0]).item() if finite else float("inf"))
                row["sw_to_ref"].append(sliced_wasserstein(x, ref).item() if finite else float("inf"))
            row["order"] = observed_order(row["nfe"], row["solution_error"])
            out["runs"].append(row)
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = dict(zip(SAMPLERS, ["C0", "C1", "C2", "C3"]))
    for row in data["runs"]:
        style = "-" if row["spacing"] == "lambda" else "--"
        label = f"{row['sampler']} ({row['spacing']} grid)"
        for ax, key in zip(axes, ("solution_error", "sw")):
            ax.loglog(row["nfe"], row[key], style, marker="o", ms=3, color=colors[row["sampler"]], label=label)
    axes[0].axhline(data["reference"]["error_vs_half_steps"], color="gray", lw=0.8, ls=":", label="reference error")
    lo, hi = min(data["sw_floor"]), max(data["sw_floor"])
    floor = axes[1].axhspan(lo, hi, color="gray", alpha=0.25, label="floor: other exact samples (range)")
    ref = axes[1].axhline(data["reference"]["sw_to_exact"], color="k", lw=0.8, ls=":", label="reference solve")
    axes[1].legend(handles=[floor, ref], fontsize=7)
    axes[0].set(xlabel="NFE", ylabel="RMS ||x - x_ref|| at t_min", title="error against the exact ODE solution")
    axes[1].set(xlabel="NFE", ylabel="sliced W2 to exact samples", title="error of the sample distribution")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks([5, 10, 20, 50], ["5", "10", "20", "50"])
        ax.minorticks_off()
    axes[0].legend(fontsize=7, ncol=2, loc="lower left")
    fig.suptitle(f"Exact denoiser of an 8-Gaussian ring, {data['schedule']}, N = {data['n']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(data: dict, command: str) -> str:
    cols = [n for n in TABLE_NFES if n in NFES]

    def cell(row, key, nfe):
        i = NFES.index(nfe)
        v = row[key][i]
        star = "" if row["nfe"][i] == nfe else f" ({row['nfe'][i]})"
        return f"{v:.2e}{star}"

    head = "| sampler | grid | " + " | ".join(f"NFE {n}" for n in cols) + " | order |\n"
    head += "| --- | --- | " + " | ".join("---:" for _ in cols) + " | ---: |\n"
    sol = head + "".join(
        f"| {r['sampler']} | {r['spacing']} | "
        + " | ".join(cell(r, "solution_error", n) for n in cols)
        + f" | {r['order']:.2f} |\n"
        for r in data["runs"]
    )
    sw = "| sampler | grid | " + " | ".join(f"NFE {n}" for n in cols) + " |\n"
    sw += "| --- | --- | " + " | ".join("---:" for _ in cols) + " |\n"
    sw += "".join(
        f"| {r['sampler']} | {r['spacing']} | " + " | ".join(cell(r, "sw", n) for n in cols) + " |\n"
        for r in data["runs"]
    )
    ref = data["reference"]
    floor = torch.tensor(data["sw_floor"])
    return f"""## ODE samplers vs NFE (exact mixture denoiser)

Command: `{command}`
Machine: {machine_line(data["machine"])}

The ring of 8 Gaussians (radius {data["ring"]["radius"]}, std {data["ring"]["std"]}) in 2-D, {data["schedule"]}
schedule, the exact posterior mean as the denoiser (no training), {data["n"]:,} common starting points, t from
{data["t_max"]:g} to {data["t_min"]:g}. Reference: Heun with {ref["steps"]} steps on the lambda grid (its distance to
the {ref["steps"] // 2}-step solve: {ref["error_vs_half_steps"]:.1e}). Heun spends 2 calls a step: a figure in
brackets is the NFE it actually used. Order: slope of -log(error) on log(NFE) for NFE >= 10 (2 = second order).

Solution error, RMS ||x - x_ref|| at t_min:

{sol}
Sliced W2 to {data["n"]:,} exact samples of the marginal at t_min. Floor from sampling alone: other exact samples of
the same size are at {floor.mean():.2e} +- {floor.std():.1e} (mean +- sd of {len(floor)}), the reference solve
at {ref["sw_to_exact"]:.2e}.

{sw}
![error vs NFE](ode_samplers.png)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="number of samples (default 20000)")
    ap.add_argument("--ref-steps", type=int, default=1000, help="Heun steps of the reference solve (default 1000)")
    ap.add_argument("--schedule", default="vp-linear", help="Gaussian schedule (default vp-linear)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print the table only; write nothing into docs/")
    ap.add_argument("--rerender", metavar="JSON", help="skip the runs: redo the table and plot from a saved JSON")
    args = ap.parse_args()
    start = time.time()
    if args.rerender:
        data = json.loads(Path(args.rerender).read_text())
        options = {
            "n": data["n"],
            "ref_steps": data["reference"]["steps"],
            "schedule": data["schedule"],
            "seed": data["seed"],
        }
    else:
        data = run(args.n, args.ref_steps, NFES, args.seed, args.schedule)
        data["machine"], data["seconds"] = machine(), time.time() - start
        options = {k: v for k, v in vars(args).items() if k not in ("no_write", "rerender")}
    command = "python bench/ode_samplers.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in options.items() if v != ap.get_default(k)
    )
    md = markdown(data, command)
    print(md)
    if not args.no_write:
        plot(data, DOCS / "ode_samplers.png")
        write_results("ode_samplers", data, md, document="CONTINUOUS.md")
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
