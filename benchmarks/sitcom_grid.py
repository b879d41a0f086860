"""SITCOM's Adam learning rate on the shipped prior: a small grid around its reference's 0.02, on held-out
images, at the reference's 20 steps of at most 30 Adam iterations.

    python -m benchmarks.sitcom_grid --out benchmarks/sitcom_grid.json

Images and measurements: held out, as `benchmarks/solver_grid.py` makes them. The step count is the
time-to-quality benchmark's to choose (`benchmarks/time_to_quality.py`); this grid only asks whether the
reference's learning rate, tuned on 256 x 256 images, also suits the shipped 32 x 32 prior. Prints mean PSNR
per setting and the best per task.
"""

from __future__ import annotations

from benchmarks import solver_grid

LRS = (0.01, 0.02, 0.05)
TASKS = ("super_resolution", "gaussian_deblur", "inpainting_box")


def search(task: str, images, lrs=LRS, steps: int = 20, seed: int = 0) -> dict:
    return solver_grid.search(task, images, "sitcom", [{"steps": steps, "lr": lr} for lr in lrs], seed)


def main(argv=None):
    ap = solver_grid.parser(__doc__, TASKS)
    ap.add_argument("--lrs", default=",".join(map(str, LRS)))
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    lrs = tuple(float(v) for v in args.lrs.split(","))
    solver_grid.run("benchmarks.sitcom_grid", argv, args, lambda t, images: search(t, images, lrs, args.steps))


if __name__ == "__main__":
    main()
