"""One posterior through every kind of prior: is calibration unchanged when the same exact denoiser is written as
a discrete VP, continuous VP, VE or EDM network in each of its parametrisations?

    python -m benchmarks.calibration_priors --out benchmarks/calibration_priors.json

The test beds and tasks of benchmarks/calibration.py (Gaussian-mixture priors, linear tasks, sigma 0.05, exact
posteriors). The mixture's exact D(x; sigma) becomes the network of each (process, parametrisation) through
`dps_jax.analytic.networks`; each solver then runs with the same key on every kind. Per cell: the calibration
figures against the exact posterior, and the largest difference of its samples from the discrete VP epsilon
network's (what the paper's checkpoints are). Cells are saved as they finish; a rerun skips those in --out.
"""

import argparse
import json
import os
import sys

import jax
import numpy as np

from benchmarks import calibration as bench
from dps_jax import experiment, prior as prior_lib, solvers
from dps_jax.analytic import calibration, gmm, networks

KINDS = [(p, m) for p in prior_lib.PROCESSES for m in prior_lib.PARAMETRISATIONS[p] if m != "previous_x"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/calibration_priors.json")
    ap.add_argument("--num", type=int, default=1000, help="posterior samples per cell")
    ap.add_argument("--solvers", default="ps,daps,ddrm")
    ap.add_argument("--nfe", type=int, default=100)
    ap.add_argument("--beds", default="toy,image")
    ap.add_argument("--tasks", default="", help="comma-separated tasks of the beds to run (default: all)")
    args = ap.parse_args()
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    meta = results.setdefault("meta", {})
    command = " ".join(["python -m benchmarks.calibration_priors"] + sys.argv[1:])
    meta.update({"sigma": bench.SIGMA, "num": args.num, "nfe": args.nfe, "device": str(jax.devices()[0]),
                 "jax": jax.__version__, "commit": experiment.git_commit(),
                 "commands": sorted(set(meta.get("commands", [])) | {command})})
    for bed in args.beds.split(","):
        mix = bench.mixture(bed)
        shape = bench.SHAPES[bed]
        for t, task in enumerate(bench.TASKS[bed]):
            name = f"{bed}/{task}"
            if args.tasks and task not in args.tasks.split(","):
                continue
            problem, exact, truth = bench.problem_for(bed, task, mix, jax.random.PRNGKey(t))
            cells = results.setdefault(name, {})
            cells.setdefault("exact", calibration.floor(exact, args.num, jax.random.PRNGKey(7)))
            for solver in args.solvers.split(","):
                reference = None
                for process, mean_type in KINDS:
                    cell = f"{solver}/{process}/{mean_type}"
                    pr = networks.as_prior(gmm.denoiser, mix, process, mean_type, shape)
                    if cell not in cells or reference is None:
                        runner = solvers.build(pr, shape, solver=solver,
                                                     options=bench.nfe_options(solver, args.nfe), num_samples=args.num)
                        x = np.asarray(runner(problem, jax.random.PRNGKey(1))["samples"]).reshape(args.num, -1)
                        if reference is None:
                            reference = x
                        if cell not in cells:
                            cells[cell] = {**calibration.compare(x, exact, jax.random.fold_in(jax.random.PRNGKey(1), 1)),
                                           "coverage90": calibration.coverage(x, truth),
                                           "max_abs_diff_from_discrete_eps": float(np.abs(x - reference).max())}
                    print(f"{name:<26}{cell:<30}" + "  ".join(f"{k} {v:.3g}" for k, v in cells[cell].items()),
                          flush=True)
                    tmp = args.out + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(results, f, indent=1)
                    os.replace(tmp, args.out)
    print(table(results))


def table(results) -> str:
    """Markdown: per task and solver, SW2 / mean error / coverage of every kind, and the largest sample difference."""
    lines = ["| task | solver | kinds | sliced W2 (min-max) | mean error (min-max) | 90% coverage (min-max) | "
             "largest sample difference | exact floor SW2 |", "|---|---|---|---|---|---|---|---|"]
    for name, cells in results.items():
        if name == "meta" or not isinstance(cells, dict):
            continue
        solvers = sorted({c.split("/")[0] for c in cells if c != "exact"})
        for solver in solvers:
            rows = [v for c, v in cells.items() if c.startswith(solver + "/")]
            span = lambda k: f"{min(r[k] for r in rows):.4f} - {max(r[k] for r in rows):.4f}"
            lines.append(f"| {name} | {solver} | {len(rows)} | {span('sliced_wasserstein')} | {span('mean_error')} | "
                         f"{span('coverage90')} | {max(r['max_abs_diff_from_discrete_eps'] for r in rows):.1e} | "
                         f"{cells['exact']['sliced_wasserstein']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
