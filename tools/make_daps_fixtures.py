"""Fixtures for DAPS from its reference code (github zhangbingliang2019/DAPS), never copied: the reference's
`DAPS` sampler (sampler.py, cores/), `DDPM` model wrapper with EDM's VPPrecond (model/), and its operators
(forward_operator/) are imported from a clone and run on the random-weight adm_ffhq_like network.

    # a clone of zhangbingliang2019/DAPS and torch (CPU) with the reference's small dependencies
    pip install torch==2.13.0 numpy scipy pyyaml tqdm torchdiffeq pillow
    python -m tools.make_daps_fixtures --daps DAPS_PATH --out /tmp/regen [--reuse tests/fixtures]
    DPS_JAX_FIXTURES=/tmp/regen python -m pytest tests/test_daps.py

The sampler is built by the reference's `get_sampler` from its own `configs/sampler/edm_daps.yaml` and the
"pixel" section of its task configs (`down_sampling.yaml`: SR x4, lr 1e-4; `phase_retrieval.yaml`:
oversampling 2, lr 5e-5), with fewer steps: 4 annealing levels, the published 5 ODE steps, 3 Langevin
steps. Images 16 x 16 x 3, so its SR is 16 -> 4 and its phase retrieval pads by 4. The network is the
reference's own `create_model` in the adm_ffhq_like configuration with that file's weights. Every
`torch.randn_like` draw (per level: the Langevin draws, then the re-noising) is recorded, and the
trajectory the sampler records itself (x_t, x0_hat, x0_y per level); with --reuse the inputs and draws of
an existing fixture are replayed and the outputs recomputed (a regeneration check). `diffusers`, imported
by the reference's model module for its Stable Diffusion wrapper, is stood in for by an empty module.
"""

from __future__ import annotations

import json
import os
import sys
import types

import numpy as np

from tools import make_fixtures as mf
from tools.reference import importable

SIZE = 16
CASES = {"sr4": ("down_sampling", dict(resolution=SIZE, scale_factor=4, device="cpu")),
         "pr": ("phase_retrieval", dict(oversample=2.0, resolution=SIZE)),
         # settings the two above do not cover: 24 x 24 images, other level / ODE / Langevin counts, other noise
         "blur24": ("gaussian_blur", dict(kernel_size=9, intensity=2.0, device="cpu")),
         "sr2_24": ("down_sampling", dict(resolution=24, scale_factor=2, device="cpu"))}
ANNEALING_STEPS, ODE_STEPS, LANGEVIN_STEPS = 4, 5, 3
SIGMA_Y = 0.05
# (size, annealing levels, ODE steps, Langevin steps, sigma_y) where a case departs from the defaults above
SETTINGS = {"blur24": (24, 6, 3, 2, 0.1), "sr2_24": (24, 5, 4, 4, 0.02)}


def import_daps(path: str):
    import yaml

    importable(path)
    diffusers = types.ModuleType("diffusers")
    diffusers.StableDiffusionPipeline = None
    sys.modules.setdefault("diffusers", diffusers)
    import forward_operator
    import model as model_lib
    import sampler as sampler_lib

    def numbers(node):
        # the reference reads its configs through hydra, whose YAML loader takes 1e-4 as a float
        if isinstance(node, dict):
            return {k: numbers(v) for k, v in node.items()}
        if isinstance(node, str):
            try:
                return float(node)
            except ValueError:
                return node
        return node

    def load(*parts):
        with open(os.path.join(path, "configs", *parts)) as f:
            return numbers(yaml.safe_load(f))
    return types.SimpleNamespace(operators=forward_operator, model=model_lib, sampler=sampler_lib, load=load)


def load_model(ref, fixtures):
    """The reference's DDPM wrapper (VPPrecond around its create_model) in the adm_ffhq_like configuration."""
    import torch

    cfg = json.loads(str(np.load(os.path.join(fixtures, "adm_ffhq_like.npz"))["config"]))
    model_config = dict(image_size=cfg["image_size"], num_channels=cfg["model_channels"],
                        num_res_blocks=cfg["num_res_blocks"], channel_mult=",".join(map(str, cfg["channel_mult"])),
                        learn_sigma=cfg["out_channels"] == 2 * cfg["in_channels"], class_cond=False,
                        attention_resolutions=",".join(str(cfg["image_size"] // d)
                                                       for d in cfg["attention_resolutions"]),
                        num_heads=cfg["num_heads"], num_head_channels=cfg["num_head_channels"],
                        num_heads_upsample=cfg["num_heads_upsample"],
                        use_scale_shift_norm=cfg["use_scale_shift_norm"], dropout=0.0,
                        resblock_updown=cfg["resblock_updown"], use_fp16=False,
                        use_new_attention_order=cfg["use_new_attention_order"], model_path="")
    net = ref.model.DDPM(model_config, device="cpu")
    net.model.model.load_state_dict(torch.load(os.path.join(fixtures, "adm_ffhq_like.pt"), weights_only=True))
    return net


def make_case(ref, net, out, name, reuse, rng):
    import torch

    old = mf.read(reuse, f"daps_{name}.npz")
    task, op_kwargs = CASES[name]
    size, levels, ode_steps, langevin_steps, sigma_y = SETTINGS.get(
        name, (SIZE, ANNEALING_STEPS, ODE_STEPS, LANGEVIN_STEPS, SIGMA_Y))
    task_cfg = ref.load("task", f"{task}.yaml")["pixel"]
    mcmc = dict(task_cfg["mcmc_sampler_config"], num_steps=langevin_steps)
    sampler_cfg = ref.load("sampler", "edm_daps.yaml")
    sampler_cfg["annealing_scheduler_config"]["num_steps"] = levels
    sampler_cfg["diffusion_scheduler_config"]["num_steps"] = ode_steps
    sampler = ref.sampler.get_sampler(**sampler_cfg, mcmc_sampler_config=mcmc)
    operator = ref.operators.get_operator(task, **op_kwargs, sigma=sigma_y)

    if old is not None:
        img, y_noise, x_start = (torch.from_numpy(old[k]) for k in ("ref", "y_noise", "x_start"))
        replay = [np.asarray(a) for a in old["randn"]]
    else:
        torch.manual_seed(int(rng.integers(2 ** 31)))
        img = torch.rand(1, 3, size, size) * 2 - 1
        y_noise = torch.randn_like(operator(img))
        # the reference's get_start draws at its model's configured size (16); other sizes the same way
        x_start = sampler.get_start(1, net) if size == SIZE else \
            torch.randn(1, 3, size, size) * sampler.annealing_scheduler.get_prior_sigma()
        replay = None
    y = operator(img) + sigma_y * y_noise
    with mf.recorded_randn_like(replay) as drawn:
        sample = sampler.sample(net, x_start, operator, y, record=True)
    traj = sampler.trajectory.compile().tensor_data
    arrays = dict(ref=img.numpy(), y_noise=y_noise.numpy(), y=y.numpy(), x_start=x_start.numpy(),
                  randn=np.stack([d.numpy() for d in drawn]), sample=sample.detach().numpy(),
                  xt=traj["xt"][:, 0].numpy(), x0hat=traj["x0hat"][:, 0].numpy(), x0y=traj["x0y"][:, 0].numpy(),
                  sigmas=sampler.annealing_scheduler.sigma_steps.numpy(),
                  spec=np.array(json.dumps({"task": task, "operator": {k: v for k, v in op_kwargs.items()
                                                                       if k != "device"},
                                            "sigma_y": sigma_y, "mcmc": mcmc, "sampler": sampler_cfg, "size": size,
                                            "model": "adm_ffhq_like"})))
    np.savez_compressed(os.path.join(out, f"daps_{name}.npz"), **arrays)


def main():
    args = mf.arguments(__doc__, 1, [("daps", "a clone of zhangbingliang2019/DAPS")]).parse_args()
    mf.start(args)
    ref = import_daps(args.daps)
    net = load_model(ref, args.fixtures)
    rng = np.random.default_rng(args.seed)
    for name in CASES:
        make_case(ref, net, args.out, name, args.reuse, rng)
    print(f"wrote {len(CASES)} files to {args.out}")
    if args.compare:
        mf.compare(args.out, args.compare)


if __name__ == "__main__":
    main()
