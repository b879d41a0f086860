"""Shared by the per-solver grids (`benchmarks/pnpdm_grid.py`, `benchmarks/sitcom_grid.py`): held-out images,
their measurements made as the main job makes them, and one scored setting of a solver.

Images: Fashion-MNIST test images [first, first + n) (the grids' default 1000 .. 1007), away from the 0 .. 63
the comparison table reports on. One sample per image.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from dps_jax import config_base, data, experiment, metrics, solvers


def held_out(first: int, num_images: int) -> jnp.ndarray:
    """Fashion-MNIST test images [first, first + num_images), (n, H, W, C) in [-1, 1]."""
    return jnp.asarray(data.fashion_mnist("test")[first:first + num_images])


def problems(task: str, images, seed: int = 0):
    """(prior, [(problem, key)] per image) for `task`'s config without its pick of solver."""
    cfg = config_base.task_config(task, pick=False)
    cfg.seed = seed
    shape = images.shape[1:]
    return experiment.load_prior(cfg), [experiment.measure(cfg, x, i, shape) for i, x in enumerate(images)]


def score(prior, measured, images, solver: str, opts: dict) -> dict:
    """Mean PSNR (and its standard error), network evaluations and wall seconds of one setting."""
    runner = solvers.build(prior, images.shape[1:], solver=solver, options=opts, num_samples=1)
    options = runner.options
    t0 = time.time()
    psnr = [metrics.psnr(runner(p, k, options=options)["samples"][0], x) for (p, k), x in zip(measured, images)]
    return {**opts, "evaluations": runner.solver.step_grid(options).evaluations, "psnr": float(np.mean(psnr)),
            "se": float(np.std(psnr, ddof=1) / np.sqrt(len(psnr))), "seconds": time.time() - t0}
