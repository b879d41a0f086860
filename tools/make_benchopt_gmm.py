"""MCGdiff's authors' Gaussian-mixture benchmark: its three problems, its published figures, and its solvers
re-run here (gabrielvc/benchopts_inverse_problem_diffusion_prior, a benchopt benchmark; commit 59559eb).

    pip install torch==2.13.0 numpy pot tqdm
    python -m tools.make_benchopt_gmm --benchopt BENCHOPT_PATH --mcg_diff MCG_DIFF_PATH \
        --out benchmarks/mcgdiff_benchopt.json --problems benchmarks/mcgdiff_benchopt_problems.npz

The benchmark's `datasets/gaussian_mixture.py` draws, from torch's seed 27, one problem per (d_y, d_x) in
(1, 8), (2, 8), (4, 8): 25 unit Gaussians with means (-8 i, -8 j) repeated over the coordinate pairs,
weights z_k^2 normalised, A from a Gaussian matrix's SVD with sorted U(0, 1) singular values, x_0 from the
prior, y = A x_0 + sigma n with sigma = U(0, 1) max(s), 10,000 exact posterior draws, and the decreasing
schedule betas = linspace(0.02, 1e-4, 999) after alphas_cumprod[0] = 1. Its objective scores 1,000 samples by
POT's max-sliced Wasserstein distance (100 random directions) to those draws. Its solvers: DDRM and DPS
(100 DDIM steps, eta 0.6; DPS zeta 1) and MCGdiff (32 and 128 particles, 100 steps on its singular-value
adapted grid, eta 0.6, gaussian_var 1e-6).

Written: --problems, the three problems as dps_jax's benchmark reads them (the mixture, A, y, the noise
variance, x_0, the schedule's alphas_cumprod, the mean and covariance of the benchmark's own 10,000 draws, so
that our exact posterior can be checked against them, and the grid its MCGdiff solver runs on); --out, the
figures of the benchmark's published run (`outputs/*.html`, 2024-03-15, 8-core i7-1185G7: one value per
repetition) and, with --repeats > 0, the same solvers run here by the benchmark's own files (benchopt's
classes replaced by plain stand-ins, torch seeded per repetition), scored by its own objective.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types

import numpy as np

from tools.reference import importable

DIMS = ((1, 8), (2, 8), (4, 8))
SEED, N_REFERENCE = 27, 10_000
HTML = "outputs/benchopts_inverse_problems_diffusion_prior_benchopt_run_2024-03-15_18h27m33.html"


def stand_ins() -> None:
    """benchopt's base classes and import guard, and an empty matplotlib (the objective imports it only for a
    plot it leaves commented out). Each stand-in has a module spec, as torch's import-time scans expect."""
    def module(name):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        return m

    bo = module("benchopt")

    class Base:
        pass

    bo.BaseDataset = bo.BaseObjective = bo.BaseSolver = Base
    bo.safe_import_context = contextlib.nullcontext
    sys.modules["benchopt"] = bo
    mpl = module("matplotlib")
    mpl.pyplot = module("matplotlib.pyplot")
    sys.modules["matplotlib"], sys.modules["matplotlib.pyplot"] = mpl, mpl.pyplot


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_grid(data: dict, torch) -> np.ndarray:
    """The 100 times its MCGdiff solver runs on (`get_optimal_timesteps_from_singular_values`, as it calls it)."""
    from mcg_diff.utils import get_optimal_timesteps_from_singular_values

    s = torch.linalg.svd(data["forward_operator"], full_matrices=True)[1]
    return get_optimal_timesteps_from_singular_values(alphas_cumprod=data["alphas_cumprod"], singular_value=s,
                                                      n_timesteps=100, var=data["observation_noise"],
                                                      mode="else").numpy()


def problem(dataset_module, torch, dims) -> tuple[dict, dict]:
    """(the benchmark's data dict, the arrays dps_jax needs) for one (d_y, d_x), its x_0 caught as drawn."""
    caught = {}
    original = dataset_module.ou_mixt

    def ou_mixt(alpha_t, means, dim, weights):          # the prior (alpha_t = 1) remembers its one draw
        dist = original(alpha_t, means, dim, weights)
        if alpha_t == 1 and "weights" not in caught:
            caught.update(weights=weights.numpy(), means=torch.stack(means).numpy())
            draw = dist.sample

            def sample(*a, **k):
                x = draw(*a, **k)
                caught.setdefault("x0", x.numpy().copy())
                return x
            dist.sample = sample
        return dist

    dataset_module.ou_mixt = ou_mixt
    try:
        ds = dataset_module.Dataset()
        ds.n_samples, ds.random_state, ds.dims = N_REFERENCE, SEED, dims
        data = ds.get_data()
    finally:
        dataset_module.ou_mixt = original
    ref = data["reference_samples"].numpy().astype(np.float64)
    arrays = {"weights": caught["weights"], "means": caught["means"], "x0": caught["x0"],
              "a": data["forward_operator"].numpy(), "y": data["observation"].numpy(),
              "var": np.float64(data["observation_noise"]), "alphas_cumprod": data["alphas_cumprod"].numpy(),
              "reference_mean": ref.mean(0), "reference_cov": np.cov(ref.T)}
    return data, arrays


def published(root: str) -> dict:
    """{dataset: {solver: [value per repetition]}} from the benchmark's published HTML report."""
    html = open(os.path.join(root, HTML)).read()
    start = html.index("window.data = ") + len("window.data = ")
    data, _ = json.JSONDecoder().raw_decode(html[start:])
    out = {}
    for dataset, objectives in data.items():
        dims = tuple(int(v) for v in re.search(r"dims=\((\d+), (\d+)\)", dataset).groups())
        for obj in objectives.values():
            for solver, entry in obj["objective_value"]["solvers"].items():
                out.setdefault(f"{dims[0]},{dims[1]}", {})[solver] = {
                    "max_sliced_w2": entry["scatter"]["y"], "seconds": entry["scatter"]["x"]}
    return out


def rerun(root: str, torch, data: dict, repeats: int) -> dict:
    """The benchmark's solvers at its parameters, `repeats` times each, scored by its objective."""
    objective = load(os.path.join(root, "objective.py"), "benchopt_gmm_objective").Objective()
    objective.set_data(**data)
    runs = {}
    for file, grid in (("ddrm", [{"ddim_params": (100, .6)}]),
                       ("dps", [{"ddim_params": (100, .6), "zeta": 1.0}]),
                       ("mcg_diff", [{"ddim_params": (100, .6), "n_particles": 32},
                                     {"ddim_params": (100, .6), "n_particles": 128}])):
        module = load(os.path.join(root, "solvers", f"{file}.py"), f"benchopt_gmm_{file}")
        for params in grid:
            solver = module.Solver()
            for k, v in params.items():
                setattr(solver, k, v)
            name = module.Solver.name + "[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]"
            solver.set_objective(**objective.get_objective())
            values, seconds = [], []
            for rep in range(repeats):
                torch.manual_seed(rep)
                t0 = time.perf_counter()
                solver.run(0)
                seconds.append(time.perf_counter() - t0)
                values.append(objective.evaluate_result(**solver.get_result())["value"])
            runs[name] = {"max_sliced_w2": values, "seconds": seconds}
            print(f"  {name}: {np.mean(values):.2f} +- {np.std(values):.2f} ({np.mean(seconds):.1f} s)", flush=True)
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchopt", required=True, help="clone of gabrielvc/benchopts_inverse_problem_diffusion_prior")
    ap.add_argument("--mcg_diff", required=True, help="clone of gabrielvc/mcg_diff (its solver imports it)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    stand_ins()
    importable(args.mcg_diff)
    dataset_module = load(os.path.join(args.benchopt, "datasets", "gaussian_mixture.py"), "benchopt_gmm_dataset")
    commit = lambda root: subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True).stdout.strip() or "unknown"
    record = {"reference": "gabrielvc/benchopts_inverse_problem_diffusion_prior", "torch": torch.__version__,
              "reference_commit": commit(args.benchopt), "mcg_diff_commit": commit(args.mcg_diff),
              "command": "python -m tools.make_benchopt_gmm " + " ".join(sys.argv[1:]),
              "published_run": HTML, "published": published(args.benchopt), "rerun_here": {}}
    arrays = {}
    for dims in DIMS:
        data, arr = problem(dataset_module, torch, dims)
        key = f"{dims[0]},{dims[1]}"
        arr["reference_grid"] = reference_grid(data, torch)
        arrays.update({f"{key}/{k}": v for k, v in arr.items()})
        print(f"dims {dims}: sigma^2 {float(arr['var']):.4g}, singular values "
              f"{np.linalg.svd(arr['a'], compute_uv=False).round(3).tolist()}", flush=True)
        if args.repeats:
            record["rerun_here"][key] = rerun(args.benchopt, torch, data, args.repeats)
            record["date"] = time.strftime("%Y-%m-%d")
    np.savez_compressed(args.problems, **arrays)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
