"""Posterior calibration: how far each diffusion solver's samples are from the exact posterior.

    python -m benchmarks.calibration --out benchmarks/calibration.json --plot docs/calibration.png

The prior is a Gaussian mixture (`dps_jax.analytic.gmm`) whose noise prediction is exact, so every error left is the
solver's. Two test beds:
  toy    4 x 4 x 1 images (D = 16), 3 random components;
  image  16 x 16 x 1 images (D = 256), 4 components with smooth means (flat, disk, gradient, stripes) and
         stationary squared-exponential covariances of different length scales and amplitudes;
and linear tasks with Gaussian noise sigma = 0.05 (one ground truth drawn from the prior per task), whose
exact posterior is again a mixture (`gmm.posterior`). For every solver and NFE, N posterior samples
(vmapped) are scored against it (`dps_jax.analytic.calibration`): RMS error of the posterior mean and of the per-pixel
std, the mixture-weight error (total variation), the sliced Wasserstein distance to exact samples and the
coverage of the truth by per-pixel 90% credible intervals (one truth per task: a coarse figure, see
benchmarks/calibration_protocol.py for coverage over many draws); the "exact" row is N exact samples (the
sampling floor). Every solver runs with its default options (the
paper's or reference code's), the NFE set through each solver's `steps` (DAPS: NFE / 5 annealing levels
of 5 ODE steps, its 1k preset's split).
Cells are saved as they finish; a rerun skips the cells already in --out.
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from benchmarks import plot
from dps_jax import config_base, operators, solvers
from dps_jax.analytic import calibration, gmm

SIGMA = 0.05
SOLVERS = ["vanilla", "ps", "ps_unit", "scoreald", "mcg", "projection", "sdedit", "ddrm", "pigdm", "reddiff",
           "diffpir", "daps"]
NFES = [20, 100, 1000]
TASKS = {
    "toy": {"inpainting": dict(mask_type="random", drop_fraction=(0.5, 0.5)),
            "super_resolution": dict(scale_factor=2)},
    "image": {"inpainting": dict(mask_type="random", drop_fraction=(0.7, 0.7)),
              "super_resolution": dict(scale_factor=4),
              "gaussian_blur": dict(kernel_size=5, intensity=1.5)},
}
SHAPES = {"toy": (4, 4, 1), "image": (16, 16, 1)}


def squared_exponential(shape, length, amplitude):
    h, w, _ = shape
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    p = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    return amplitude ** 2 * np.exp(-0.5 * d2 / length ** 2) + 1e-4 * np.eye(len(p))


def mixture(bed: str) -> gmm.GaussianMixture:
    rng = np.random.default_rng(0)
    shape = SHAPES[bed]
    d = int(np.prod(shape))
    if bed == "toy":
        a = rng.normal(size=(3, d, d)) * 0.15
        return gmm.make([0.5, 0.3, 0.2], rng.uniform(-0.7, 0.7, (3, d)), a @ np.swapaxes(a, 1, 2) + 0.01 * np.eye(d))
    h, w, _ = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    means = np.stack([np.full((h, w), -0.5), np.where(xx ** 2 + yy ** 2 < 0.4, 0.6, -0.6), 0.6 * xx,
                      0.5 * np.sign(np.sin(3 * np.pi * yy))]).reshape(4, -1)
    covs = np.stack([squared_exponential(shape, l, a) for l, a in ((4.0, 0.3), (2.0, 0.2), (1.0, 0.15), (3.0, 0.25))])
    return gmm.make([0.3, 0.3, 0.2, 0.2], means, covs)


def problem_for(bed, task, mix, key):
    shape = SHAPES[bed]
    k_op, k_x, k_n = jax.random.split(key, 3)
    op = operators.build(task, shape, key=k_op, **TASKS[bed][task]) if task == "inpainting" else \
        operators.build(task, shape, **TASKS[bed][task])
    x, _ = gmm.sample(mix, k_x, 1)
    y = op(x[0].reshape(shape)) + SIGMA * jax.random.normal(k_n, op(x[0].reshape(shape)).shape)
    exact = gmm.posterior(mix, gmm.operator_matrix(op, shape), np.asarray(y).reshape(-1), SIGMA)
    return solvers.make_problem(op, y, shape, sigma=SIGMA), exact, np.asarray(x[0])


def nfe_options(solver, nfe):
    """The options that make `solver` spend about `nfe` network evaluations per sample (each cell records
    what it spent: `evaluations`)."""
    if solver == "daps":                                     # levels x 5 ODE steps, as its 1k preset
        return {"steps": max(1, nfe // 5), "ode_steps": 5}
    if solver == "mcgdiff":                                  # 16 particles over nfe / 16 transitions
        return {"particles": 16, "steps": max(2, nfe // 16 + 1)}
    if solver == "pnpdm":                                    # the shipped prior's schedule, iterations scaled
        return {**config_base.PNPDM_SHIPPED, "steps": max(3, round(nfe * 30 / 139))}
    if solver == "sitcom":                                   # its 30 Adam steps a level at most
        return {"steps": max(1, nfe // 30)}
    return {"steps": nfe}


def run_cell(solver, nfe, pr, problem, exact, truth, shape, num, key):
    options = nfe_options(solver, nfe)
    runner = solvers.build(pr, shape, solver=solver, options=options, num_samples=num)
    runner.compile(problem)
    t0 = time.perf_counter()
    out = runner(problem, key)
    seconds = time.perf_counter() - t0
    x = out["samples"].reshape(num, -1)
    if not np.all(np.isfinite(x)):
        return {"diverged": True, "seconds": seconds}
    return {**calibration.compare(x, exact, jax.random.fold_in(key, 1)), "seconds": seconds,
            "coverage90": calibration.coverage(x, truth), "evaluations": runner.evaluations}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/calibration.json")
    ap.add_argument("--plot", default="docs/calibration.png")
    ap.add_argument("--num", type=int, default=1000, help="posterior samples per cell")
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--nfes", default=",".join(map(str, NFES)))
    ap.add_argument("--beds", default="toy,image")
    args = ap.parse_args()
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    meta = {"sigma": SIGMA, "num": args.num, "device": str(jax.devices()[0]), "jax": jax.__version__}
    results["meta"] = meta
    for bed in args.beds.split(","):
        mix = mixture(bed)
        pr = gmm.as_prior(mix, SHAPES[bed])
        for t, task in enumerate(TASKS[bed]):
            name = f"{bed}/{task}"
            # the task's index alone picks its truth and noise: a bed run on its own gives the same problem
            problem, exact, truth = problem_for(bed, task, mix, jax.random.PRNGKey(t))
            cells = results.setdefault(name, {})
            cells.setdefault("exact", calibration.floor(exact, args.num, jax.random.PRNGKey(7)))
            if "coverage90" not in cells["exact"]:          # added 2026-12-03: exact draws' coverage of the truth
                draws = gmm.sample(calibration.float32(exact), jax.random.PRNGKey(8), args.num)[0]
                cells["exact"]["coverage90"] = calibration.coverage(np.asarray(draws), truth)
            for solver in args.solvers.split(","):
                for nfe in map(int, args.nfes.split(",")):
                    cell = f"{solver}@{nfe}"
                    if cell in cells:
                        continue
                    try:
                        cells[cell] = run_cell(solver, nfe, pr, problem, exact, truth, SHAPES[bed], args.num,
                                               jax.random.PRNGKey(1))
                    except ValueError as e:          # a pair the solver refuses, or an NFE it cannot take
                        cells[cell] = {"n/a": str(e).splitlines()[0]}
                    print(f"{name:<28}{cell:<18}" + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                             for k, v in cells[cell].items()), flush=True)
                    tmp = args.out + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(results, f, indent=1)
                    os.replace(tmp, args.out)
    print(table(results))
    print("\nSliced W2 to the exact posterior:\n" + compact_table(results))
    print("\nRMS error of the posterior mean:\n" + compact_table(results, "mean_error"))
    if args.plot:
        plot_results(results, args.plot)


def table(results) -> str:
    """Markdown: per task, each solver's SW distance and mean error at every NFE, and the exact floor."""
    lines = []
    for name, cells in results.items():
        if name == "meta":
            continue
        nfes = sorted({int(c.split("@")[1]) for c in cells if "@" in c})
        lines += [f"\n**{name}** (exact samples: SW {cells['exact']['sliced_wasserstein']:.3f}, mean error "
                  f"{cells['exact']['mean_error']:.3f}, std error {cells['exact']['std_error']:.3f}, weight error "
                  f"{cells['exact']['weight_error']:.3f})\n",
                  "| solver | " + " | ".join(f"SW / mean / std / weight err @ {n} NFE" for n in nfes) + " |",
                  "| --- | " + " | ".join("---" for _ in nfes) + " |"]
        solvers_here = list(dict.fromkeys(c.split("@")[0] for c in cells if "@" in c))
        for s in solvers_here:
            row = []
            for n in nfes:
                c = cells.get(f"{s}@{n}", {})
                if "n/a" in c:
                    row.append("n/a")
                elif c.get("diverged"):
                    row.append("diverged")
                elif c:
                    row.append(f"{c['sliced_wasserstein']:.3f} / {c['mean_error']:.3f} / {c['std_error']:.3f} / "
                               f"{c['weight_error']:.2f}")
                else:
                    row.append("")
            lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def compact_table(results, metric="sliced_wasserstein") -> str:
    """Markdown: one row per solver, one column per task and NFE, the metric (SW_2 by default); the first row
    is the exact-sample floor."""
    names = [n for n in results if n != "meta"]
    cols = [(n, nfe) for n in names for nfe in sorted({int(c.split("@")[1]) for c in results[n] if "@" in c})]
    solvers_all = list(dict.fromkeys(c.split("@")[0] for n in names for c in results[n] if "@" in c))
    head = "| solver | " + " | ".join(f"{n} @{nfe}" for n, nfe in cols) + " |"
    lines = [head, "| --- |" + " --- |" * len(cols),
             "| exact samples | " + " | ".join(f"{results[n]['exact'][metric]:.3f}" for n, _ in cols) + " |"]
    for s in solvers_all:
        row = []
        for n, nfe in cols:
            c = results[n].get(f"{s}@{nfe}", {})
            row.append("n/a" if "n/a" in c else "diverged" if c.get("diverged") else
                       f"{c[metric]:.3g}" if metric in c else "")
        lines.append(f"| `{s}` | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_results(results, path):
    panels = []
    for name, cells in results.items():
        if name == "meta":
            continue
        series = {}
        for cell, v in cells.items():
            if "@" in cell and "sliced_wasserstein" in v:
                s, n = cell.split("@")
                series.setdefault(s, []).append((int(n), v["sliced_wasserstein"]))
        panels.append((name, {k: sorted(v) for k, v in series.items()}, cells["exact"]["sliced_wasserstein"]))
    plot.panels(panels, path, xlabel="NFE", ylabel="sliced W2 to the exact posterior")


if __name__ == "__main__":
    main()
