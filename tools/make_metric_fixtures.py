"""Outputs of the reference LPIPS (PyPI `lpips` 0.1.4) and FID (PyPI `pytorch-fid` 0.3.0) with deterministic
random network weights, for tests/test_perceptual.py. The references are imported as installed packages,
never copied; torch and torchvision are needed here only.

    pip install torch torchvision lpips==0.1.4 pytorch-fid==0.3.0 scipy
    pip install -e .        # the weight rule and key tables come from checkpoints_convert
    python -m tools.make_metric_fixtures --out tests/fixtures

Weights: `checkpoints_convert.mapping.random_state_dict` over the reference model's own keys and shapes
(torchvision's AlexNet / VGG16 `features.*`; the FID Inception's keys without `fc.*` and the batch-norm
counters); the LPIPS heads are the real v0.1 heads the `lpips` package ships, which are copied next to the
fixture (lpips_v0.1_alex.pth, lpips_v0.1_vgg.pth; BSD-2-Clause, Zhang et al.). The Inception is built by
pytorch-fid itself, with its weight download answered by the random weights.

Writes metrics_ref.npz: per LPIPS net, the distances of 3 random 8-bit image pairs (uint8 NCHW, mapped
to [-1, 1]) at 64 x 64 and at 32 x 32; the FID features of 2 random 8-bit 3 x 40 x 40 images (mapped to
[0, 1]) resized to 299 (pytorch-fid's default path); and pytorch-fid's Frechet distance of two feature sets
drawn from default_rng(seed + 2) (the test draws the same sets).
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np


def frechet_sets(seed: int):
    """Two feature sets (300, 64) and (250, 64) with different means and covariances (the test redraws them)."""
    rng = np.random.default_rng(seed + 2)
    a = rng.standard_normal((300, 64)) @ (np.eye(64) + 0.3 * rng.standard_normal((64, 64)))
    b = 0.5 + rng.standard_normal((250, 64)) @ (np.eye(64) + 0.3 * rng.standard_normal((64, 64)))
    return a, b


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import lpips
    import pytorch_fid.inception as fid_inception
    import torch
    from pytorch_fid.fid_score import calculate_frechet_distance

    from checkpoints_convert.mapping import random_state_dict

    torch.set_grad_enabled(False)
    out = {"seed": np.int64(args.seed)}
    rng = np.random.default_rng(args.seed + 1)

    for net in ("alex", "vgg"):
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
        # The trunk's layers are torchvision's `features` modules, spread over slice1..slice5 by index.
        layers = {name: m for s in range(1, 6) for name, m in getattr(model.net, f"slice{s}").named_children()}
        shapes = {f"features.{i}.{p}": tuple(t.shape) for i, m in layers.items() for p, t in m.named_parameters()}
        for key, w in random_state_dict(shapes, args.seed).items():
            _, i, p = key.split(".")
            getattr(layers[i], p).copy_(torch.from_numpy(w))
        for size in (64, 32):
            x8 = rng.integers(0, 256, (3, 3, size, size), dtype=np.uint8)
            y8 = np.clip(x8 + rng.normal(0, 40, x8.shape), 0, 255).round().astype(np.uint8)
            out[f"lpips_{net}_{size}_x"], out[f"lpips_{net}_{size}_y"] = x8, y8
            x, y = (torch.from_numpy(a.astype(np.float32) / 127.5 - 1) for a in (x8, y8))
            out[f"lpips_{net}_{size}"] = model(x, y).numpy().reshape(-1)
        shutil.copyfile(os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", f"{net}.pth"),
                        os.path.join(args.out, f"lpips_v0.1_{net}.pth"))

    def random_inception_weights(*_, **__):
        # pytorch-fid's "download": its own model's keys, random by the rule where the port has them.
        model = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        used = {k: v.shape for k, v in state.items() if not (k.startswith("fc.") or k.endswith("num_batches_tracked"))}
        state.update(random_state_dict(used, args.seed))
        return {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}

    fid_inception.load_state_dict_from_url = random_inception_weights
    model = fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    x8 = rng.integers(0, 256, (2, 3, 40, 40), dtype=np.uint8)
    out["fid_40_x"] = x8
    out["fid_40_features"] = model(torch.from_numpy(x8.astype(np.float32) / 255))[0].numpy().reshape(2, -1)

    a, b = frechet_sets(args.seed)
    out["frechet"] = np.float64(calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False),
                                                           b.mean(0), np.cov(b, rowvar=False)))
    path = os.path.join(args.out, "metrics_ref.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}: " + ", ".join(f"{k} {np.shape(v)}" for k, v in out.items()))


if __name__ == "__main__":
    main()
