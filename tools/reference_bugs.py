"""Evidence for the defects of the references' operator classes that dps_jax does not copy (docs/faithfulness.md).

    pip install torch numpy
    python -m tools.reference_bugs --ddrm DDRM_PATH [--reddiff REDDIFF_PATH]

Runs the references' own classes (bahjat-kawar/ddrm `functions/svd_replacement.py`; NVlabs/RED-diff carries
the same `Deblurring` in `utils/degredations.py`) and prints, for each defect, the number that shows it:

1. `Deblurring.singulars()` repeats the image's singular values channel-blocked (`repeat(1, 3)`: all of
   channel 0's, then channel 1's, ...) while `Vt` and `U` order the coefficients channel-interleaved (pixel 0
   of channels 0, 1, 2, then pixel 1, ...): H(x) = U(s * Vt(x)) is not the blur the class builds. Printed:
   ||H(x) - B x|| / ||B x|| for B the class's own separable matrix, as the class computes it and with the
   singular values repeated interleaved (`repeat_interleave(3)`).
2. `Deblurring`'s matrix loop `for j in range(i - k // 2, i + k // 2)` takes k - 1 of an odd kernel's k taps:
   printed, the weight of the dropped tap and the row sums of its matrix away from the border.
3. `SRConv` centres output pixel i's kernel at input i * stride + stride // 2 with an even-length kernel, whose
   own centre is half a pixel before its middle tap: printed, the offset of each row's weighted centre from
   its block's centre, per factor (0 for 2 and 4, half a pixel for 3).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from tools.reference import importable


def gaussian_taps(k: int, std: float) -> np.ndarray:
    t = np.exp(-0.5 * (np.arange(k) - k // 2) ** 2 / std ** 2)
    return t / t.sum()


def deblurring_evidence(cls, torch, name: str, img_dim: int = 16, k: int = 9) -> None:
    taps = torch.tensor(gaussian_taps(k, 2.0), dtype=torch.float64)
    try:
        op = cls(taps.float(), 3, img_dim, "cpu", ZERO=0.0)
    except TypeError:                      # RED-diff's copy fixes ZERO at 3e-2 (B below is built the same way)
        op = cls(taps.float(), 3, img_dim, "cpu")
    x = torch.randn(1, 3 * img_dim ** 2, generator=torch.Generator().manual_seed(0))
    # the class's own 1-D matrix, rebuilt from its factors; B x is its separable blur per channel
    h = (op.U_small @ torch.diag(op.singulars_small) @ op.V_small.T).double()
    img = x.reshape(1, 3, img_dim, img_dim).double()
    want = (h @ img @ h.T).reshape(1, -1)
    got = op.H(x).double()
    interleaved = op.U((op._singulars.repeat_interleave(3)) * op.Vt(x)[:, :3 * img_dim ** 2]).double()
    rel = lambda a: float(torch.linalg.norm(a - want) / torch.linalg.norm(want))
    print(f"{name} Deblurring: ||H(x) - B x|| / ||B x|| = {rel(got):.3f} as the class computes it, "
          f"{rel(interleaved):.1e} with repeat_interleave(3)")
    rows = h.sum(1)[k // 2:-(k // 2)]
    print(f"{name} Deblurring: a {k}-tap kernel keeps {k - 1} taps: the dropped tap weighs {float(taps[-1]):.4f}; "
          f"interior row sums {float(rows.min()):.4f} .. {float(rows.max()):.4f} (the kernel sums to 1)")


def srconv_evidence(cls, torch, bicubic, img_dim: int = 36) -> None:
    for factor in (2, 3, 4):
        kernel = torch.tensor([bicubic((i - np.floor(factor * 4 / 2) + 0.5) / factor) for i in range(factor * 4)])
        kernel = kernel / kernel.sum()
        op = cls(kernel.float(), 1, img_dim, "cpu", stride=factor)
        h = (op.U_small[:, :op.small_dim] @ torch.diag(op.singulars_small) @ op.V_small[:, :op.small_dim].T).double()
        pos = torch.arange(img_dim, dtype=torch.float64)
        inner = range(2, op.small_dim - 2)            # away from the reflected border
        offsets = [float((h[r] * pos).sum() / h[r].sum() - (r * factor + (factor - 1) / 2)) for r in inner]
        print(f"ddrm SRConv x{factor}: weighted centre of each row minus its block's centre: "
              f"{min(offsets):+.3f} .. {max(offsets):+.3f} pixels")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ddrm", required=True, help="a clone of bahjat-kawar/ddrm")
    ap.add_argument("--reddiff", default="", help="a clone of NVlabs/RED-diff (its copy of Deblurring)")
    args = ap.parse_args(argv)
    import torch

    importable(args.ddrm)
    from functions import svd_replacement as ddrm

    deblurring_evidence(ddrm.Deblurring, torch, "ddrm")
    bicubic = lambda x: (1.5 * abs(x) ** 3 - 2.5 * abs(x) ** 2 + 1) * (abs(x) <= 1) + \
        (-0.5 * abs(x) ** 3 + 2.5 * abs(x) ** 2 - 4 * abs(x) + 2) * ((abs(x) > 1) & (abs(x) < 2))
    srconv_evidence(ddrm.SRConv, torch, bicubic)
    if args.reddiff:
        sys.modules.pop("utils", None)
        importable(args.reddiff)
        from utils import degredations

        deblurring_evidence(degredations.Deblurring, torch, "red-diff")


if __name__ == "__main__":
    main()
