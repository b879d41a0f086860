"""Regenerate tests/fixtures/kernel_dip.npz from a clone of VinAIResearch/blur-kernel-space-exploring (torch
besides; seconds).

    python -m tools.make_kernel_dip_fixtures --bkse BKSE_PATH --out tests/fixtures

The reference's `models.dips.KernelDIP` with nf 4, two residual blocks and kernel_dim 16 (the published
options scaled down; reflection padding, no normalisation, no dropout), its parameters
`project_random_state_dict(shapes, 51)`, evaluated on a noise input of the kind its DSD makes
(`utils.util.get_noise(64, "noise", (64, 64))`: uniform [0, 0.1) at 64 x 64 x 64; drawn here with numpy's
default_rng(51), so that the test redraws it instead of storing 1 MB). The .npz holds the options, the key table
and z (NHWC).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from tools.reference import importable, project_random_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPT = {"nf": 4, "n_blocks": 2, "padding_type": "reflect", "use_dropout": False, "kernel_dim": 16, "norm": "none"}
SEED = 51


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bkse", required=True, help="a clone of VinAIResearch/blur-kernel-space-exploring")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    importable(args.bkse)
    import torch
    from models.dips import KernelDIP

    net = KernelDIP(OPT).eval()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(w))
                         for k, w in project_random_state_dict(shapes, SEED).items()})
    noise = torch.from_numpy(np.random.default_rng(SEED).uniform(0, 0.1, (1, 64, 64, 64)).astype(np.float32))
    with torch.no_grad():
        z = net(noise)
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1).astype(np.float32)
    np.savez_compressed(os.path.join(args.out, "kernel_dip.npz"), opt=json.dumps(OPT), keys=json.dumps(shapes),
                        z=nhwc(z))
    print("z", tuple(z.shape), float(z.abs().max()), "params", sum(int(np.prod(s)) for s in shapes.values()))


if __name__ == "__main__":
    main()
