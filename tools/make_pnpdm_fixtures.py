"""PnP-DM fixtures from the authors' code (zihuiwu/PnP-DM-public: `Denoiser_EDM`, `PnPEDMBatch`, its operators).

    pip install torch numpy matplotlib tqdm pyyaml     # what the reference's modules import
    python -m tools.make_pnpdm_fixtures --pnpdm PNPDM_PATH --out tests/fixtures

The network is a random map eps(x, t) = tanh(W x + b t / 1000) on 4 x 4 x 1 images (8 x 8 for phase
retrieval), wrapped in the reference's own `VPPrecond` (so D(x; sigma) is read as dps_jax's
`prior.x0_at_sigma` reads a DDPM network). Every torch.randn_like draw is recorded. Saved:

- prior step: `Denoiser_EDM` for each discretisation (vp, ve, iddpm, edm) x (sde, pfode), 12 levels, from z
  at rho = 0.5 and 5: its t grid, draws and output;
- likelihood step: the mean of `proximal_generator` (draws set to zero) of the SVD super-resolution (x2) and
  of the circular Gaussian blur (3 x 3, std 1; its matrix saved), and 5 Langevin steps of phase retrieval
  (its draws and result);
- a chain: `PnPEDMBatch` for 4 iterations (rho 10 decaying by 0.3 to 0.3, edm, sde, 12 levels) on the blur:
  per iteration x, the likelihood step's mean and draw z, the prior step's draws and the next x.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from tools import make_fixtures as mf
from tools.reference import importable

SHAPE, PR_SIZE, LEVELS, SIGMA_Y = (1, 1, 4, 4), 8, 12, 0.05
MODES = {"vp": dict(solver="euler", discretization="vp", schedule="vp", scaling="vp", epsilon_s=1e-3),
         "ve": dict(solver="euler", discretization="ve", schedule="ve", scaling="none"),
         "iddpm": dict(solver="euler", discretization="iddpm", schedule="linear", scaling="none", C_1=0.001,
                       C_2=0.008, M=1000),
         "edm": dict(solver="euler", discretization="edm", schedule="linear", scaling="none", rho=7)}


class Draws:
    """torch.randn_like, recorded (or zero while `zero` is set)."""

    def __init__(self, torch, seed):
        self.torch, self.gen, self.log, self.zero = torch, torch.Generator().manual_seed(seed), [], False
        self.original = torch.randn_like

    def __call__(self, like, *args, **kwargs):
        if self.zero:
            return self.torch.zeros_like(like)
        out = self.torch.randn(like.shape, generator=self.gen, dtype=like.dtype)
        self.log.append(out.numpy().copy())
        return out

    def take(self):
        out, self.log = self.log, []
        return out


def main():
    args = mf.arguments(__doc__, 0, [("pnpdm", "a clone of zihuiwu/PnP-DM-public")], network=False).parse_args()
    os.makedirs(args.out, exist_ok=True)
    importable(args.pnpdm)
    import torch
    from pnpdm.models.edm.edm import VPPrecond
    from pnpdm.samplers.pnp_edm.denoiser_edm import Denoiser_EDM
    from pnpdm.samplers.pnp_edm.pnp_edm import PnPEDMBatch
    from pnpdm.tasks.gaussian_blur import GaussialBlurCircular
    from pnpdm.tasks.phase_retrieval import PhaseRetrieval
    from pnpdm.tasks.super_resolution_svd import SuperResolution

    torch.set_default_dtype(torch.float32)
    torch.manual_seed(args.seed)             # PnPEDMBatch draws its start with the global torch.randn
    rng = np.random.default_rng(args.seed)
    draws = Draws(torch, args.seed)
    torch.randn_like = draws
    out = {}

    def network(size):
        d = size * size
        w = rng.standard_normal((d, d)) * 0.5 / np.sqrt(d)
        b = rng.standard_normal(d)
        tw, tb = torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)

        class Net(torch.nn.Module):          # (N, 1, s, s), t (N,) -> (N, 2, s, s): eps and an unused half
            def forward(self, x, t):
                eps = torch.tanh(x.reshape(x.shape[0], -1) @ tw.T + tb[None] * (t[:, None] / 1000.0))
                eps = eps.reshape(x.shape)
                return torch.cat([eps, torch.zeros_like(eps)], dim=1)

        return VPPrecond(Net(), img_resolution=size, img_channels=1), w, b

    net, out["w"], out["b"] = network(SHAPE[-1])

    # ---- the prior step, every discretisation, SDE and ODE
    z = torch.tensor(rng.standard_normal(SHAPE), dtype=torch.float32)
    out["prior_z"] = z.numpy()
    for mode, kwargs in MODES.items():
        for kind in ("sde", "pfode"):
            edm = Denoiser_EDM(net, "cpu", num_steps=LEVELS, sigma_min=None, sigma_max=None, mode=kind, **kwargs)
            out[f"prior_{mode}_{kind}_t"] = edm.t_steps.numpy()
            for rho in (0.5, 5.0):
                x = edm(z * rho, rho)
                key = f"prior_{mode}_{kind}_{rho:g}"
                out[key] = x.numpy()
                noise = draws.take()
                out[key + "_noise"] = np.stack(noise) if noise else np.zeros((0,) + SHAPE, np.float32)

    # ---- likelihood steps
    x = torch.tensor(rng.standard_normal(SHAPE), dtype=torch.float32)
    out["lik_x"] = x.numpy()
    for name, op in (("sr", SuperResolution(channels=1, img_dim=4, ratio=2, device="cpu")),
                     ("blur", GaussialBlurCircular(kernel_size=3, intensity=1.0, channels=1, img_dim=4, device="cpu"))):
        eye = torch.eye(16).reshape(16, 1, 4, 4)
        cols = [op.forward(eye[i:i + 1]).reshape(-1).numpy() for i in range(16)]
        out[f"lik_{name}_matrix"] = np.stack(cols, axis=1)                  # A (M, 16) over the flat image
        y = op.forward(torch.tensor(rng.standard_normal(SHAPE), dtype=torch.float32))
        y = y + SIGMA_Y * torch.tensor(rng.standard_normal(tuple(y.shape)), dtype=torch.float32)
        out[f"lik_{name}_y"] = y.numpy()
        for rho in (0.3, 2.0):
            draws.zero = True
            out[f"lik_{name}_{rho:g}_mean"] = op.proximal_generator(x, y, SIGMA_Y, rho).reshape(SHAPE).numpy()
            draws.zero = False

    pr = PhaseRetrieval(oversample=4.0, device="cpu")
    out["pr_pad"] = np.int64(pr.pad)
    xp = torch.tensor(rng.uniform(-1, 1, (1, 1, PR_SIZE, PR_SIZE)), dtype=torch.float32)
    ypr = pr.forward(torch.tensor(rng.uniform(-1, 1, (1, 1, PR_SIZE, PR_SIZE)), dtype=torch.float32))
    out["pr_x"], out["pr_y"] = xp.numpy(), ypr.numpy()
    zpr = pr.proximal_generator(xp.clone(), ypr, 0.05, 0.5, gamma=1e-4, num_iters=5)
    out["pr_z"], out["pr_noise"] = zpr.detach().numpy(), np.stack(draws.take())

    # ---- a chain
    blur = GaussialBlurCircular(kernel_size=3, intensity=1.0, channels=1, img_dim=4, device="cpu")
    y = out["lik_blur_y"]
    config = SimpleNamespace(mode="edm_sde", rho=10.0, rho_decay_rate=0.3, rho_min=0.3, num_iters=4,
                             num_samples_per_run=1, common_kwargs=dict(num_steps=LEVELS, sigma_min=None,
                                                                       sigma_max=None),
                             edm_kwargs=MODES["edm"], vp_kwargs={}, ve_kwargs={}, iddpm_kwargs={})
    sampler = PnPEDMBatch(config, net, blur, SimpleNamespace(sigma=SIGMA_Y), "cpu")
    chain = {"x": [], "mean": [], "z": [], "prior_noise": [], "x_next": []}
    generate, denoise = blur.proximal_generator, sampler.edm.__call__

    def recorded_generator(x, y, sigma, rho):
        draws.zero = True
        chain["mean"].append(generate(x, y, sigma, rho).numpy())
        draws.zero = False
        chain["x"].append(x.numpy())
        z = generate(x, y, sigma, rho)
        draws.take()
        chain["z"].append(z.numpy())
        return z

    def recorded_denoise(z, rho):
        x = denoise(z, rho)
        noise = draws.take()                 # levels i_start .. n-2 draw; kept at their level's index
        padded = np.zeros((LEVELS,) + SHAPE, np.float32)
        if noise:
            padded[LEVELS - 1 - len(noise):LEVELS - 1] = np.stack(noise)
        chain["prior_noise"].append(padded)
        chain["x_next"].append(x.numpy())
        return x

    blur.proximal_generator = recorded_generator
    sampler.edm = recorded_denoise
    sampler(torch.zeros(SHAPE), torch.tensor(y))
    for k, v in chain.items():
        out[f"chain_{k}"] = np.stack(v)

    path = os.path.join(args.out, "pnpdm.npz")
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in out.items()})
    print(f"wrote {path}: {len(out)} arrays")


if __name__ == "__main__":
    main()
