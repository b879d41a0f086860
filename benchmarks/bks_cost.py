"""What one iteration of the BKS solvers costs, per restart, on the shipped 32 x 32 nonlinear-deblurring setting
(the shipped KernelWizard; a random StyleGAN2 generator of the shipped training config's layout for
bks_stylegan), and what that makes an image at the reference's iteration counts.

    python -m benchmarks.bks_cost [--samples 1 2] [--iterations 20]

Each solver is built by `solvers.build` (the loop the CLI runs: its grid scanned, restarts vmapped), compiled,
then timed over `--iterations` rows of its grid: bks_stylegan's x and k phases, bks_generic's joint
iterations (its warm-ups are cheaper: one DIP each).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import numpy as np

from dps_jax import operators, solvers

REFERENCE_ITERATIONS = {"bks_stylegan": 150 + 25 * (300 + 200), "bks_generic": 300 + 300 + 5000}


def random_generator(path: str) -> str:
    """A StyleGAN2 generator of configs/train/stylegan2_fmnist.py's layout with its fresh weights."""
    from ml_collections import ConfigDict

    from dps_jax.models import checkpoint, stylegan2
    from dps_jax.train import stylegan2 as trainer

    cfg = ConfigDict(dict(model=dict(size=32, style_dim=128, n_mlp=2, channel_base=512, channel_max=64,
                                     image_channels=1, lr_mlp=0.01)))
    config = trainer.model_config(cfg)
    g, fixed = trainer.init_generator(np.random.default_rng(0), config)
    checkpoint.save_checkpoint(path, {**g, **fixed}, config, fmt=stylegan2.FORMAT)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iterations", type=int, default=20)
    args = ap.parse_args()
    n = args.iterations
    op = operators.build("nonlinear_blur", (32, 32, 1), key=jax.random.PRNGKey(0))
    y = np.asarray(op(np.zeros((32, 32, 1), np.float32)))
    problem = solvers.make_problem(op, y, (32, 32, 1))
    gen = random_generator(os.path.join(tempfile.mkdtemp(), "gen.msgpack"))
    setups = {"bks_stylegan": dict(generator=gen, steps=1, warmup_iters=0, x_iters=n // 2, k_iters=n - n // 2,
                                   fit_samples=10_000),
              "bks_generic": dict(steps=n, warmup_iters=0, dip_levels=4)}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}")
    for name, options in setups.items():
        for samples in args.samples:
            run = solvers.build(None, (32, 32, 1), solver=name, options=options, num_samples=samples,
                                steps_per_call=n)
            start = time.time()
            run.compile(problem)
            compiled = time.time() - start
            start = time.time()
            jax.block_until_ready(run(problem, jax.random.PRNGKey(0)))
            per = (time.time() - start) / n / samples
            print(f"{name}: {samples} restart(s), compile {compiled:.1f} s, {per:.3f} s per iteration per restart, "
                  f"{per * REFERENCE_ITERATIONS[name] / 60:.0f} min an image at the reference's "
                  f"{REFERENCE_ITERATIONS[name]:,} iterations", flush=True)


if __name__ == "__main__":
    main()
