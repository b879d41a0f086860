"""The README's pictures: unconditional samples of the shipped prior, and one DPS result per task.

    python -m benchmarks.figures --out docs/

Per task: a row of label | measurement | 4 posterior samples | posterior mean | per-pixel std,
for one held-out test image, with each task's default config.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import api, config_base, data, experiment, io, operators


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs")
    ap.add_argument("--image", type=int, default=300, help="index of the t10k test image")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    prior = api.load_prior()

    res = api.sample(prior, operators.build("identity", (32, 32, 1)), jnp.zeros((32, 32, 1)), solver="vanilla",
                     options={"steps": 50}, num_samples=32, seed=0)
    io.save_png(os.path.join(args.out, "prior_samples.png"), io.grid(res["samples"], columns=16), scale=3)

    x = data.fashion_mnist("test")[args.image]
    rows = []
    for t, task in enumerate(config_base.TASKS):
        cfg = config_base.task_config(task, pick=False)         # DPS, 50 steps, the task's tuned zeta
        cfg.seed, cfg.num_samples = t, 4
        exp = experiment.setup(cfg, prior)
        problem, key = exp.measure(x, 0)
        op, y = problem.op, problem.y
        out = exp.runner(problem, key)
        s = out["samples"]
        shown = jax.image.resize(op.display(y), (32, 32, 1), "nearest")
        rows.append(np.stack([x, np.asarray(shown), *s, s.mean(0), io.normalise(s.std(0))]))
        print(task, file=sys.stderr)
    io.save_png(os.path.join(args.out, "dps_tasks.png"), io.grid(np.concatenate(rows), columns=8), scale=3)


if __name__ == "__main__":
    main()
