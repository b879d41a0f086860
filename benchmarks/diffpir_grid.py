"""DiffPIR's lambda for super-resolution on the shipped prior, by the sweep its SR script runs (lambda in
2..12 with zeta 0.25, 100 steps; yuanzhi-zhu/DiffPIR `main_ddpir_sisr.py`), on held-out images.

    python -m benchmarks.diffpir_grid --out benchmarks/diffpir_grid.json

Images: Fashion-MNIST test images [first, first + n) (default 1000 .. 1007), away from the 0 .. 63 the
quality benchmarks and the comparison table report on; each measurement made as the main job makes it.
Prints mean PSNR per lambda and the best; `configs/super_resolution.py` carries it (`solver.diffpir`).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import config_base, data, experiment, metrics, solvers

LAMS = tuple(float(k) for k in range(2, 13))           # the script's lambda_ * i, i = 2 .. 12, lambda_ = 1
ZETA = 0.25


def search(images, lams=LAMS, zeta=ZETA, steps=100, seed=0):
    cfg = config_base.task_config("super_resolution", pick=False)
    cfg.seed = seed
    shape = images.shape[1:]
    prior = experiment.load_prior(cfg)
    runner = solvers.build(prior, shape, solver="diffpir", options={"steps": steps, "zeta": zeta}, num_samples=1)
    problems = [experiment.measure(cfg, x, i, shape) for i, x in enumerate(images)]
    rows = []
    for lam in lams:
        options = solvers.make_options(runner.solver, lam=lam, zeta=zeta, steps=steps)
        psnr = [metrics.psnr(runner(p, k, options=options)["samples"][0], x) for (p, k), x in zip(problems, images)]
        rows.append({"lam": lam, "zeta": zeta, "psnr": float(np.mean(psnr)),
                     "se": float(np.std(psnr, ddof=1) / np.sqrt(len(psnr)))})
        print(f"lam {lam:<4g} zeta {zeta:g} PSNR {rows[-1]['psnr']:.2f} +- {rows[-1]['se']:.2f}", flush=True)
    best = max(rows, key=lambda r: r["psnr"])
    print(f"best lam {best['lam']:g} ({best['psnr']:.2f} dB)", flush=True)
    return {"grid": rows, "best": best}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first", type=int, default=1000)
    ap.add_argument("--num_images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    images = data.fashion_mnist("test")[args.first:args.first + args.num_images]
    t0 = time.time()
    result = dict(search(jnp.asarray(images), steps=args.steps), seconds=time.time() - t0,
                  date=time.strftime("%Y-%m-%d"), images=[args.first, args.first + len(images)], steps=args.steps,
                  device=jax.devices()[0].device_kind)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
