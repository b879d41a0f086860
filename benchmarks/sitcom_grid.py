"""SITCOM's Adam learning rate on the shipped prior: a small grid around its reference's 0.02, on held-out
images, at the reference's 20 steps of at most 30 Adam iterations.

    python -m benchmarks.sitcom_grid --out benchmarks/sitcom_grid.json

Images and measurements: held out, as `benchmarks/solver_grid.py` makes them. The step count is the
time-to-quality benchmark's to choose (`benchmarks/time_to_quality.py`); this grid only asks whether the
reference's learning rate, tuned on 256 x 256 images, also suits the shipped 32 x 32 prior. Prints mean PSNR
per setting and the best per task.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax

from benchmarks import solver_grid

LRS = (0.01, 0.02, 0.05)
TASKS = ("super_resolution", "gaussian_deblur", "inpainting_box")


def search(task: str, images, lrs=LRS, steps: int = 20, seed: int = 0) -> dict:
    prior, measured = solver_grid.problems(task, images, seed)
    rows = []
    for lr in lrs:
        rows.append(solver_grid.score(prior, measured, images, "sitcom", {"steps": steps, "lr": lr}))
        print(f"{task}: lr {lr:g} PSNR {rows[-1]['psnr']:.2f} +- {rows[-1]['se']:.2f}  "
              f"{rows[-1]['seconds']:.0f} s", flush=True)
    best = max(rows, key=lambda r: r["psnr"])
    print(f"{task}: best lr {best['lr']:g} ({best['psnr']:.2f} dB)", flush=True)
    return {"grid": rows, "best": best}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first", type=int, default=1000)
    ap.add_argument("--num_images", type=int, default=8)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--lrs", default=",".join(map(str, LRS)))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    images = solver_grid.held_out(args.first, args.num_images)
    lrs = tuple(float(v) for v in args.lrs.split(","))
    t0 = time.time()
    result = {"command": "python -m benchmarks.sitcom_grid " + " ".join(argv if argv is not None else sys.argv[1:]),
              "tasks": {t: search(t, images, lrs, args.steps) for t in args.tasks.split(",")},
              "seconds": time.time() - t0, "date": time.strftime("%Y-%m-%d"),
              "images": [args.first, args.first + len(images)], "device": jax.devices()[0].device_kind}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
