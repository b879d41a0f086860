"""ADMM-TV's weight lambda and penalty rho per task, by grid search on held-out images (as the paper
chose them, Appendix D.2), for the shipped 32 x 32 setting of each task config.

    python benchmarks/admm_tv_grid.py --out benchmarks/admm_tv_grid.json

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

from dps_jax import api, config_base, data, metrics, pipeline, solvers

LINEAR_TASKS = ("super_resolution", "inpainting_box", "inpainting_random", "gaussian_deblur", "motion_deblur")
LAMS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
RHOS = (0.03, 0.1, 0.3, 1.0)


def search(task, images, iterations, lams=LAMS, rhos=RHOS, seed=0):
    cfg = config_base.task_config(task)
    shape = images.shape[1:]
    runner = solvers.build(None, shape, solver="admm_tv", options={"iterations": iterations}, num_samples=1)
    problems = []
    for i, x in enumerate(images):
        k_op, k_noise = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), i))
        op = pipeline.build_operator(cfg, shape, k_op)
        y = api.measure(op, x, k_noise, cfg.noise.name, cfg.noise.sigma, cfg.noise.rate)
        problems.append(solvers.make_problem(op, y, shape, cfg.noise.name))
    rows = []
    for lam, rho in itertools.product(lams, rhos):
        options = solvers.make_options(runner.solver, lam=lam, rho=rho, iterations=iterations)
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
