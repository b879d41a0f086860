"""Regenerate tests/fixtures/stylegan2_small.pt / .npz from a clone of rosinality/stylegan2-pytorch (torch besides;
seconds).

    python -m tools.make_stylegan2_fixtures --stylegan2 STYLEGAN2_PATH --out tests/fixtures

rosinality's `model.Generator` at size 32, style_dim 16, two mapping layers, with its channel table divided by 16
(32 channels at every resolution: the class fixes its table, so a subclass divides it as the constructor sets it),
its parameters `project_random_state_dict(shapes, 41)` (the FIR kernels and noise maps its constructor made are
kept), saved as its `convert_weight.py` saves a converted network: {"g_ema": state_dict, "latent_avg": tensor}.
Its `op` package compiles CUDA kernels when imported; on CPU its functions run their pure-torch paths, so the
build step is made a no-op. The .npz holds the mapping network's output for fixed z, the synthesis network's
image for a fixed W+ latent with the stored noise maps (`randomize_noise=False`) and with given ones, and the
parameter counts of the published FFHQ configurations (config-f: 256 and 1024, channel multiplier 2) as the
constructor builds them.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from tools.reference import importable, narrowed, no_cuda_build, project_random_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KWARGS = dict(size=32, style_dim=16, n_mlp=2)
DIVISOR = 16
SEED = 41
PUBLISHED = {"ffhq256": dict(size=256, style_dim=512, n_mlp=8), "ffhq1024": dict(size=1024, style_dim=512, n_mlp=8)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stylegan2", required=True, help="a clone of rosinality/stylegan2-pytorch")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    import torch

    no_cuda_build()
    importable(args.stylegan2)
    import model as sg

    Narrow = narrowed(sg.Generator, DIVISOR)

    torch.manual_seed(SEED)
    g = Narrow(**KWARGS).eval()
    state = g.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    weights = project_random_state_dict(shapes, SEED)
    kept = [k for k in state if k.endswith(".kernel") or k.startswith("noises.")]
    weights.update({k: state[k].numpy() for k in kept})
    g.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(w)) for k, w in weights.items()})
    latent_avg = torch.randn(KWARGS["style_dim"])
    torch.save({"g_ema": g.state_dict(), "latent_avg": latent_avg}, os.path.join(args.out, "stylegan2_small.pt"))

    gen = torch.Generator().manual_seed(SEED)
    z = torch.randn(2, KWARGS["style_dim"], generator=gen)
    latent = torch.randn(2, g.n_latent, KWARGS["style_dim"], generator=gen)
    noises = [torch.randn(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), generator=gen) for i in range(g.num_layers)]
    with torch.no_grad():
        w = g.get_latent(z)
        image_stored = g([latent], input_is_latent=True, randomize_noise=False)[0]
        image_given = g([latent], input_is_latent=True, noise=noises)[0]
        image_z = g([z], randomize_noise=False)[0]
    counts = {}
    for name, kw in PUBLISHED.items():
        net = sg.Generator(**kw)
        counts[name] = int(sum(p.numel() for p in net.parameters()))
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1).astype(np.float32)
    np.savez_compressed(
        os.path.join(args.out, "stylegan2_small.npz"), z=z.numpy(), w=w.numpy(), latent=latent.numpy(),
        noises=np.stack([np.pad(n[0, 0].numpy(), ((0, 32 - n.shape[2]), (0, 32 - n.shape[3]))) for n in noises]),
        image_stored=nhwc(image_stored), image_given=nhwc(image_given), image_z=nhwc(image_z),
        latent_avg=latent_avg.numpy(), kwargs=json.dumps(KWARGS), channel_divisor=DIVISOR,
        published=json.dumps({"kwargs": PUBLISHED, "parameters": counts}))
    print("image range", float(image_stored.min()), float(image_stored.max()), "published", counts)


if __name__ == "__main__":
    main()
