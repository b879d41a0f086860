"""Outputs of the reference KernelWizard (github VinAIResearch/blur-kernel-space-exploring, the neural blur of
the DPS paper's nonlinear deblurring) with deterministic random weights, for tests/test_kernel_wizard.py.
The reference module is imported from a clone, never copied.

    git clone https://github.com/VinAIResearch/blur-kernel-space-exploring /tmp/bkse   # needs torch
    python -m tools.make_kernel_wizard_fixtures --bkse /tmp/bkse --out tests/fixtures

A small model of the published layout (its code fixes 2 feature downsamplings, 5 adapter levels and the
64-channel tail): 8 features, 2 + 3 residual blocks, 2 extractor blocks, z 64 x 2 x 2, 3 x 256 x 256 images.
Weights: for each state_dict key in sorted order, numpy's default_rng(seed) standard normals, scaled by
1 / sqrt(prod(shape[1:])) for weights and by 0.1 for biases (the test makes the same ones from the key
table of checkpoints_convert.kernel_wizard). Writes kernel_wizard.npz: the config, the inputs' seed, z,
adaptKernel's output on every 4th row and column (NHWC) with its full sum and sum of squares, and the
extractor's mu and sigma (NHWC).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from tools.reference import importable

CONFIG = dict(in_channels=3, features=8, front_blocks=2, back_blocks=3, extractor_blocks=2, kernel_dim=64)
IMAGE = 256


def weights(shapes, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for key in sorted(shapes):
        w = rng.standard_normal(shapes[key])
        out[key] = (w / np.sqrt(np.prod(shapes[key][1:])) if key.endswith("weight") else 0.1 * w).astype(np.float32)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bkse", required=True, help="a clone of VinAIResearch/blur-kernel-space-exploring")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    importable(args.bkse)
    import torch
    from models.kernel_encoding.kernel_wizard import KernelWizard

    c = CONFIG
    opt = {"input_nc": c["in_channels"], "nf": c["features"], "front_RBs": c["front_blocks"],
           "back_RBs": c["back_blocks"], "N_frames": 1, "kernel_dim": c["kernel_dim"], "use_vae": True,
           "KernelExtractor": {"norm": "none", "use_sharp": True, "n_blocks": c["extractor_blocks"],
                               "padding_type": "reflect", "use_dropout": False},
           "Adapter": {"norm": "none", "use_dropout": False}}
    model = KernelWizard(opt).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights(shapes, args.seed).items()}, strict=True)
    rng = np.random.default_rng(args.seed + 1)
    sharp = rng.uniform(0, 1, (1, c["in_channels"], IMAGE, IMAGE)).astype(np.float32)
    blurred = rng.uniform(0, 1, (1, c["in_channels"], IMAGE, IMAGE)).astype(np.float32)
    z = (1.2 * rng.standard_normal((1, c["kernel_dim"], IMAGE // 128, IMAGE // 128))).astype(np.float32)
    with torch.no_grad():
        out = model.adaptKernel(torch.from_numpy(sharp), torch.from_numpy(z)).numpy()
        mu, sigma = (t.numpy() for t in model(torch.from_numpy(sharp), torch.from_numpy(blurred)))
    nhwc = lambda a: a.transpose(0, 2, 3, 1)[0]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "kernel_wizard.npz")
    np.savez_compressed(path, seed=args.seed, image_size=IMAGE, z=nhwc(z), adapt_sub=nhwc(out)[::4, ::4],
                        adapt_sum=np.float64(out.sum(dtype=np.float64)),
                        adapt_sumsq=np.float64((out.astype(np.float64) ** 2).sum()),
                        mu=nhwc(mu), sigma=nhwc(sigma), num_keys=len(shapes),
                        **{f"config_{k}": v for k, v in CONFIG.items()})
    print(f"wrote {path}: {len(shapes)} keys, adaptKernel mean {out.mean():.4f}, mu std {mu.std():.4f}")


if __name__ == "__main__":
    main()
