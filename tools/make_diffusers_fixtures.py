"""Regenerate tests/fixtures/diffusers_unet.npz from diffusers' own UNet2DModel and DDIMScheduler (the package, not
a clone: `pip install torch diffusers`), at random weights.

    python -m tools.make_diffusers_fixtures --out tests/fixtures/diffusers_unet.npz

Two configurations of UNet2DModel, small enough to run anywhere:
  cifar_like  google/ddpm-cifar10-32's layout at reduced width (no attention head width: one head; padding-0
              downsampling; sines first, frequency shift 1; attention at the second resolution and in the middle)
  variants    every other option this port implements: multi-head attention, scale-shift time conditioning,
              padding-1 downsampling, cosines first, a wider time embedding, inputs centred, a mid-block scale
              factor, one input channel and two outputs
For each: the model's state_dict keys and shapes, its output on fixed inputs at two timesteps (one fractional),
and one deterministic DDIM step (eta 0) of diffusers' DDIMScheduler on the linear 1000-step schedule from t 900 to
800. The weights are `checkpoints_convert.mapping.project_random_state_dict(shapes, seed)`, which the test makes again
from the converter's own key table. Parameter counts of the published ddpm-cifar10-32 and ddpm-celebahq-256
configurations are recorded as diffusers builds them.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from tools.reference import project_random_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    "cifar_like": dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=[32, 64, 64],
                       down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                       up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
                       attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                       norm_eps=1e-6, norm_num_groups=8, act_fn="silu", center_input_sample=False,
                       mid_block_scale_factor=1, time_embedding_type="positional"),
    "variants": dict(sample_size=8, in_channels=1, out_channels=2, block_out_channels=[16, 32],
                     down_block_types=["AttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "AttnUpBlock2D"],
                     layers_per_block=1, attention_head_dim=8, downsample_padding=1, flip_sin_to_cos=True,
                     freq_shift=0, norm_eps=1e-5, norm_num_groups=4, resnet_time_scale_shift="scale_shift",
                     time_embedding_dim=48, center_input_sample=True, mid_block_scale_factor=1.5),
}
# The published configurations (their model cards' config.json), for the parameter counts.
PUBLISHED = {
    "ddpm-cifar10-32": dict(sample_size=32, block_out_channels=[128, 256, 256, 256],
                            down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
                            up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
                            layers_per_block=2, attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False,
                            freq_shift=1, norm_eps=1e-6, norm_num_groups=32),
    "ddpm-celebahq-256": dict(sample_size=256, block_out_channels=[128, 128, 256, 256, 512, 512],
                              down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
                              up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
                              layers_per_block=2, attention_head_dim=None, downsample_padding=0,
                              flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32),
}
SEED = {"cifar_like": 11, "variants": 12}
TIMESTEPS = np.array([3.0, 517.5], np.float32)


def main():
    import diffusers
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "diffusers_unet.npz"))
    args = ap.parse_args()
    out = {"diffusers_version": np.array(diffusers.__version__), "timesteps": TIMESTEPS}
    for name, cfg in CONFIGS.items():
        model = diffusers.UNet2DModel(**cfg).eval()
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict({k: torch.from_numpy(v) for k, v in project_random_state_dict(shapes, SEED[name]).items()})
        rng = np.random.default_rng(100 + SEED[name])
        s, c = cfg["sample_size"], cfg["in_channels"]
        x = rng.standard_normal((2, c, s, s)).astype(np.float32)
        with torch.no_grad():
            y = model(torch.from_numpy(x), torch.from_numpy(TIMESTEPS)).sample.numpy()
            sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                            beta_end=0.02, clip_sample=False, set_alpha_to_one=False)
            sched.set_timesteps(10)          # 900, 800, ..., 0
            x_t = torch.from_numpy(x)
            eps = model(x_t, 900).sample[:, :c]
            prev = sched.step(eps, 900, x_t, eta=0.0).prev_sample.numpy()
        out[f"{name}/config"] = np.array(json.dumps({"_class_name": "UNet2DModel", **cfg}))
        out[f"{name}/keys"] = np.array(json.dumps(shapes))
        out[f"{name}/x"] = x.transpose(0, 2, 3, 1)
        out[f"{name}/out"] = y.transpose(0, 2, 3, 1)
        out[f"{name}/ddim_prev_900_800"] = prev.transpose(0, 2, 3, 1)
        print(name, len(shapes), "tensors", sum(int(np.prod(v)) for v in shapes.values()), "parameters")
    counts = {}
    for name, cfg in PUBLISHED.items():
        model = diffusers.UNet2DModel(**cfg)
        counts[name] = sum(p.numel() for p in model.parameters())
        print(name, counts[name], "parameters")
    out["published_parameters"] = np.array(json.dumps(counts))
    out["published_configs"] = np.array(json.dumps(PUBLISHED))
    np.savez_compressed(args.out, **out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
