"""Quality of DPS with the shipped prior against naive baselines, on held-out Fashion-MNIST test images.

    python -m benchmarks.quality --num_images 64 --steps 50 --out benchmarks/quality.json

For each task of the paper (scaled to 32 x 32 as configs/ do: sigma 0.05 Gaussian noise), runs DPS on
`num_images` images of the t10k set (never trained on) and prints PSNR / SSIM next to a naive baseline:
  super_resolution   bicubic upsampling of y
  inpainting_*       y with the hole filled by the mean of the observed pixels
  *_deblur           y itself
  phase_retrieval    Fienup's HIO (`solvers.fienup`, beta 0.9, `--hio_iters` iterations) from 4
                     random starts (figures before 2026-11-23: a local HIO plus 50 error-reduction steps)
DPS draws one sample per image; for phase retrieval DPS draws 4 and keeps the best by PSNR, as the
paper does, and the baseline keeps the best of its 4 starts by PSNR too (the same oracle on both sides).
Results per task are cached in the JSON file, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import config_base, data, experiment, metrics, solvers
from dps_jax import prior as prior_lib


def baseline(task, op, y, image_shape, key, hio_iters):
    if task == "super_resolution":
        return jax.image.resize(y, image_shape, "bicubic")
    if task.startswith("inpainting"):
        m = op.data["mask"]
        fill = jnp.sum(y * m) / jnp.maximum(jnp.sum(m) * y.shape[-1] / m.shape[-1], 1.0)
        return y * m + fill * (1 - m)
    if task.endswith("deblur"):
        return y
    return hio(op, y, image_shape, key, hio_iters)


def hio(op, y, image_shape, key, iters, starts=4):
    """Hybrid input-output (`solvers.fienup`, beta 0.9) from `starts` random starts: (starts, H, W, C)."""
    runner = solvers.build(None, image_shape, solver="hio", options={"steps": iters}, num_samples=starts)
    return runner(solvers.make_problem(op, y, image_shape), key)["samples"]


def run_task(task, images, prior, steps, hio_iters, seed=0):
    cfg = config_base.task_config(task, pick=False)
    cfg.seed, cfg.solver.ps.steps = seed, steps
    cfg.num_samples = 4 if task == "phase_retrieval" else 1
    image_shape = images.shape[1:]
    runner = experiment.build_runner(cfg, prior, image_shape)
    rows = []
    t0 = time.time()
    for i, x in enumerate(images):
        problem, k_s = experiment.measure(cfg, x, i, image_shape)
        op, y = problem.op, problem.y
        k_b = jax.random.fold_in(k_s, 1)
        samples = runner(problem, k_s)["samples"]
        psnrs = [metrics.psnr(s, x) for s in samples]
        best = samples[int(np.argmax(psnrs))]
        base = np.asarray(baseline(task, op, y, image_shape, k_b, hio_iters))
        if base.ndim == 4:      # phase retrieval: several starts, the best by PSNR
            base = base[int(np.argmax([metrics.psnr(b, x) for b in base]))]
        rows.append({"dps_psnr": metrics.psnr(best, x), "dps_ssim": metrics.ssim(best, x),
                     "base_psnr": metrics.psnr(base, x), "base_ssim": metrics.ssim(base, x)})
        print(f"\r{task}: {i + 1}/{len(images)} ({time.time() - t0:.0f}s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {
        "num_images": len(images), "steps": steps, "samples_per_image": cfg.num_samples,
        "scale": cfg.solver.ps.scale, "seconds": time.time() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_images", type=int, default=64)
    ap.add_argument("--first_image", type=int, default=100, help="index of the first t10k image used")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--hio_iters", type=int, default=300)
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--tasks", default=",".join(config_base.TASKS))
    ap.add_argument("--out", default="benchmarks/quality.json")
    args = ap.parse_args()

    prior = prior_lib.load(args.checkpoint or None)
    images = data.fashion_mnist("test", image_size=prior.image_size)[args.first_image:args.first_image + args.num_images]
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    for task in args.tasks.split(","):
        key = f"{task}@{args.num_images}x{args.steps}"
        if key not in results:
            results[key] = run_task(task, images, prior, args.steps, args.hio_iters)
            with open(args.out, "w") as fh:
                json.dump(results, fh, indent=2)
    print(f"{'task':<20} {'DPS PSNR':>9} {'SSIM':>6} {'baseline PSNR':>14} {'SSIM':>6}")
    for task in args.tasks.split(","):
        r = results[f"{task}@{args.num_images}x{args.steps}"]
        print(f"{task:<20} {r['dps_psnr']:9.2f} {r['dps_ssim']:6.3f} {r['base_psnr']:14.2f} {r['base_ssim']:6.3f}")


if __name__ == "__main__":
    main()
