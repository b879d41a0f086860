"""DPS, DDRM and MCGdiff on the Gaussian-mixture benchmark of MCGdiff's authors, beside the figures it published.

    python -m benchmarks.calibration_benchopt --out benchmarks/calibration_benchopt.json

The three problems of gabrielvc/benchopts_inverse_problem_diffusion_prior (torch's seed 27; d_x = 8,
d_y in {1, 2, 4}), as `tools/make_benchopt_gmm.py` wrote them from its own dataset file
(`tests/fixtures/mcgdiff_benchopt_problems.npz`), on its decreasing schedule (`linear_reversed`). Each solver
at that benchmark's settings, in dps_jax's terms: DPS with 100 DDIM steps of eta 0.6 (our respacing "100"
rounds i 999 / 99 where its grid floors it: a timestep apart at most), zeta 1 on the squared residual over the
residual (its step, 2 zeta grad ||r||: our scale 2); DDRM at 100 steps (eta 0.85, eta_b 1, singular values
below 1e-3 counted as 0, as its H functions do); MCGdiff with 32 and 128 particles on its 100 grid times
adapted to A and sigma (`mcgdiff.adapted_timesteps`), eta 0.6, kappa 1e-6 (its gaussian_var).
1,000 samples a run, scored as that benchmark scores them: the max-sliced W_2 over 100 random directions
to 10,000 exact posterior draws (`calibration.max_sliced_wasserstein`); `exact` is 1,000 exact draws scored
the same way (the floor). --repeats runs a row with different seeds; the table gives mean +- std over them,
beside the benchmark's published run and its own code re-run here (`benchmarks/mcgdiff_benchopt.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import api, operators, schedule
from dps_jax.analytic import calibration, gmm
from dps_jax.solvers import mcgdiff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBLEMS = os.path.join(ROOT, "tests", "fixtures", "mcgdiff_benchopt_problems.npz")
REFERENCE = os.path.join(ROOT, "benchmarks", "mcgdiff_benchopt.json")
DIMS = ("1,8", "2,8", "4,8")
NUM, N_REFERENCE, PROJECTIONS = 1000, 10_000, 100
DDRM = "Python-DDRM[ddim_params=(100, 0.6)]"
ROWS = {          # row -> (solver, options, the benchmark's solver of the same settings)
    "ddrm": ("ddrm", {"steps": 100, "eta": 0.85, "eta_b": 1.0, "cutoff": 1e-3}, DDRM),
    # eta_C = 1 as that benchmark sets it (dps_jax ties eta_C to eta, as DDRM's own runner does)
    "ddrm-eta1": ("ddrm", {"steps": 100, "eta": 1.0, "eta_b": 1.0, "cutoff": 1e-3}, DDRM),
    "ps": ("ps", {"steps": 100, "sampler": "ddim", "eta": 0.6, "scale": 2.0},
           "Python-DPS[ddim_params=(100, 0.6),zeta=1.0]"),
    "mcgdiff-32": ("mcgdiff", {"particles": 32, "steps": 100, "eta": 0.6, "kappa": 1e-6, "timesteps": "adapted"},
                   "Python-MCG_Diff[ddim_params=(100, 0.6),n_particles=32]"),
    "mcgdiff-128": ("mcgdiff", {"particles": 128, "steps": 100, "eta": 0.6, "kappa": 1e-6, "timesteps": "adapted"},
                    "Python-MCG_Diff[ddim_params=(100, 0.6),n_particles=128]"),
}


def problem(dims: str) -> dict:
    """One problem of the benchmark: its mixture, A, y, sigma, x_0 and the moments of its own exact draws."""
    z = np.load(PROBLEMS)
    p = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(dims + "/")}
    dx = p["means"].shape[1]
    p["mix"] = gmm.make(p["weights"] / p["weights"].sum(), p["means"], np.stack([np.eye(dx)] * len(p["means"])))
    p["sigma"] = float(np.sqrt(p["var"]))
    return p


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="ddrm,ps,mcgdiff-32,mcgdiff-128")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="")
    ap.add_argument("--table", default="", help="print the table of a JSON this command wrote, and stop")
    ap.add_argument("--merge", default="", help="a JSON this command wrote: its rows kept, these added")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.load(open(args.table))))
        return {}
    result = {"command": "python -m benchmarks.calibration_benchopt " + " ".join(argv if argv is not None
                                                                               else sys.argv[1:]),
              "num": NUM, "reference_draws": N_REFERENCE, "projections": PROJECTIONS, "repeats": args.repeats,
              "options": {r: ROWS[r][1] for r in args.rows.split(",")}, "rows": {}, "jax": jax.__version__,
              "machine": f"{platform.machine()}, {jax.devices()[0].platform}", "date": time.strftime("%Y-%m-%d")}
    t_start = time.time()
    for dims in DIMS:
        p = problem(dims)
        dy, dx = p["a"].shape
        shape = (1, dx, 1)
        exact = gmm.posterior(p["mix"], p["a"], p["y"], p["sigma"])
        mean, _ = calibration.moments(exact)
        # our exact posterior against the benchmark's own 10,000 draws (its sampling error: ~0.01 - 0.1 here)
        check = float(np.abs(mean - p["reference_mean"]).max())
        print(f"dims {dims}: sigma {p['sigma']:.4g}, |exact mean - its draws' mean| <= {check:.3f}", flush=True)
        prior = gmm.as_prior(p["mix"], shape, beta_schedule="linear_reversed")
        op = operators.from_callables(lambda x, d: d["a"] @ x.reshape(-1), shape, linear=True,
                                      data={"a": jnp.asarray(p["a"], jnp.float32)})
        for row in ["exact"] + args.rows.split(","):
            values, seconds = [], []
            for rep in range(args.repeats):
                key = jax.random.fold_in(jax.random.PRNGKey(int(dims[0])), rep)
                k_ref, k_proj, k_x = jax.random.split(key, 3)
                ref = np.asarray(gmm.sample(calibration.float32(exact), k_ref, N_REFERENCE)[0])
                t0 = time.perf_counter()
                if row == "exact":
                    x = np.asarray(gmm.sample(calibration.float32(exact), k_x, NUM)[0])
                else:
                    solver, options, _ = ROWS[row]
                    if options.get("timesteps") == "adapted":       # its grid, made for this A and sigma
                        ts = mcgdiff.adapted_timesteps(schedule.build_tables("linear_reversed").alphas_cumprod,
                                                       np.linalg.svd(p["a"], compute_uv=False), p["sigma"],
                                                       options["steps"])
                        options = {**options, "timesteps": ",".join(map(str, ts))}
                    x = api.sample(prior, op, p["y"].astype(np.float32), solver=solver, options=options,
                                   sigma=p["sigma"], num_samples=NUM, image_shape=shape, schedule="linear_reversed",
                                   seed=rep)["samples"].reshape(NUM, -1)
                seconds.append(time.perf_counter() - t0)
                values.append(calibration.max_sliced_wasserstein(x, ref, k_proj, PROJECTIONS)
                              if np.all(np.isfinite(x)) else float("nan"))
            entry = {"max_sliced_w2": values, "seconds": seconds, "mean": float(np.mean(values)),
                     "std": float(np.std(values))}
            result["rows"][f"{row}/{dims}"] = entry
            print(f"  {row:12s} {entry['mean']:7.2f} +- {entry['std']:.2f}", flush=True)
    result["seconds"] = round(time.time() - t_start)
    if args.merge:
        old = json.load(open(args.merge))
        result["merged"] = [{k: v for k, v in old.items() if k != "rows"}] + old.get("merged", [])
        result["options"] = {**old["options"], **result["options"]}
        result["rows"] = {**old["rows"], **result["rows"]}
    print(table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


def theirs(reference: dict, source: str, dims: str, row: str):
    """Mean and std of the benchmark's figures for a row ("published" or "rerun_here"), or None."""
    values = reference[source].get(dims, {}).get(ROWS[row][2], {}).get("max_sliced_w2") if row in ROWS else None
    return {"mean": float(np.mean(values)), "std": float(np.std(values))} if values else None


def table(result) -> str:
    """Markdown: per d_y, the published run / the benchmark's code here / dps_jax (mean +- std)."""
    reference = json.load(open(REFERENCE))
    fmt = lambda e: f"{e['mean']:.2f} ± {e['std']:.2f}" if e else "-"
    lines = ["| solver | " + " | ".join(f"d_y = {d.split(',')[0]}: published / its code here / dps_jax"
                                        for d in DIMS) + " |", "| --- |" + " --- |" * len(DIMS)]
    names = list(dict.fromkeys(k.split("/")[0] for k in result["rows"]))
    for n in names:
        cells = []
        for d in DIMS:
            e = result["rows"].get(f"{n}/{d}")
            cells.append("" if e is None else " / ".join([fmt(theirs(reference, "published", d, n)),
                                                          fmt(theirs(reference, "rerun_here", d, n)), fmt(e)]))
        lines.append(f"| `{n}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
