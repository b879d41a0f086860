"""Shared by the per-solver grids (`benchmarks/pnpdm_grid.py`, `benchmarks/sitcom_grid.py`): held-out images,
their measurements made as the main job makes them, and one scored setting of a solver.

Images: Fashion-MNIST test images [first, first + n) (the grids' default 1000 .. 1007), away from the 0 .. 63
the comparison table reports on. One sample per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
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


def search(task: str, images, solver: str, settings, seed: int = 0) -> dict:
    """Scores each options dict of `settings` on `task`, printing each row and the best (highest mean PSNR)."""
    prior, measured = problems(task, images, seed)
    rows = []
    for opts in settings:
        rows.append(score(prior, measured, images, solver, opts))
        r = rows[-1]
        print(f"{task}: {_label(opts)} ({r['evaluations']} evaluations) PSNR {r['psnr']:.2f} +- {r['se']:.2f}  "
              f"{r['seconds']:.0f} s", flush=True)
    best = max(rows, key=lambda r: r["psnr"])
    print(f"{task}: best {_label({k: best[k] for k in settings[0]})} ({best['psnr']:.2f} dB)", flush=True)
    return {"grid": rows, "best": best}


def _label(opts: dict) -> str:
    return " ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in opts.items())


def parser(doc: str, tasks) -> argparse.ArgumentParser:
    """The options every grid takes: held-out images, tasks, output file."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first", type=int, default=1000)
    ap.add_argument("--num_images", type=int, default=8)
    ap.add_argument("--tasks", default=",".join(tasks))
    ap.add_argument("--out", default="")
    return ap


def run(module: str, argv, args, search_task) -> dict:
    """search_task(task, images) per task of args.tasks; the record (command, rows, date, images, device)
    written to args.out when given."""
    images = held_out(args.first, args.num_images)
    t0 = time.time()
    result = {"command": f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:]),
              "tasks": {t: search_task(t, images) for t in args.tasks.split(",")},
              "seconds": time.time() - t0, "date": time.strftime("%Y-%m-%d"),
              "images": [args.first, args.first + len(images)], "device": jax.devices()[0].device_kind}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result
