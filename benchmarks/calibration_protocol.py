"""MCGdiff's Gaussian-mixture protocol (Cardoso et al., ICLR 2024): every solver against the exact posterior,
with credible-interval coverage.

    python -m benchmarks.calibration_protocol --out benchmarks/calibration_protocol.json

The bed of MCGdiff's script (gabrielvc/mcg_diff `scripts/viz_gaussian.py`): in dimension dx (8), 25 unit
Gaussians with means (8 i, 8 j) repeated over the coordinate pairs, i, j in -2 .. 2, weights w_k ∝ z_k^2;
A (dy x dx) = U diag(s) V_dy^T from the SVD of a Gaussian matrix with its singular values replaced by
sorted U(0, 1) draws; x_0 from the prior, y = A x_0 + sigma n with sigma = U(0, 1) max(s). One bed per
seed and dy in {1, 2, 4}. Each solver draws 1000 posterior samples (the script's sample size) at 100
network evaluations where its count is a choice (MCGdiff: the script's 128 particles over 100 grid times,
kappa 1e-8 as its `gaussian_var`, so 12,672 evaluations; PnP-DM its reference schedule, 3,032); scored by `dps_jax.analytic.calibration`:
sliced W2 to 1000 exact draws, the modes' shares (total variation), and the coverage of per-coordinate 90%
credible intervals (the samples' 5% and 95% quantiles) of the true x_0 over the seeds' coordinates. The
`exact` row is exact draws scored the same way (the sampling floor; its coverage is 0.9 in expectation).
Rows: mean +- standard error over seeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import api, operators, solvers
from dps_jax.analytic import calibration, gmm

DYS = (1, 2, 4)
NUM = 1000
SOLVERS = {                                # name -> options (100 network evaluations where it is a choice)
    "mcgdiff": {"particles": 128, "steps": 100, "kappa": 1e-8},
    "ps": {"steps": 100, "scale": 1.0},
    "ddrm": {"steps": 100},
    "pigdm": {"steps": 100},
    "tmpd": {"steps": 100, "covariance": "full"},
    "diffpir": {"steps": 100},
    "daps": {"steps": 20, "ode_steps": 5},
    "pnpdm": {},                           # its reference schedule: 100 iterations, 3,032 calls
}


def bed(dx: int, dy: int, seed: int):
    """(mixture, A (dy, dx), y (dy,), sigma, x_0 (dx,)) of one seed, as MCGdiff's script draws them."""
    rng = np.random.default_rng([seed, dy, dx])
    means = np.array([[-8.0 * i, -8.0 * j] * (dx // 2) for i in range(-2, 3) for j in range(-2, 3)])
    weights = rng.standard_normal(25) ** 2
    mix = gmm.make(weights / weights.sum(), means, np.stack([np.eye(dx)] * 25))
    u, _, vt = np.linalg.svd(rng.standard_normal((dy, dx)))
    s = np.sort(rng.uniform(size=dy))[::-1]
    a = u @ np.diag(s) @ vt[:dy]
    x0 = np.asarray(gmm.sample(mix, jax.random.PRNGKey(seed), 1)[0][0], np.float64)
    sigma = float(rng.uniform() * s.max())
    y = a @ x0 + sigma * rng.standard_normal(dy)
    return mix, a, y, sigma, x0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dx", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    shape = (1, args.dx, 1)
    rows = {}
    t_start = time.time()
    for dy in DYS:
        beds = [bed(args.dx, dy, seed) for seed in range(args.seeds)]
        # one operator, its matrix swapped per seed (an argument of the compiled program, not a new program)
        op = operators.from_callables(lambda x, d: (d["a"] @ x.reshape(-1)), shape, linear=True,
                                      data={"a": jnp.zeros((dy, args.dx), jnp.float32)})
        ops = [op.replace(arrays={"a": jnp.asarray(a, jnp.float32)}) for _, a, _, _, _ in beds]
        exacts = [gmm.posterior(mix, a, y, sigma) for mix, a, y, sigma, _ in beds]
        for name in ["exact"] + args.solvers.split(","):
            t0, scores, evaluations = time.perf_counter(), [], None
            for seed, ((mix, a, y, sigma, x0), op_seed, exact) in enumerate(zip(beds, ops, exacts)):
                key = jax.random.PRNGKey(1000 + seed)
                if name == "exact":
                    x = np.asarray(gmm.sample(calibration.float32(exact), key, NUM)[0])
                else:       # api.sample reuses the first seed's compiled program for the others
                    x = api.sample(gmm.as_prior(mix, shape), op_seed, y.astype(np.float32), solver=name,
                                   options=SOLVERS[name], sigma=sigma, num_samples=NUM, image_shape=shape,
                                   seed=1000 + seed)["samples"].reshape(NUM, -1)
                    evaluations = solvers.get(name).step_grid(solvers.make_options(solvers.get(name),
                                                                                   **SOLVERS[name])).evaluations
                if not np.all(np.isfinite(x)):          # a diverged run: counted, kept out of the means
                    scores.append({"diverged": True})
                    continue
                r = calibration.compare(x, exact, jax.random.fold_in(key, 1))
                scores.append({**r, "coverage90": calibration.coverage(x, x0)})
            ok = [s for s in scores if not s.get("diverged")]
            stat = lambda k: (float(np.mean([s[k] for s in ok])) if ok else float("nan"),
                              float(np.std([s[k] for s in ok], ddof=1) / np.sqrt(len(ok))) if len(ok) > 1
                              else float("nan"))
            row = {k: stat(k) for k in ("sliced_wasserstein", "weight_error", "coverage90", "mean_error")}
            row["diverged"] = len(scores) - len(ok)
            row["per_seed"] = scores
            row["seconds"] = round(time.perf_counter() - t0, 1)
            row["evaluations"] = evaluations
            rows[f"{name}/dy{dy}"] = row
            print(f"dy {dy}  {name:8s} SW {row['sliced_wasserstein'][0]:.3f} +- {row['sliced_wasserstein'][1]:.3f}  "
                  f"modes off {row['weight_error'][0]:.3f}  coverage90 {row['coverage90'][0]:.3f}  "
                  f"diverged {row['diverged']}/{len(scores)}  ({row['seconds']} s)", flush=True)
    result = {"command": "python -m benchmarks.calibration_protocol " + " ".join(argv if argv is not None
                                                                               else sys.argv[1:]),
              "dx": args.dx, "dys": list(DYS), "seeds": args.seeds, "num": NUM,
              "solver_options": {k: SOLVERS[k] for k in args.solvers.split(",")}, "rows": rows,
              "seconds": round(time.time() - t_start), "jax": jax.__version__,
              "machine": f"{platform.machine()}, {jax.devices()[0].platform}", "date": time.strftime("%Y-%m-%d")}
    print(table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


def table(result) -> str:
    """Markdown: one row per solver, SW / coverage per dy."""
    names = list(dict.fromkeys(k.split("/")[0] for k in result["rows"]))
    head = "| solver | " + " | ".join(f"dy = {d}: SW2 / modes off / 90% coverage" for d in result["dys"]) + " |"
    lines = [head, "| --- |" + " --- |" * len(result["dys"])]
    for n in names:
        cells = []
        for d in result["dys"]:
            r = result["rows"].get(f"{n}/dy{d}")
            cells.append("" if r is None else f"{r['sliced_wasserstein'][0]:.2f} ± {r['sliced_wasserstein'][1]:.2f} / "
                         f"{r['weight_error'][0]:.2f} / {r['coverage90'][0]:.2f}"
                         + (f" ({r['diverged']} of {result['seeds']} diverged)" if r.get("diverged") else ""))
        lines.append(f"| `{n}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
