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
    settings = [schedule(steps, rho_min) for steps in step_counts for rho_min in rho_mins]
    return solver_grid.search(task, images, "pnpdm", settings, seed)


def main(argv=None):
    ap = solver_grid.parser(__doc__, TASKS)
    ap.add_argument("--steps", default=",".join(map(str, STEPS)), help="iteration counts")
    ap.add_argument("--rho_mins", default=",".join(map(str, RHO_MINS)))
    args = ap.parse_args(argv)
    rho_mins = tuple(float(r) for r in args.rho_mins.split(","))
    step_counts = tuple(int(n) for n in args.steps.split(","))
    solver_grid.run("benchmarks.pnpdm_grid", argv, args, lambda t, images: search(t, images, rho_mins, step_counts))


if __name__ == "__main__":
    main()
