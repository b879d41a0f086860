"""Fixtures for PiGDM and RED-diff from their reference code (NVlabs/RED-diff), never copied: imported from
a clone and run on the random-weight adm_ffhq_like network of tests/fixtures.

    # a clone of DPS2022/diffusion-posterior-sampling (its guided-diffusion UNet) and of NVlabs/RED-diff,
    # torch (CPU), and the reference's config library
    pip install torch==2.13.0 numpy omegaconf pyyaml matplotlib
    python -m tools.make_solver_fixtures --official DPS_PATH --reddiff REDDIFF_PATH --out /tmp/regen \\
        [--reuse tests/fixtures]
    DPS_JAX_FIXTURES=/tmp/regen python -m pytest tests/test_pigdm_reddiff.py

The reference algorithms (`algos/pgdm.py` PGDM, `algos/reddiff.py` REDDIFF) are built by their own
constructors from the reference's own `_configs/algo/*.yaml` defaults, with their `ClassifierGuidanceModel`
and `Diffusion` (`models/`); only the degradation is ours: the reference's `H_functions` base class
(`utils/degredations.py`, whose `H`, `Ht` and `H_pinv` it computes) over a decomposition in dps_jax's
spectral layout (`make_fixtures.spectral_h_functions`), on three operators (2 x 2 block averaging, a Gaussian
blur with singular values below 0.03 zeroed, random inpainting). 10 steps (`exp.num_steps`), images 16 x 16.
Every `torch.randn_like` draw is recorded; with --reuse the inputs and the draws of an existing fixture are
replayed, and the outputs recomputed (a regeneration check).

`pigdm_in2.npz`: PiGDM on the inpainting degradation RED-diff's README runs (`algo.deg=in2_*`), with the
reference's own `Inpainting2` (a dense mask, y = mask * x in its full size), where the reference puts y on the
observed pixels of x0_pred and zeroes the guidance there.
"""

from __future__ import annotations

import json
import os
import sys
import types

import numpy as np

from tools import make_fixtures as mf

CASES = {"sr2": "block_average", "blur": "gaussian_blur", "inpaint": "inpainting"}
NUM_STEPS = 10
SIZE, CHANNELS = 16, 3
REDDIFF_SIGMA = 0.05           # RED-diff's y is noisy (its loss does not use sigma); PiGDM's reference is noiseless


def package(name: str, directory: str):
    """An empty package `name` whose submodules load from `directory` (its real __init__ is never run: the
    reference's pull in hydra, distributed training and every algorithm)."""
    module = types.ModuleType(name)
    module.__path__ = [directory]
    sys.modules[name] = module
    return module


def import_reddiff(path: str):
    import torch

    for name in ("algos", "models", "utils"):
        package(name, os.path.join(path, name))
    original_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self           # the reference's Diffusion moves its tables to CUDA
    from algos.pgdm import PGDM
    from algos.reddiff import REDDIFF
    from models.classifier_guidance_model import ClassifierGuidanceModel
    from models.diffusion import Diffusion
    from omegaconf import OmegaConf
    from utils import degredations
    return types.SimpleNamespace(PGDM=PGDM, REDDIFF=REDDIFF, ClassifierGuidanceModel=ClassifierGuidanceModel,
                                 Diffusion=Diffusion, OmegaConf=OmegaConf, H_functions=degredations.H_functions,
                                 path=path, restore=lambda: setattr(torch.Tensor, "cuda", original_cuda))


def config(ref, algo: str, num_steps: int = NUM_STEPS):
    """The reference's defaults for `algo` (its yaml files), with our step count."""
    oc = ref.OmegaConf
    return oc.create({"algo": oc.load(os.path.join(ref.path, "_configs", "algo", f"{algo}.yaml")),
                      "exp": {**oc.to_container(oc.load(os.path.join(ref.path, "_configs", "exp", "default.yaml"))),
                              "num_steps": num_steps, "save_evolution": False}})


def timesteps(cfg):
    skip = (cfg.exp.start_step - cfg.exp.end_step) // cfg.exp.num_steps
    return list(range(cfg.exp.end_step, cfg.exp.start_step, skip))


def load_unet(official, fixtures):
    import torch

    cfg = json.loads(str(np.load(os.path.join(fixtures, "adm_ffhq_like.npz"))["config"]))
    model = official.unet.UNetModel(**cfg).eval()
    model.load_state_dict(torch.load(os.path.join(fixtures, "adm_ffhq_like.pt"), weights_only=True))
    return model


def inputs(name, old, rng):
    """The SVD, the image and y's noise: from `old` or drawn."""
    import torch

    if old is not None:
        sp = {k: old[k] for k in ("v_h", "v_w", "u_h", "u_w", "singulars", "observed")}
        ref, y_noise = torch.from_numpy(old["ref"]), torch.from_numpy(old["y_noise"])
    else:
        sp = mf.ddrm_spectral(CASES[name], SIZE, CHANNELS, rng)
        torch.manual_seed(int(rng.integers(2 ** 31)))
        m, n = sp["u_h"].shape[0], sp["u_w"].shape[0]
        ref = torch.rand(1, CHANNELS, SIZE, SIZE) * 2 - 1
        y_noise = torch.randn(1, CHANNELS * m * n)
    return sp, ref, y_noise


def build(ref, cls, algo_name, model, sp):
    """The reference algorithm `cls`, built by its own constructor from its own config, with our H_functions
    in place of its degradation (its module-level `build_degredation_model`); returns (algo, H, cfg)."""
    H, _ = mf.spectral_h_functions(ref, sp, CHANNELS)
    cfg = config(ref, algo_name)
    sys.modules[cls.__module__].build_degredation_model = lambda c: H
    algo = cls(ref.ClassifierGuidanceModel(model, None, ref.Diffusion(), cfg), cfg)
    return algo, H, cfg


def draws(old, key):
    return None if old is None else [np.asarray(a) for a in old[key]]


def make_pigdm(ref, model, out, name, reuse, rng):
    import torch

    old = mf.read(reuse, f"pigdm_{name}.npz")
    sp, img, y_noise = inputs(name, old, rng)
    algo, H, cfg = build(ref, ref.PGDM, "pgdm", model, sp)
    y_0 = H.H(img)
    ts = timesteps(cfg)
    replay = draws(old, "randn")
    with mf.cuda_on_cpu(), mf.recorded_randn_like(replay) as drawn:
        xs, x0s = algo.sample(torch.zeros_like(img), None, ts, y_0=y_0)
    m, n = sp["u_h"].shape[0], sp["u_w"].shape[0]
    arrays = dict(ref=img.numpy(), y_noise=y_noise.numpy(), y=y_0.numpy().reshape(1, CHANNELS, m, n),
                  randn=np.stack([d.numpy() for d in drawn]), xs=np.concatenate([x.numpy() for x in xs]),
                  x0s=np.concatenate([x.numpy() for x in x0s]), timesteps=np.asarray(ts, np.int64),
                  spec=np.array(json.dumps({**ref.OmegaConf.to_container(cfg.algo), "operator": CASES[name],
                                            "model": "adm_ffhq_like"})),
                  **{k: np.asarray(v, np.float32) for k, v in sp.items()})
    np.savez_compressed(os.path.join(out, f"pigdm_{name}.npz"), **arrays)


def make_pigdm_in2(ref, model, out, reuse, rng):
    import torch

    from utils import degredations

    old = mf.read(reuse, "pigdm_in2.npz")
    if old is not None:
        mask, img = old["mask"], torch.from_numpy(old["ref"])
    else:
        mask = (rng.uniform(size=(SIZE, SIZE, 1)) > 0.6).astype(np.float32)
        img = torch.rand(1, CHANNELS, SIZE, SIZE) * 2 - 1
    dense = torch.from_numpy(np.broadcast_to(mask, (SIZE, SIZE, CHANNELS)).transpose(2, 0, 1).reshape(1, -1).copy())
    H = degredations.Inpainting2(CHANNELS, SIZE, dense, torch.device("cpu"))
    H.set_indices(torch.zeros(1, dtype=torch.long))
    cfg = config(ref, "pgdm")
    cfg.algo.deg = "in2_fixture"
    sys.modules[ref.PGDM.__module__].build_degredation_model = lambda c: H
    algo = ref.PGDM(ref.ClassifierGuidanceModel(model, None, ref.Diffusion(), cfg), cfg)
    y_0 = H.H(img)
    ts = timesteps(cfg)
    with mf.cuda_on_cpu(), mf.recorded_randn_like(draws(old, "randn")) as drawn:
        xs, x0s = algo.sample(torch.zeros_like(img), None, ts, y_0=y_0)
    arrays = dict(ref=img.numpy(), mask=mask, y=y_0.numpy().reshape(1, CHANNELS, SIZE, SIZE),
                  randn=np.stack([d.numpy() for d in drawn]), xs=np.concatenate([x.numpy() for x in xs]),
                  x0s=np.concatenate([x.numpy() for x in x0s]), timesteps=np.asarray(ts, np.int64),
                  spec=np.array(json.dumps({**ref.OmegaConf.to_container(cfg.algo), "operator": "inpainting (in2)",
                                            "model": "adm_ffhq_like"})))
    np.savez_compressed(os.path.join(out, "pigdm_in2.npz"), **arrays)


def recording_adam(torch, trail):
    """torch.optim.Adam that appends a copy of its parameter to `trail` after every step (RED-diff returns
    only the end)."""
    class Adam(torch.optim.Adam):
        def step(self, *a, **k):
            out = super().step(*a, **k)
            trail.append(self.param_groups[0]["params"][0].detach().clone())
            return out
    return Adam


def make_reddiff(ref, model, out, name, reuse, rng):
    import torch

    old = mf.read(reuse, f"reddiff_{name}.npz")
    sp, img, y_noise = inputs(name, old, rng)
    algo, H, cfg = build(ref, ref.REDDIFF, "reddiff", model, sp)
    y_0 = H.H(img) + REDDIFF_SIGMA * y_noise
    ts = timesteps(cfg)
    replay = draws(old, "randn")
    trail = []
    original_adam = torch.optim.Adam
    torch.optim.Adam = recording_adam(torch, trail)
    try:
        with mf.cuda_on_cpu(), mf.recorded_randn_like(replay) as drawn:
            x0_pred, mu = algo.sample(torch.zeros_like(img), None, ts, y_0=y_0)
    finally:
        torch.optim.Adam = original_adam
    m, n = sp["u_h"].shape[0], sp["u_w"].shape[0]
    arrays = dict(ref=img.numpy(), y_noise=y_noise.numpy(), y=y_0.numpy().reshape(1, CHANNELS, m, n),
                  randn=np.stack([d.numpy() for d in drawn]), mus=np.concatenate([t.numpy() for t in trail]),
                  start=H.H_pinv(y_0).reshape(img.shape).numpy(),
                  x0_pred=x0_pred.detach().numpy(), mu=mu.detach().numpy(), timesteps=np.asarray(ts, np.int64),
                  spec=np.array(json.dumps({**ref.OmegaConf.to_container(cfg.algo), "operator": CASES[name],
                                            "sigma": REDDIFF_SIGMA, "model": "adm_ffhq_like"})),
                  **{k: np.asarray(v, np.float32) for k, v in sp.items()})
    np.savez_compressed(os.path.join(out, f"reddiff_{name}.npz"), **arrays)


# Through the reference's own degradation classes (utils/degredations.py) at settings the files above do not
# cover: 24 x 24 images, 15 steps (its get_timesteps: stride 66, 16 steps). SuperResolution (2 x 2 block means):
# PiGDM's y noiseless, RED-diff's with noise 0.1; Inpainting (its `inp_*` class, a dense (C, H, W) mask, half the
# pixels missing in every channel): RED-diff with noise 0.05.
OWN = dict(size=24, ratio=2, num_steps=15, reddiff_sigma=0.1)
OWN_INPAINT = dict(size=24, missing=0.5, num_steps=15, reddiff_sigma=0.05)


def make_own(ref, model, out, algo_name, reuse, rng, operator="sr2"):
    """PiGDM or RED-diff on the reference's own SuperResolution (or Inpainting) degradation."""
    import torch

    from utils import degredations

    settings = OWN if operator == "sr2" else OWN_INPAINT
    name = f"{'pigdm' if algo_name == 'pgdm' else algo_name}_{operator}_own"
    old = mf.read(reuse, f"{name}.npz")
    n = settings["size"]
    if old is not None:
        img, y_noise = torch.from_numpy(old["ref"]), torch.from_numpy(old["y_noise"])
        mask = old["mask"] if "mask" in old.files else None
    else:
        torch.manual_seed(int(rng.integers(2 ** 31)))
        img = torch.rand(1, CHANNELS, n, n) * 2 - 1
        mask = None
        if operator == "inpaint":
            mask = (rng.uniform(size=(n, n)) >= settings["missing"]).astype(np.float32)
        kept = CHANNELS * (n // OWN["ratio"]) ** 2 if operator == "sr2" else CHANNELS * int(mask.sum())
        y_noise = torch.randn(1, kept)
    if operator == "sr2":
        H = degredations.SuperResolution(CHANNELS, n, OWN["ratio"], torch.device("cpu"))
    else:
        dense = torch.from_numpy(np.broadcast_to(mask, (CHANNELS, n, n)).reshape(1, -1).copy())
        H = degredations.Inpainting(CHANNELS, n, dense, torch.device("cpu"))
        H.set_indices(torch.zeros(1, dtype=torch.long))
    cls = ref.PGDM if algo_name == "pgdm" else ref.REDDIFF
    cfg = config(ref, algo_name, settings["num_steps"])
    sys.modules[cls.__module__].build_degredation_model = lambda c: H
    algo = cls(ref.ClassifierGuidanceModel(model, None, ref.Diffusion(), cfg), cfg)
    sigma = 0.0 if algo_name == "pgdm" else settings["reddiff_sigma"]
    y_0 = H.H(img) + sigma * y_noise
    ts = timesteps(cfg)
    trail = []
    original_adam = torch.optim.Adam
    torch.optim.Adam = recording_adam(torch, trail)
    try:
        with mf.cuda_on_cpu(), mf.recorded_randn_like(draws(old, "randn")) as drawn:
            result = algo.sample(torch.zeros_like(img), None, ts, y_0=y_0)
    finally:
        torch.optim.Adam = original_adam
    arrays = dict(ref=img.numpy(), y_noise=y_noise.numpy(), y=y_0.numpy().reshape(-1),
                  randn=np.stack([d.numpy() for d in drawn]), timesteps=np.asarray(ts, np.int64),
                  spec=np.array(json.dumps({**ref.OmegaConf.to_container(cfg.algo), **settings, "sigma": sigma,
                                            "operator": f"{type(H).__name__} (its own class)",
                                            "model": "adm_ffhq_like"})))
    if mask is not None:
        arrays["mask"] = mask
    if algo_name == "pgdm":
        xs, x0s = result
        arrays.update(xs=np.concatenate([x.numpy() for x in xs]), x0s=np.concatenate([x.numpy() for x in x0s]))
    else:
        x0_pred, mu = result
        arrays.update(mus=np.concatenate([t.numpy() for t in trail]), start=H.H_pinv(y_0).reshape(img.shape).numpy(),
                      x0_pred=x0_pred.detach().numpy())
    np.savez_compressed(os.path.join(out, f"{name}.npz"), **arrays)


def main():
    args = mf.arguments(__doc__, 1, [("official", "a clone of DPS2022/diffusion-posterior-sampling (the UNet)"),
                                     ("reddiff", "a clone of NVlabs/RED-diff")]).parse_args()
    mf.start(args)

    import torch

    official = mf.import_official(args.official)
    model = load_unet(official, args.fixtures)
    ref = import_reddiff(args.reddiff)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    try:
        for name in CASES:
            make_pigdm(ref, model, args.out, name, args.reuse, rng)
            make_reddiff(ref, model, args.out, name, args.reuse, rng)
        make_pigdm_in2(ref, model, args.out, args.reuse, rng)
        for algo_name in ("pgdm", "reddiff"):
            make_own(ref, model, args.out, algo_name, args.reuse, rng)
        make_own(ref, model, args.out, "reddiff", args.reuse, rng, operator="inpaint")
    finally:
        ref.restore()
    print(f"wrote {len(CASES) * 2 + 4} files to {args.out}")
    if args.compare:
        mf.compare(args.out, args.compare)


if __name__ == "__main__":
    main()
