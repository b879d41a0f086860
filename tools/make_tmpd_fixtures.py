"""TMPD fixtures from the authors' code (bb515/tmpdjax: `tmpd.solvers.KPDDPM` and `KPDDPMplus`, on diffusionjax).

    pip install diffusionjax==0.1.8 jax numpy     # the reference is JAX; no torch
    python -m tools.make_tmpd_fixtures --tmpd TMPDJAX_PATH --out tests/fixtures

The reference's two DDPM Markov chains of its image experiments (`run_lib.get_sde`: `KPDDPM` for a matrix
observation map, `KPDDPMplus` for a mask), each asked for its `posterior(x, t)` (the step's mean and std) at
five timesteps of a 1000-step chain, on images of 4 x 4 x 1 with a random network eps(x, t) = tanh(W x +
b t / 1000) given to it as the score -eps / sqrt(1 - ab_t). Its chain's tables (betas from a continuous
beta(t)) are replaced by the linear DDPM schedule dps_jax runs (betas 1e-4 .. 0.02), so both sides step the
same process. `full`: A a random 6 x 16 matrix, y = A x + 0.1 n, noise_std 0.1; `diag`: A a random mask.
"""

from __future__ import annotations

import os

import numpy as np

from tools.reference import importable

SHAPE, M, TIMESTEPS, SIGMA = (4, 4, 1), 6, (999, 700, 300, 20, 1), 0.1


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tmpd", required=True, help="a clone of bb515/tmpdjax")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    importable(args.tmpd)
    import jax
    import jax.numpy as jnp
    from diffusionjax.utils import get_timestep
    from tmpd.solvers import KPDDPM, KPDDPMplus

    jax.config.update("jax_enable_x64", False)
    rng = np.random.default_rng(args.seed)
    d = int(np.prod(SHAPE))
    w = rng.standard_normal((d, d)) * 0.3 / np.sqrt(d)
    b = rng.standard_normal(d)
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = np.cumprod(1.0 - betas)
    f32 = lambda a: jnp.asarray(np.asarray(a, np.float64), jnp.float32)
    holder = {}

    def score(x, t):                       # x (N, H, W, C), t (N,) on the chain's continuous time grid
        sol = holder["solver"]
        k = get_timestep(t, sol.t0, sol.t1, sol.num_steps)
        eps = jnp.tanh(x.reshape(x.shape[0], -1) @ f32(w).T + f32(b)[None] * (k[:, None] / 1000.0))
        return (-eps / sol.sqrt_1m_alphas_cumprod[k][:, None]).reshape(x.shape)

    def use_linear_schedule(sol):
        ac = alphas_cumprod
        ac_prev = np.append(1.0, ac[:-1])
        sol.discrete_betas, sol.alphas, sol.alphas_cumprod = f32(betas), f32(1 - betas), f32(ac)
        sol.sqrt_alphas_cumprod, sol.sqrt_1m_alphas_cumprod = f32(np.sqrt(ac)), f32(np.sqrt(1 - ac))
        sol.alphas_cumprod_prev = f32(ac_prev)
        sol.sqrt_alphas_cumprod_prev, sol.sqrt_1m_alphas_cumprod_prev = f32(np.sqrt(ac_prev)), f32(np.sqrt(1 - ac_prev))

    arrays = {"w": w, "b": b, "timesteps": np.asarray(TIMESTEPS), "sigma": np.float32(SIGMA)}
    x_true = np.tanh(rng.standard_normal(d))
    a = rng.standard_normal((M, d)) / np.sqrt(d)
    mask = (rng.random(d) < 0.5).astype(np.float64)
    cases = {"full": (KPDDPM, lambda x: f32(a) @ x.flatten(), a @ x_true + SIGMA * rng.standard_normal(M)),
             "diag": (KPDDPMplus, lambda x: f32(mask) * x.flatten(), mask * (x_true + SIGMA * rng.standard_normal(d)))}
    arrays["a"], arrays["mask"] = a, mask
    for case, (cls, observation_map, y) in cases.items():
        sol = cls(f32(y)[None], observation_map, SIGMA, SHAPE, score, beta=None, ts=None)
        holder["solver"] = sol
        use_linear_schedule(sol)
        xs, means, stds = [], [], []
        for k in TIMESTEPS:
            assert int(np.asarray(get_timestep(sol.ts[k], sol.t0, sol.t1, sol.num_steps)).reshape(-1)[0]) == k    # its time grid -> step k
            x = rng.standard_normal((1,) + SHAPE)
            mean, std = sol.posterior(f32(x), sol.ts[k][None])
            xs.append(x)
            means.append(np.asarray(mean)[0])
            stds.append(float(np.asarray(std).reshape(-1)[0]))
        arrays.update({f"{case}_y": y, f"{case}_x": np.concatenate(xs), f"{case}_mean": np.stack(means),
                       f"{case}_std": np.asarray(stds)})
    path = os.path.join(args.out, "tmpd.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
