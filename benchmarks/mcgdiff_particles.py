"""MCGdiff converging to the exact posterior as its particles grow, on MCGdiff's Gaussian-mixture test bed.

    python -m benchmarks.mcgdiff_particles --out benchmarks/mcgdiff_particles.json

The prior: 25 unit Gaussians with means on a 5 x 5 grid of spacing 8 and random weights (MCGdiff's bed, in
2-D so that the exact posterior can be seen); one noisy linear measurement y = a^T x + 0.5 n. Every
solver draws `--num` posterior samples at `--steps` steps; each row is scored against the exact posterior
(`dps_jax.analytic.calibration`): the error of the modes' shares (total variation) and the sliced
Wasserstein distance to as many exact draws, both averaged over `--seeds` seeds; the `exact` row is exact
draws scored the same way (the sampling floor). DPS and DDRM at the same step count for reference.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import api, operators
from dps_jax.analytic import calibration, gmm

PARTICLES = (1, 2, 4, 8, 16, 32, 64, 128)


def bed():
    """(prior, operator, y, exact posterior, sigma, image shape) of the 2-D 25-mode problem."""
    rng = np.random.default_rng(0)
    means = np.array([[8.0 * i, 8.0 * j] for i in range(-2, 3) for j in range(-2, 3)])
    weights = rng.standard_normal(25) ** 2
    mix = gmm.make(weights / weights.sum(), means, np.stack([np.eye(2)] * 25))
    shape, a, sigma = (1, 2, 1), np.array([[1.0, 0.3]]), 0.5
    op = operators.from_callables(lambda x: (jnp.asarray(a, jnp.float32) @ x.reshape(-1)).reshape(1, 1, 1), shape,
                                  linear=True)
    y = np.array([[[0.3]]], np.float32)
    return gmm.as_prior(mix, shape), op, y, gmm.posterior(mix, a, y.reshape(-1), sigma), sigma, shape


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=500, help="posterior samples per row and seed")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    prior, op, y, exact, sigma, shape = bed()
    runs = [("exact", None)] + [("mcgdiff", p) for p in PARTICLES] + [("ps", None), ("ddrm", None)]
    rows = []
    for solver, particles in runs:
        tv, sw, t0 = [], [], time.perf_counter()
        for seed in range(args.seeds):
            key = jax.random.PRNGKey(100 + seed)
            if solver == "exact":
                r = calibration.floor(exact, args.num, key)
            else:
                options = {"steps": args.steps, **({"particles": particles} if particles else {}),
                           **({"scale": 1.0} if solver == "ps" else {})}
                out = api.sample(prior, op, y, solver=solver, options=options, sigma=sigma, num_samples=args.num,
                                 image_shape=shape, seed=seed)
                r = calibration.compare(jnp.asarray(out["samples"].reshape(args.num, -1)), exact, key)
            tv.append(r["weight_error"])
            sw.append(r["sliced_wasserstein"])
        row = {"solver": solver, "particles": particles, "weight_error": float(np.mean(tv)),
               "sliced_wasserstein": float(np.mean(sw)), "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"{solver:8s} {str(particles or ''):>4s}  modes' shares off by {row['weight_error']:.3f}  "
              f"sliced W2 {row['sliced_wasserstein']:.3f}  ({row['seconds']} s)", flush=True)
    result = {"command": "python -m benchmarks.mcgdiff_particles " + " ".join(argv if argv is not None else []),
              "num": args.num, "steps": args.steps, "seeds": args.seeds, "rows": rows,
              "jax": jax.__version__, "machine": f"{platform.machine()}, {jax.devices()[0].platform}",
              "date": time.strftime("%Y-%m-%d")}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
