"""What one iteration of the BKS solvers costs, per restart, on the shipped 32 x 32 nonlinear-deblurring setting
(the shipped KernelWizard; a random StyleGAN2 generator of the shipped training config's layout for
bks_stylegan), and what that makes an image at the reference's iteration counts.

    python -m benchmarks.bks_cost [--samples 1 2] [--iterations 20] [--parts]

Each solver is built by `solvers.build` (the loop the CLI runs: its grid scanned, restarts vmapped), compiled,
then timed over `--iterations` rows of its grid: bks_stylegan's x and k phases, bks_generic's joint
iterations (its warm-ups are cheaper: one DIP each).

`--parts` times instead one gradient step of each DIP alone (bks_generic's defaults on the 32 x 32 setting,
image DIP with 4 levels) inside a scanned loop, with its large convolutions written as matrix products of
their taps (`kernel_dip.conv_by_taps`, what the solvers run) and as XLA convolutions: why the solvers take
the first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
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


def lax_conv(x, w, b, stride: int = 1, pad: int = 0, mode: str = "constant"):
    """`kernel_dip.conv_by_taps` as one XLA convolution (the comparison of --parts)."""
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    return b + jax.lax.conv_general_dilated(x, jnp.transpose(w, (2, 3, 1, 0)), (stride, stride), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


@contextlib.contextmanager
def convolutions(kind: str):
    from dps_jax.models import kernel_dip

    taps = kernel_dip.conv_by_taps
    kernel_dip.conv_by_taps = taps if kind == "taps" else lax_conv
    try:
        yield
    finally:
        kernel_dip.conv_by_taps = taps


def parts(n: int) -> None:
    """Seconds per gradient step of each DIP alone, in a scanned loop of n steps, both ways."""
    from dps_jax.models import image_dip, kernel_dip
    from dps_jax.operators import nonlinear_blur
    from dps_jax.solvers import bks_generic

    o = bks_generic.Options()
    key = jax.random.PRNGKey(0)
    op = operators.build("nonlinear_blur", (32, 32, 1), key=key)
    h, w, kdim = nonlinear_blur.blur_model(op.data)[1].latent_shape((32, 32, 1))    # the shipped KernelWizard's z
    kconf = kernel_dip.KernelDIPConfig(nf=o.kdip_nf, n_blocks=o.kdip_blocks, kernel_dim=kdim)
    xconf = image_dip.ImageDIPConfig(input_channels=bks_generic.DIP_X_CHANNELS, output_channels=1,
                                     channels=o.dip_channels, skip=o.dip_skip, levels=4)
    dips = {"kernel DIP": (kernel_dip.init_params(key, kconf), lambda p, z: kernel_dip.forward(p, kconf, z),
                           jnp.full((1, 32 * h, 32 * w, kernel_dip.INPUT_CHANNELS), 0.05)),
            "image DIP": (image_dip.init_params(key, xconf), lambda p, z: image_dip.forward(p, xconf, z),
                          jnp.full((1, 32, 32, bks_generic.DIP_X_CHANNELS), 0.05))}
    for name, (params, forward, z) in dips.items():
        for kind in ("taps", "conv"):
            with convolutions(kind):
                def body(p, _):
                    g = jax.grad(lambda q: jnp.mean(forward(q, z) ** 2))(p)
                    return jax.tree_util.tree_map(lambda a, d: a - 1e-4 * d, p, g), None

                loop = jax.jit(lambda p: jax.lax.scan(body, p, None, length=n)[0])
                start = time.time()
                compiled = loop.lower(params).compile()
                compile_s = time.time() - start
                start = time.time()
                jax.block_until_ready(compiled(params))
            print(f"{name}, convolutions as {'matrix products of taps' if kind == 'taps' else 'XLA convolutions'}: "
                  f"compile {compile_s:.1f} s, {(time.time() - start) / n:.3f} s per gradient step", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--parts", action="store_true", help="time each DIP's gradient step alone, both ways")
    args = ap.parse_args()
    n = args.iterations
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}")
    if args.parts:
        return parts(n)
    op = operators.build("nonlinear_blur", (32, 32, 1), key=jax.random.PRNGKey(0))
    y = np.asarray(op(np.zeros((32, 32, 1), np.float32)))
    problem = solvers.make_problem(op, y, (32, 32, 1))
    gen = random_generator(os.path.join(tempfile.mkdtemp(), "gen.msgpack"))
    setups = {"bks_stylegan": dict(generator=gen, steps=1, warmup_iters=0, x_iters=n // 2, k_iters=n - n // 2,
                                   fit_samples=10_000),
              "bks_generic": dict(steps=n, warmup_iters=0, dip_levels=4)}
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
