"""Regenerate tests/fixtures/ from the official PyTorch DPS code and DDRM's reference code (never copied:
imported from clones).

    # clones of DPS2022/diffusion-posterior-sampling and bahjat-kawar/ddrm, and torch (CPU is enough)
    pip install torch==2.13.0 numpy scipy matplotlib tqdm pyyaml scikit-image
    python -m tools.make_fixtures --official PATH --ddrm DDRM_PATH --reuse tests/fixtures --out /tmp/regen \
        --compare tests/fixtures
    DPS_JAX_FIXTURES=/tmp/regen python -m pytest tests          # the suite against the regenerated files

Two modes:
  --reuse DIR   the random inputs (network weights, x, t, class labels, x_T, the measurement y, the recorded
                noises, masks, the photograph, the custom kernel) are read from the fixture files in DIR, and
                every output is computed again by the official code. DPS trajectories are recomputed
                teacher-forced: step i starts from the recorded state xs[i-1] with the recorded noises (some
                of these random-network runs are chaotic, see tests/fixtures/README.md). This is the check
                that the shipped fixtures are what the official code computes.
  (default)     fresh inputs drawn from --seed (torch and numpy generators), trajectories free-running.
--compare DIR prints, for every array, the largest difference between the new file and DIR's.

What each file holds, and the tolerance the tests check it to: tests/fixtures/README.md. Which parts
need which reference: everything but ddrm_*.npz needs only the official DPS repository (its UNet is
guided-diffusion's); ddrm_*.npz (written only with --ddrm) runs DDRM's sampler on the same UNet;
the photograph for operators.npz comes from scikit-image (`skimage.data.astronaut`) in the default mode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import types

import numpy as np

from tools.reference import importable

ADM_CONFIGS = {
    # The published FFHQ 256 layout scaled down: one res block per level, attention at one level and in the
    # middle, fixed head width, scale-shift norm, residual up/down sampling, learned variance.
    "ffhq_like": dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                      attention_resolutions=[4], channel_mult=[1, 1, 2], num_heads=4, num_head_channels=16,
                      num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
                      use_new_attention_order=False, num_classes=None, dropout=0.0),
    # The ImageNet 256 layout scaled down: two res blocks per level, attention at several levels.
    "imagenet_like": dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=2,
                          attention_resolutions=[1, 2], channel_mult=[1, 1], num_heads=4, num_head_channels=16,
                          num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
                          use_new_attention_order=False, num_classes=None, dropout=0.0),
    # Every other option: conv up/down sampling, additive time embedding, head count, a separate head count
    # on the way up, the new q/k/v order, class conditioning, fixed variance, one channel.
    "variants": dict(image_size=16, in_channels=1, model_channels=32, out_channels=1, num_res_blocks=1,
                     attention_resolutions=[2], channel_mult=[1, 1], num_heads=2, num_head_channels=-1,
                     num_heads_upsample=4, use_scale_shift_norm=False, resblock_updown=False,
                     use_new_attention_order=True, num_classes=10, dropout=0.0),
}

TRAJECTORIES = {
    "ddpm_ps_inpaint_box": dict(sampler="ddpm", operator={"name": "inpainting"},
                                noise={"name": "gaussian", "sigma": 0.05}, scale=0.5, timestep_respacing="10"),
    "ddim_ps_gaussian_blur": dict(sampler="ddim", operator={"name": "gaussian_blur", "kernel_size": 5, "intensity": 1.0},
                                  noise={"name": "gaussian", "sigma": 0.05}, scale=0.3, timestep_respacing="10"),
    "ddpm_ps_sr2_poisson": dict(sampler="ddpm", operator={"name": "super_resolution", "in_shape": [1, 3, 16, 16],
                                                          "scale_factor": 2},
                                noise={"name": "poisson", "rate": 1.0}, scale=0.3, timestep_respacing="10"),
    "ddpm_ps_phase_retrieval": dict(sampler="ddpm", operator={"name": "phase_retrieval", "oversample": 2.0},
                                    noise={"name": "gaussian", "sigma": 0.05}, scale=1.0, timestep_respacing="10",
                                    pad=4),
    "ddpm_ps_sr2_gaussian_20steps": dict(sampler="ddpm", operator={"name": "super_resolution",
                                                                   "in_shape": [1, 3, 16, 16], "scale_factor": 2},
                                         noise={"name": "gaussian", "sigma": 0.05}, scale=0.3,
                                         timestep_respacing="20"),
    # Settings the runs above do not cover: 24 x 24 images, 15 steps (not a divisor of 1000), other noise levels.
    "ddpm_ps_sr2_24px_15steps": dict(sampler="ddpm", operator={"name": "super_resolution", "in_shape": [1, 3, 24, 24],
                                                               "scale_factor": 2},
                                     noise={"name": "gaussian", "sigma": 0.1}, scale=0.5, timestep_respacing="15",
                                     size=24),
    "ddim_ps_gaussian_blur_24px_15steps": dict(sampler="ddim", operator={"name": "gaussian_blur", "kernel_size": 7,
                                                                         "intensity": 1.5},
                                               noise={"name": "gaussian", "sigma": 0.02}, scale=0.4,
                                               timestep_respacing="15", size=24),
}
RESPACINGS = ["1000", "250", "100", "10", "ddim50", "ddim100", "10,20,30", "5,5"]
EXPLOIT_MARKER = "/tmp/dps_jax_pickle_exploit_marker"


# ---- the official code -------------------------------------------------------------------------

def import_official(path: str):
    """Import the official modules from a clone. Two of its imports are never used by what we call: the
    `motionblur` package (a kernel generator, not on PyPI) and `torchvision` (measurements.py takes only
    `torch` from it); both are stood in for by empty modules."""
    import torch

    importable(path)
    motionblur = types.ModuleType("motionblur")
    motionblur.motionblur = types.ModuleType("motionblur.motionblur")
    motionblur.motionblur.Kernel = None
    sys.modules.setdefault("motionblur", motionblur)
    sys.modules.setdefault("motionblur.motionblur", motionblur.motionblur)
    torchvision = types.ModuleType("torchvision")
    torchvision.torch = torch
    sys.modules.setdefault("torchvision", torchvision)
    from guided_diffusion import condition_methods, gaussian_diffusion, measurements, unet
    from util import img_utils, resizer
    return types.SimpleNamespace(unet=unet, diffusion=gaussian_diffusion, measurements=measurements,
                                 conditioning=condition_methods, img_utils=img_utils, resizer=resizer)


@contextlib.contextmanager
def recorded_randn_like(replay=None):
    """Route torch.randn_like through a list: record every draw, or (replay) return the given arrays in order."""
    import torch

    original, drawn = torch.randn_like, []

    def randn_like(x, *args, **kwargs):
        if replay is not None:
            value = torch.as_tensor(replay.pop(0), dtype=x.dtype).reshape(x.shape)
        else:
            value = original(x, *args, **kwargs)
        drawn.append(value.detach().clone())
        return value

    torch.randn_like = randn_like
    try:
        yield drawn
    finally:
        torch.randn_like = original


def read(directory, name):
    """The fixture `name` of the --reuse directory; None (fresh inputs) without one or if it has no such file."""
    if directory is None:
        return None
    if not os.path.exists(os.path.join(directory, name)):
        print(f"{name}: not in {directory}; drawing fresh inputs")
        return None
    return np.load(os.path.join(directory, name))


# ---- ADM UNet ----------------------------------------------------------------------------------

def randomise(model, rng):
    """Every parameter random, none zero: weights N(0, 1 / fan_in), biases N(0, 0.1^2), GroupNorm scales
    1 + N(0, 0.1^2) (guided-diffusion initialises some output layers to zero, which would hide them)."""
    import torch

    def fill(p, values):
        p.copy_(torch.from_numpy(values.astype(np.float32)))

    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.GroupNorm) and name == "weight":
                    fill(p, 1 + rng.normal(0, 0.1, p.shape))
                elif p.ndim > 1:
                    fill(p, rng.normal(0, 1 / np.sqrt(np.prod(p.shape[1:])), p.shape))
                else:
                    fill(p, rng.normal(0, 0.1, p.shape))


def make_adm(official, out, reuse, rng):
    import torch

    models = {}
    for name, cfg in ADM_CONFIGS.items():
        old = read(reuse, f"adm_{name}.npz")
        if old is not None:
            cfg = json.loads(str(old["config"]))
        model = official.unet.UNetModel(**cfg).eval()
        if old is not None:
            model.load_state_dict(torch.load(os.path.join(reuse, f"adm_{name}.pt"), weights_only=True))
            x, t = old["x"], old["t"]
            y = old["y"] if "y" in old.files else None
        else:
            randomise(model, rng)
            x = rng.standard_normal((2, cfg["in_channels"], 16, 16)).astype(np.float32)
            t = np.array([3, 999], np.int64)
            y = rng.integers(0, cfg["num_classes"], 2).astype(np.int64) if cfg["num_classes"] else None
        with torch.no_grad():
            o = model(torch.from_numpy(x), torch.from_numpy(t), None if y is None else torch.from_numpy(y))
        arrays = dict(x=x, t=t, out=o.numpy(), config=np.array(json.dumps(cfg)))
        if y is not None:
            arrays["y"] = y
        np.savez_compressed(os.path.join(out, f"adm_{name}.npz"), **arrays)
        state = model.state_dict()
        torch.save(state, os.path.join(out, f"adm_{name}.pt"))
        models[name] = (model, state)
    _, state = models["variants"]
    torch.save(state, os.path.join(out, "adm_variants_legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save({k: v.half() for k, v in state.items()}, os.path.join(out, "adm_variants_fp16.pt"))
    return models


def make_hostile(out, models):
    """Three files a safe reader must refuse with a clear error."""
    import torch

    class Exploit:                        # unpickling it would run a shell command
        def __reduce__(self):
            return os.system, (f"touch {EXPLOIT_MARKER}",)

    torch.save({"time_embed.0.weight": torch.zeros(4, 4), "time_embed.0.bias": Exploit()},
               os.path.join(out, "hostile_exploit.pt"))
    with open(os.path.join(out, "adm_variants.pt"), "rb") as f:
        data = f.read()
    with open(os.path.join(out, "hostile_truncated.pt"), "wb") as f:
        f.write(data[:len(data) // 2])
    state = dict(models["variants"][1])
    del state["out.2.bias"]                                                    # one key missing
    state["input_blocks.0.0.weight"] = state["input_blocks.0.0.weight"][:, :, :2, :]    # one wrong shape
    torch.save(state, os.path.join(out, "hostile_wrong_shapes.pt"))


# ---- schedules ---------------------------------------------------------------------------------

def make_schedules(official, out):
    d = official.diffusion
    arrays = {}
    for schedule in ("linear", "cosine"):
        g = d.GaussianDiffusion(betas=d.get_named_beta_schedule(schedule, 1000), model_mean_type="epsilon",
                                model_var_type="learned_range", dynamic_threshold=False, clip_denoised=True,
                                rescale_timesteps=False)
        for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                  "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
            arrays[f"{schedule}_{k}"] = np.asarray(getattr(g, k), np.float64)
    for spec in RESPACINGS:
        s = d.create_sampler(sampler="ddpm", steps=1000, noise_schedule="linear", model_mean_type="epsilon",
                             model_var_type="learned_range", dynamic_threshold=False, clip_denoised=True,
                             rescale_timesteps=False, timestep_respacing=spec)
        arrays[f"respace_{spec}"] = np.asarray(s.timestep_map, np.int64)
        arrays[f"respace_{spec}_betas"] = np.asarray(s.betas, np.float64)
    np.savez_compressed(os.path.join(out, "diffusion_schedules.npz"), **arrays)


# ---- DPS trajectories --------------------------------------------------------------------------

def make_trajectory(official, out, name, spec, model, reuse, rng):
    """A short reverse run of the official sampler with `ps` conditioning, recorded step by step."""
    import torch

    old = read(reuse, f"dps_{name}.npz")
    sampler = official.diffusion.create_sampler(
        sampler=spec["sampler"], steps=1000, noise_schedule="linear", model_mean_type="epsilon",
        model_var_type="learned_range", dynamic_threshold=False, clip_denoised=True, rescale_timesteps=False,
        timestep_respacing=spec["timestep_respacing"])
    opts = {k: v for k, v in spec["operator"].items() if k != "name"}
    operator = official.measurements.get_operator(spec["operator"]["name"], device="cpu", **opts)
    if spec.get("pad") is not None:
        operator.pad = spec["pad"]                 # its padding is written for 256 x 256 images
    noise_opts = {k: v for k, v in spec["noise"].items() if k != "name"}
    noiser = official.measurements.get_noise(spec["noise"]["name"], **noise_opts)
    cond = official.conditioning.get_conditioning_method("ps", operator, noiser, scale=spec["scale"])

    if old is not None:
        ref, y, x_T = (torch.from_numpy(old[k]) for k in ("ref", "y", "x_T"))
        mask = torch.from_numpy(old["mask"]) if "mask" in old.files else None
    else:
        torch.manual_seed(int(rng.integers(2 ** 31)))
        np.random.seed(int(rng.integers(2 ** 31)))          # the official Poisson noise draws from numpy
        size = spec.get("size", 16)
        ref = torch.rand(1, 3, size, size) * 2 - 1
        mask = None
        if spec["operator"]["name"] == "inpainting":
            mask = torch.ones(1, 1, size, size)
            mask[..., 5:11, 4:10] = 0
        with torch.no_grad():          # the blur's kernel is a parameter: y must not carry its graph
            y = noiser(operator.forward(ref, mask=mask) if mask is not None else operator.forward(ref))
        x_T = torch.randn(1, 3, size, size)
    extra = {} if mask is None else {"mask": mask}

    n = sampler.num_timesteps
    replay = None
    if old is not None:        # the recorded noises, in the order the official step draws them
        replay = [a for i in range(n) for a in (old["noise_x"][i], old["noise_y"][i])]
    xs, x0s, dist = [], [], []
    img = x_T
    with recorded_randn_like(replay) as drawn:
        for i, idx in enumerate(range(n)[::-1]):
            if old is not None:
                img = torch.from_numpy(old["xs"][i - 1][None]) if i else x_T          # teacher-forced
            time = torch.tensor([idx])
            img = img.clone().requires_grad_()
            o = sampler.p_sample(x=img, t=time, model=model)
            noisy = sampler.q_sample(y, t=time)
            img, d = cond.conditioning(x_t=o["sample"], measurement=y, noisy_measurement=noisy, x_prev=img,
                                       x_0_hat=o["pred_xstart"], **extra)
            img = img.detach()
            xs.append(img[0].numpy())
            x0s.append(o["pred_xstart"][0].detach().numpy())
            dist.append(float(d.detach()))
    arrays = dict(ref=ref.numpy(), y=y.numpy().astype(np.float32), x_T=x_T.numpy(),
                  noise_x=np.stack([drawn[2 * i].numpy() for i in range(n)]),
                  noise_y=np.stack([drawn[2 * i + 1].numpy() for i in range(n)]),
                  timesteps=np.asarray(sampler.timestep_map, np.int64), xs=np.stack(xs), pred_xstart=np.stack(x0s),
                  distance=np.asarray(dist, np.float64), sample=xs[-1][None],
                  spec=np.array(json.dumps({"sampler": spec["sampler"], "operator": spec["operator"],
                                            "noise": spec["noise"], "method": "ps", "scale": spec["scale"],
                                            "timestep_respacing": spec["timestep_respacing"],
                                            "model": "adm_ffhq_like", "pad": spec.get("pad"),
                                            "size": spec.get("size", 16)})))
    if mask is not None:
        arrays["mask"] = mask.numpy()
    np.savez_compressed(os.path.join(out, f"dps_{name}.npz"), **arrays)


# ---- operators ---------------------------------------------------------------------------------

def make_operators(official, out, reuse, rng):
    import torch

    old = read(reuse, "operators.npz")
    if old is not None:
        x = old["x"]
        nonsquare, pr_in, custom, box = old["sr4_nonsquare_in"], old["phase_retrieval_in"], old["custom61_kernel"], old["box_mask"]
    else:
        from skimage import data as skdata
        photo = skdata.astronaut().astype(np.float32) / 127.5 - 1          # 512 x 512 RGB, public domain
        x = photo.reshape(128, 4, 128, 4, 3).mean(axis=(1, 3)).transpose(2, 0, 1)[None]    # 4 x 4 block means
        nonsquare, pr_in = x[..., 10:110, 30:90], x[..., 32:96, 32:96]
        custom = rng.uniform(0, 1, (61, 61)).astype(np.float32) * np.tri(61, 61, 5, dtype=np.float32)
        custom /= custom.sum()
        box = np.ones_like(x)
        box[..., 40:90, 30:100] = 0
    xt = torch.from_numpy(x)
    arrays = {"x": x}
    for f in (2, 4, 8):
        op = official.measurements.get_operator("super_resolution", in_shape=x.shape, scale_factor=f, device="cpu")
        down = op.forward(xt)
        arrays[f"sr{f}_down"], arrays[f"sr{f}_up_of_down"] = down.numpy(), op.transpose(down).numpy()
    op = official.measurements.get_operator("super_resolution", in_shape=nonsquare.shape, scale_factor=4, device="cpu")
    arrays["sr4_nonsquare_in"], arrays["sr4_nonsquare_down"] = nonsquare, op.forward(torch.from_numpy(nonsquare)).numpy()
    gauss = official.measurements.get_operator("gaussian_blur", kernel_size=61, intensity=3.0, device="cpu")
    arrays["gauss61_kernel"] = gauss.get_kernel()[0, 0].numpy().astype(np.float64)
    arrays["gauss61_blur"] = gauss.forward(xt).detach().numpy()
    blur = official.img_utils.Blurkernel(blur_type="gaussian", kernel_size=61, std=3.0, device="cpu")
    blur.update_weights(torch.from_numpy(custom))
    arrays["custom61_kernel"], arrays["custom61_blur"] = custom, blur(xt).detach().numpy()
    pr = official.measurements.get_operator("phase_retrieval", oversample=2.0, device="cpu")
    pr.pad = int(2.0 / 8 * pr_in.shape[-1])
    arrays["phase_retrieval_in"] = pr_in
    arrays["phase_retrieval_amplitude"] = pr.forward(torch.from_numpy(pr_in)).numpy()
    k = official.img_utils.fft2_m(torch.from_numpy(x[:, :1, :32, :32]))
    arrays["fft2_centered_ortho"] = torch.view_as_real(k).numpy()
    inpaint = official.measurements.get_operator("inpainting", device="cpu")
    arrays["box_mask"], arrays["box_masked"] = box, inpaint.forward(xt, mask=torch.from_numpy(box)).numpy()
    np.savez_compressed(os.path.join(out, "operators.npz"), **{k: np.asarray(v) for k, v in arrays.items()})


# ---- DDRM trajectories (reference: a clone of bahjat-kawar/ddrm) ---------------------------------

DDRM_CASES = {
    # 2 x 2 block averaging, DDRM's own super-resolution operator: a (8, 16) factor per axis.
    "sr2": dict(operator="block_average", eta=0.85, eta_b=1.0, sigma_0=0.05),
    # Gaussian blur (std 2 pixels, 9 taps, reflection at the borders) per axis: square, with 1-D singular
    # values below 0.03 set to zero as the reference's own blur operators do; other etas.
    "blur": dict(operator="gaussian_blur", eta=0.5, eta_b=0.8, sigma_0=0.05),
    # Random pixels missing (the same in every channel).
    "inpaint": dict(operator="inpainting", eta=0.85, eta_b=1.0, sigma_0=0.1),
}
DDRM_STEPS = 20
SINGULAR_CUTOFF = 0.03


def import_ddrm(path: str):
    """The reference's sampler, `functions/denoising.py`, loaded by file path (the clone's other packages
    would clash with the DPS clone's `guided_diffusion`); its torchvision import is never used here."""
    import importlib.util

    import torch

    torchvision = sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    torchvision.torch = torch
    utils = types.ModuleType("torchvision.utils")
    torchvision.utils = utils
    sys.modules.setdefault("torchvision.utils", utils)
    spec = importlib.util.spec_from_file_location("ddrm_denoising", os.path.join(path, "functions", "denoising.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    spec = importlib.util.spec_from_file_location("ddrm_svd", os.path.join(path, "functions", "svd_replacement.py"))
    svd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(svd)
    return types.SimpleNamespace(denoising=module, H_functions=svd.H_functions, svd=svd)


@contextlib.contextmanager
def cuda_on_cpu():
    """The reference sampler moves each state to 'cuda'; on a machine without CUDA, to the CPU instead."""
    import torch

    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if a == "cuda" else a for a in args)
        return original(self, *args, **kwargs)

    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.to = original


def reflect_gaussian_matrix(length: int, std: float, taps: int) -> np.ndarray:
    """(length, length): 1-D correlation with a normalised Gaussian after reflection padding."""
    g = np.exp(-0.5 * (np.arange(taps) - taps // 2) ** 2 / std ** 2)
    g /= g.sum()
    mat = np.zeros((length, length))
    for i in range(length):
        for k in range(taps):
            j = i + k - taps // 2
            j = -j if j < 0 else (2 * (length - 1) - j if j >= length else j)
            mat[i, j] += g[k]
    return mat


def ddrm_spectral(operator: str, size: int, channels: int, rng):
    """The SVD of A in dps_jax's spectral layout (operators/spectral.py), float64 arrays:
    v_h, v_w (size, size), u_h, u_w (m, m), singulars and observed (size, size, 1 or channels)."""
    if operator == "inpainting":
        mask = (rng.uniform(size=(size, size, 1)) > 0.6).astype(np.float64)
        eye = np.eye(size)
        return dict(v_h=eye, v_w=eye, u_h=eye, u_w=eye, singulars=mask, observed=mask)
    if operator == "block_average":
        factor = np.kron(np.eye(size // 2), np.full((1, 2), 0.5))
    else:
        factor = reflect_gaussian_matrix(size, 2.0, 9)
    u, s, vt = np.linalg.svd(factor, full_matrices=True)
    s = np.where(s < SINGULAR_CUTOFF, 0.0, s)
    m = factor.shape[0]
    singulars, observed = np.zeros((size, size, 1)), np.zeros((size, size, 1))
    singulars[:m, :m, 0] = np.outer(s, s)
    observed[:m, :m, 0] = 1.0
    return dict(v_h=vt.T, v_w=vt.T, u_h=u, u_w=u, singulars=singulars, observed=observed)


def spectral_h_functions(ddrm, sp, channels: int):
    """The reference's H_functions interface over a decomposition in dps_jax's layout.

    The reference flattens images as (C, H, W) and keeps the coordinates that have a singular value
    first; here those are the observed coordinates of the (H, W, C) spectral array in row-major order,
    then the rest. `perm[k]` is the (H, W, C)-flat index of reference coordinate k."""
    import torch

    h, w = sp["v_h"].shape[0], sp["v_w"].shape[0]
    m, n = sp["u_h"].shape[0], sp["u_w"].shape[0]
    observed = np.broadcast_to(sp["observed"], (h, w, channels)).reshape(-1) > 0
    perm = np.concatenate([np.flatnonzero(observed), np.flatnonzero(~observed)])
    obs = perm[:observed.sum()]
    t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sp.items()}
    singulars = torch.from_numpy(np.broadcast_to(sp["singulars"], (h, w, channels)).reshape(-1)[obs].astype(np.float32))
    perm_t, obs_t = torch.from_numpy(perm), torch.from_numpy(obs)

    def to_hwc(vec, hh, ww):
        return vec.reshape(vec.shape[0], channels, hh, ww).permute(0, 2, 3, 1)

    def to_flat(img):
        return img.permute(0, 3, 1, 2).reshape(img.shape[0], -1)

    class Spectral(ddrm.H_functions):
        def Vt(self, vec):
            v = torch.einsum("hi,bhwc,wj->bijc", t["v_h"], to_hwc(vec, h, w), t["v_w"])
            return v.reshape(v.shape[0], -1)[:, perm_t]

        def V(self, vec):
            full = torch.zeros_like(vec)
            full[:, perm_t] = vec
            img = torch.einsum("hi,bijc,wj->bhwc", t["v_h"], full.reshape(-1, h, w, channels), t["v_w"])
            return to_flat(img)

        def Ut(self, vec):
            uy = torch.einsum("mi,bmnc,nj->bijc", t["u_h"], to_hwc(vec, m, n), t["u_w"])
            full = torch.zeros(vec.shape[0], h, w, channels)
            full[:, :m, :n] = uy
            return full.reshape(vec.shape[0], -1)[:, obs_t]

        def U(self, vec):
            full = torch.zeros(vec.shape[0], h * w * channels)
            full[:, obs_t] = vec
            v = full.reshape(-1, h, w, channels)[:, :m, :n]
            return to_flat(torch.einsum("mi,bijc,nj->bmnc", t["u_h"], v, t["u_w"]))

        def singulars(self):
            return singulars

        def add_zeros(self, vec):
            out = torch.zeros(vec.shape[0], h * w * channels)
            out[:, :vec.shape[1]] = vec
            return out

    return Spectral(), perm


def ddrm_cases(ddrm, betas, seq, singulars, sigma_0):
    """Per reverse step, which observed coordinates the reference treats as noisier than y (before) and as less
    noisy (after), as its sampler decides it: [(before, after)] boolean arrays over the singular values."""
    import torch

    cases = []
    for j in reversed([-1] + seq[:-1]):
        at_next = ddrm.denoising.compute_alpha(betas, torch.tensor([j]))[0, 0, 0, 0]
        sigma_next = (1 - at_next).sqrt() / at_next.sqrt()
        cases.append(((singulars * sigma_next > sigma_0).numpy(), (singulars * sigma_next < sigma_0).numpy()))
    return cases


def ddrm_replay(z_steps, cases, n_obs):
    """The reference's three draws of each step from per-coordinate noises z (its spectral order): every
    coordinate a draw's case uses has its value; the values no case uses do not change the result."""
    replay = []
    for z, (before, after) in zip(z_steps, cases):
        replay += [z, z[:n_obs][after], z[:n_obs]]
    return replay


def ddrm_combined(drawn, cases, n_obs):
    """The inverse of `ddrm_replay`: per step, on every coordinate the draw its case used (the reference draws
    three arrays: all coordinates; those where y is less noisy; all of U^T y)."""
    out = []
    for i, (before, after) in enumerate(cases):
        r1, r2, r3 = (drawn[3 * i + q].numpy().reshape(-1) for q in range(3))
        z = r1.copy()
        z[:n_obs][after] = r2
        z[:n_obs][before] = r3[before]
        out.append(z)
    return out


def make_ddrm(ddrm, out, name, case, model, reuse, rng):
    """One reference DDRM run (20 steps), with every noise it draws mapped to dps_jax's spectral layout."""
    import torch

    old = read(reuse, f"ddrm_{name}.npz")
    size, channels = 16, 3
    if old is not None:
        sp = {k: old[k] for k in ("v_h", "v_w", "u_h", "u_w", "singulars", "observed")}
    else:
        sp = ddrm_spectral(case["operator"], size, channels, rng)
    H, perm = spectral_h_functions(ddrm, sp, channels)
    sigma_0 = case["sigma_0"]
    m, n = sp["u_h"].shape[0], sp["u_w"].shape[0]
    if old is not None:
        ref, y_noise, x_T_noise = (torch.from_numpy(old[k]) for k in ("ref", "y_noise", "z_init_reference"))
    else:
        torch.manual_seed(int(rng.integers(2 ** 31)))
        ref = torch.rand(1, channels, size, size) * 2 - 1
        y_noise = torch.randn(1, channels * m * n)
        x_T_noise = torch.randn(1, channels, size, size)
    y_0 = H.H(ref) + sigma_0 * y_noise
    betas = torch.from_numpy(np.linspace(1e-4, 0.02, 1000, dtype=np.float64)).float()
    seq = list(range(0, 1000, 1000 // DDRM_STEPS))
    s = H.singulars()
    n_obs, dim = len(s), channels * size * size
    cases = ddrm_cases(ddrm, betas, seq, s, sigma_0)
    replay = None
    if old is not None:
        replay = ddrm_replay([z_hwc.reshape(-1)[perm] for z_hwc in old["z_steps"]], cases, n_obs)
    with torch.no_grad(), cuda_on_cpu(), recorded_randn_like(replay) as drawn:
        xs, x0_preds = ddrm.denoising.efficient_generalized_steps(
            x_T_noise.clone(), seq, model, betas, H, y_0, sigma_0, etaB=case["eta_b"], etaA=case["eta"],
            etaC=case["eta"])
    # in dps_jax's (H, W, C) spectral layout
    z_steps = []
    for z in ddrm_combined(drawn, cases, n_obs):
        hwc = np.zeros(dim, np.float32)
        hwc[perm] = z
        z_steps.append(hwc.reshape(size, size, channels))
    z_init = np.zeros(dim, np.float32)
    z_init[perm] = x_T_noise.numpy().reshape(-1)
    arrays = dict(
        ref=ref.numpy(), y=y_0.numpy().reshape(1, channels, m, n), y_noise=y_noise.numpy(),
        z_init_reference=x_T_noise.numpy(), z_init=z_init.reshape(size, size, channels), z_steps=np.stack(z_steps),
        xs=np.concatenate([x.numpy() for x in xs]), x0_preds=np.concatenate([x.numpy() for x in x0_preds]),
        timesteps=np.asarray(seq, np.int64),
        spec=np.array(json.dumps({**case, "steps": DDRM_STEPS, "cutoff": SINGULAR_CUTOFF, "model": "adm_ffhq_like"})),
        **{k: np.asarray(v, np.float32) for k, v in sp.items()})
    np.savez_compressed(os.path.join(out, f"ddrm_{name}.npz"), **arrays)


# DDRM through its own operator classes (functions/svd_replacement.py) and its runner's step grid, at settings the
# files above do not cover: 24 x 24 images, 15 steps (the runner's stride 1000 // 15 = 66: 16 steps), other etas
# and noise levels. The noises (on each coordinate the draw its case uses) are stored as images, mapped through the
# reference's V: a test maps them into dps_jax's spectral layout of its own operator, and --reuse back through V^T.
DDRM_OWN_CASES = {
    "sr2_own": dict(operator="SuperResolution", ratio=2, eta=1.0, eta_b=0.8, sigma_0=0.1, steps=15, size=24),
    "inpaint_own": dict(operator="Inpainting", missing=0.5, eta=0.5, eta_b=1.0, sigma_0=0.02, steps=15, size=24),
}


def make_ddrm_own(ddrm, out, name, case, model, reuse, rng):
    """One reference DDRM run on the reference's own H_functions class, noises recorded per coordinate."""
    import torch

    old = read(reuse, f"ddrm_{name}.npz")
    size, channels = case["size"], 3
    to_image = lambda H, z: H.V(z.reshape(1, -1)).numpy().reshape(channels, size, size).transpose(1, 2, 0)
    from_image = lambda H, img: H.Vt(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None])[0]
    if old is not None:
        ref, y_noise = (torch.from_numpy(old[k]) for k in ("ref", "y_noise"))
        missing = torch.from_numpy(old["missing_indices"]) if "missing_indices" in old.files else None
    else:
        torch.manual_seed(int(rng.integers(2 ** 31)))
        ref = torch.rand(1, channels, size, size) * 2 - 1
        missing = None
        if case["operator"] == "Inpainting":     # the reference's index order: pixel-major, channels interleaved
            pixels = torch.randperm(size * size)[: int(case["missing"] * size * size)]
            missing = torch.sort(torch.cat([pixels * channels + c for c in range(channels)]))[0]
        y_noise = None
        x_T_noise = torch.randn(1, channels, size, size)
    if case["operator"] == "SuperResolution":
        H = ddrm.svd.SuperResolution(channels, size, case["ratio"], "cpu")
    else:
        H = ddrm.svd.Inpainting(channels, size, missing, "cpu")
    if old is not None:       # the stored images of the noises, back in the reference's coordinates (V is orthogonal)
        x_T_noise = from_image(H, old["z_init_image"]).reshape(1, channels, size, size)
    y_clean = H.H(ref)
    if y_noise is None:
        y_noise = torch.randn_like(y_clean)
    sigma_0 = case["sigma_0"]
    y_0 = y_clean + sigma_0 * y_noise
    betas = torch.from_numpy(np.linspace(1e-4, 0.02, 1000, dtype=np.float64)).float()
    seq = list(range(0, 1000, 1000 // case["steps"]))          # the runner's grid (runners/diffusion.py)
    n_obs = len(H.singulars())
    cases = ddrm_cases(ddrm, betas, seq, H.singulars(), sigma_0)
    replay = None
    if old is not None:
        replay = ddrm_replay([from_image(H, img).numpy() for img in old["z_steps_image"]], cases, n_obs)
    with torch.no_grad(), cuda_on_cpu(), recorded_randn_like(replay) as drawn:
        xs, x0_preds = ddrm.denoising.efficient_generalized_steps(
            x_T_noise.clone(), seq, model, betas, H, y_0, sigma_0, etaB=case["eta_b"], etaA=case["eta"],
            etaC=case["eta"])
    z_img = [to_image(H, torch.from_numpy(z)) for z in ddrm_combined(drawn, cases, n_obs)]
    arrays = dict(
        ref=ref.numpy(), y=y_0.numpy().reshape(-1), y_noise=y_noise.numpy(),
        z_init_image=to_image(H, x_T_noise), z_steps_image=np.stack(z_img).astype(np.float32),
        xs=np.concatenate([x.numpy() for x in xs]), x0_preds=np.concatenate([x.numpy() for x in x0_preds]),
        timesteps=np.asarray(seq, np.int64),
        spec=np.array(json.dumps({**case, "model": "adm_ffhq_like"})))
    if missing is not None:
        arrays["missing_indices"] = missing.numpy()
    np.savez_compressed(os.path.join(out, f"ddrm_{name}.npz"), **arrays)


# ---- comparison --------------------------------------------------------------------------------

def compare(out, ref_dir):
    """Largest absolute (and relative to the reference's scale) difference of every array in every .npz."""
    worst = 0.0
    for name in sorted(os.listdir(out)):
        if not name.endswith(".npz") or not os.path.exists(os.path.join(ref_dir, name)):
            continue
        a, b = np.load(os.path.join(out, name)), np.load(os.path.join(ref_dir, name))
        for k in sorted(set(a.files) | set(b.files)):
            if k not in a.files or k not in b.files:
                print(f"{name:<38}{k:<28} only in {'new' if k in a.files else 'reference'}")
                continue
            u, v = a[k], b[k]
            if u.dtype.kind in "US":
                same = json.loads(str(u)) == json.loads(str(v))
                print(f"{name:<38}{k:<28} {'same' if same else 'DIFFERENT'}")
                continue
            if u.shape != v.shape:
                print(f"{name:<38}{k:<28} shape {u.shape} vs {v.shape}")
                continue
            diff = float(np.abs(u.astype(np.float64) - v).max()) if u.size else 0.0
            rel = diff / max(float(np.abs(v).max()), 1e-30)
            worst = max(worst, rel if k not in ("noise_x", "noise_y") else 0.0)
            print(f"{name:<38}{k:<28} max |diff| {diff:.2e}  relative {rel:.2e}")
    for name in sorted(os.listdir(out)):
        if name.endswith(".pt") and os.path.exists(os.path.join(ref_dir, name)):
            import torch
            if name.startswith("hostile"):
                same = os.path.getsize(os.path.join(out, name)) == os.path.getsize(os.path.join(ref_dir, name))
                print(f"{name:<38}{'(file)':<28} {'same size' if same else 'size differs'}")
                continue
            a = torch.load(os.path.join(out, name), weights_only=True)
            b = torch.load(os.path.join(ref_dir, name), weights_only=True)
            diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in b) if set(a) == set(b) else float("inf")
            print(f"{name:<38}{'(state_dict)':<28} max |diff| {diff:.2e}")
    print(f"largest relative difference of a computed array: {worst:.2e}")


# ---- what every fixture script shares -----------------------------------------------------------

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def arguments(doc: str, seed: int, references, network: bool = True) -> argparse.ArgumentParser:
    """The command line of a fixture script: its reference clones (`references`: (name, help) pairs, each a
    required --name), --out, --reuse, --seed, --compare and, with `network`, --fixtures (where the
    adm_ffhq_like network the script runs is)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, help in references:
        ap.add_argument(f"--{name}", required=True, help=help)
    if network:
        ap.add_argument("--fixtures", default=FIXTURES, help="where adm_ffhq_like.{pt,npz} are")
    ap.add_argument("--out", required=True, help="where to write the fixtures (created)")
    ap.add_argument("--reuse", default=None, help="replay the inputs and draws of the fixtures in this directory")
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--compare", default=None, help="print differences against the fixtures in this directory")
    return ap


def start(args) -> None:
    """torch on every core, and --out created; it must not be --reuse (the inputs would be overwritten while
    read)."""
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if args.reuse and os.path.abspath(args.out) == os.path.abspath(args.reuse):
        sys.exit("error: --out must differ from --reuse (the inputs would be overwritten while read)")
    os.makedirs(args.out, exist_ok=True)


def main():
    ap = arguments(__doc__, 0, [("official", "a clone of DPS2022/diffusion-posterior-sampling")], network=False)
    ap.add_argument("--ddrm", default=None, help="a clone of bahjat-kawar/ddrm: also write the ddrm_*.npz files")
    args = ap.parse_args()

    import torch

    start(args)
    official = import_official(args.official)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    models = make_adm(official, args.out, args.reuse, rng)
    make_hostile(args.out, models)
    make_schedules(official, args.out)
    for name, spec in TRAJECTORIES.items():
        make_trajectory(official, args.out, name, spec, models["ffhq_like"][0], args.reuse, rng)
    make_operators(official, args.out, args.reuse, rng)
    if args.ddrm:
        ddrm = import_ddrm(args.ddrm)
        for name, case in DDRM_CASES.items():
            make_ddrm(ddrm, args.out, name, case, models["ffhq_like"][0], args.reuse, rng)
        for name, case in DDRM_OWN_CASES.items():
            make_ddrm_own(ddrm, args.out, name, case, models["ffhq_like"][0], args.reuse, rng)
    print(f"wrote {len(os.listdir(args.out))} files to {args.out}")
    if args.compare:
        compare(args.out, args.compare)


if __name__ == "__main__":
    main()
