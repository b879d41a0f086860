"""Motion-blur kernels drawn by the `motionblur` package itself (github LeviBorodenko/motionblur, which the DPS
paper used at size 61, intensity 0.5; it is not on PyPI), for the distribution test of
`dps_jax.operators.blur.motion_kernel`. The package's `Kernel` class is imported from a clone, never copied.

    git clone https://github.com/LeviBorodenko/motionblur /tmp/motionblur     # needs numpy, scipy, pillow
    python -m tools.make_motionblur_fixtures --motionblur /tmp/motionblur --out tests/fixtures

Writes motionblur_kernels.npz: `kernels` (N, 61, 61) float16 (each sums to 1 before rounding), drawn
with numpy's global generator seeded with --seed, and the settings.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from tools.reference import importable


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--motionblur", required=True, help="a clone of LeviBorodenko/motionblur")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num", type=int, default=300)
    ap.add_argument("--size", type=int, default=61)
    ap.add_argument("--intensity", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    importable(args.motionblur)
    from motionblur import Kernel          # the package draws from numpy's global generator

    np.random.seed(args.seed)
    kernels = np.stack([Kernel(size=(args.size, args.size), intensity=args.intensity).kernelMatrix
                        for _ in range(args.num)])
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "motionblur_kernels.npz"), kernels=kernels.astype(np.float16),
                        size=args.size, intensity=args.intensity, seed=args.seed)
    print(f"wrote {args.num} kernels to {os.path.join(args.out, 'motionblur_kernels.npz')}")


if __name__ == "__main__":
    main()
