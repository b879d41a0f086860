"""ADMM-TV's weight lambda and penalty rho per task, by grid search on held-out images (as the paper
chose them, Appendix D.2), for the shipped 32 x 32 setting of each task config.

    python -m benchmarks.admm_tv_grid --out benchmarks/admm_tv_grid.json

Images: Fashion-MNIST test images [first, first + n) (default 1000 .. 1015), away from the images the
quality benchmarks and the comparison table report on (0 .. 63). Each task's measurement is made as the
main job makes it (the config's operator and noise). Prints mean PSNR per (lambda, rho) and the best pair
per task; the task configs carry the best pairs (`solver.admm_tv`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import config_base, data, experiment, metrics, solvers

LINEAR_TASKS = ("super_resolution", "inpainting_box", "inpainting_random", "gaussian_deblur", "motion_deblur")
LAMS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
RHOS = (0.03, 0.1, 0.3, 1.0)


def search(task, images, iterations, lams=LAMS, rhos=RHOS, seed=0):
    cfg = config_base.task_config(task, pick=False)
    cfg.seed = seed
    shape = images.shape[1:]
    runner = solvers.build(None, shape, solver="admm_tv", options={"steps": iterations}, num_samples=1)
    problems = [experiment.measure(cfg, x, i, shape)[0] for i, x in enumerate(images)]
    rows = []
    for lam, rho in itertools.product(lams, rhos):
        options = solvers.make_options(runner.solver, lam=lam, rho=rho, steps=iterations)
        psnr = [metrics.psnr(runner(p, jax.random.PRNGKey(0), options=options)["samples"][0], x)
                for p, x in zip(problems, images)]
        rows.append({"lam": lam, "rho": rho, "psnr": float(np.mean(psnr))})
        print(f"{task} lam {lam:<6g} rho {rho:<4g} PSNR {rows[-1]['psnr']:.2f}", flush=True)
    best = max(rows, key=lambda r: r["psnr"])
    print(f"{task}: best lam {best['lam']:g} rho {best['rho']:g} ({best['psnr']:.2f} dB)", flush=True)
    return {"grid": rows, "best": best}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first", type=int, default=1000)
    ap.add_argument("--num_images", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--tasks", default=",".join(LINEAR_TASKS))
    ap.add_argument("--lams", default=",".join(map(str, LAMS)))
    ap.add_argument("--rhos", default=",".join(map(str, RHOS)))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    images = data.fashion_mnist("test")[args.first:args.first + args.num_images]
    lams, rhos = [float(v) for v in args.lams.split(",")], [float(v) for v in args.rhos.split(",")]
    tasks = {}
    for t in args.tasks.split(","):
        t0 = time.time()
        tasks[t] = dict(search(t, jnp.asarray(images), args.iterations, lams, rhos), seconds=time.time() - t0,
                        date=time.strftime("%Y-%m-%d"), images=[args.first, args.first + len(images)],
                        iterations=args.iterations)
    result = {"tasks": tasks}
    if args.out and os.path.exists(args.out):       # merge: tasks not run now keep their rows
        with open(args.out) as fh:
            result = {"tasks": {**json.load(fh)["tasks"], **tasks}}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
