"""PnP-DM's schedule on the shipped prior: a small grid over the final coupling rho_min and the iteration
count, on held-out images, for the tasks it is run on.

    python -m benchmarks.pnpdm_grid --out benchmarks/pnpdm_grid.json

The reference's schedule (100 iterations, rho 10 decaying by 0.9 to 0.3, 100 EDM levels: about 5,000
network evaluations a sample) is kept in shape: rho starts at 10 and reaches rho_min after a third of the
iterations (the reference: after 33 of 100), on a 20-level EDM grid. Images and measurements: held out, as
`benchmarks/solver_grid.py` makes them. Prints mean PSNR per setting and the best per task, which
`configs/<task>.py` carries (`solver.pnpdm`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax

from benchmarks import solver_grid

RHO_MINS = (0.1, 0.2, 0.3)
STEPS = (15, 30)
TASKS = ("super_resolution", "gaussian_deblur", "inpainting_box")
LEVELS = 20


def schedule(steps: int, rho_min: float, rho: float = 10.0) -> dict:
    """rho from `rho` to rho_min over the first third of `steps` iterations."""
    return {"steps": steps, "rho": rho, "rho_min": rho_min, "denoiser_steps": LEVELS,
            "rho_decay": float((rho_min / rho) ** (1.0 / max(1, steps // 3)))}


def search(task: str, images, rho_mins=RHO_MINS, step_counts=STEPS, seed=0):
    prior, measured = solver_grid.problems(task, images, seed)
    rows = []
    for steps in step_counts:
        for rho_min in rho_mins:
            rows.append(solver_grid.score(prior, measured, images, "pnpdm", schedule(steps, rho_min)))
            print(f"{task}: steps {steps} rho_min {rho_min:g} ({rows[-1]['evaluations']} evaluations) PSNR "
                  f"{rows[-1]['psnr']:.2f} +- {rows[-1]['se']:.2f}  {rows[-1]['seconds']:.0f} s", flush=True)
    best = max(rows, key=lambda r: r["psnr"])
    print(f"{task}: best steps {best['steps']} rho_min {best['rho_min']:g} ({best['psnr']:.2f} dB)", flush=True)
    return {"grid": rows, "best": best}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first", type=int, default=1000)
    ap.add_argument("--num_images", type=int, default=8)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--steps", default=",".join(map(str, STEPS)), help="iteration counts")
    ap.add_argument("--rho_mins", default=",".join(map(str, RHO_MINS)))
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    images = solver_grid.held_out(args.first, args.num_images)
    t0 = time.time()
    result = {"command": "python -m benchmarks.pnpdm_grid " + " ".join(argv if argv is not None else sys.argv[1:]),
              "tasks": {t: search(t, images, tuple(float(r) for r in args.rho_mins.split(",")),
                                tuple(int(n) for n in args.steps.split(","))) for t in args.tasks.split(",")}, "seconds": time.time() - t0,
              "date": time.strftime("%Y-%m-%d"), "images": [args.first, args.first + len(images)],
              "device": jax.devices()[0].device_kind}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
