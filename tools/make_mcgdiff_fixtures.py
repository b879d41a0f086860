"""MCGdiff fixtures from the authors' code (gabrielvc/mcg_diff, `mcg_diff.particle_filter.mcg_diff`).

    pip install torch==2.13.0 numpy
    python -m tools.make_mcgdiff_fixtures --mcg_diff MCG_DIFF_PATH --out tests/fixtures

One small linear problem per case, run by the reference's own `mcg_diff` with its image script's settings
(eta 1, kappa = gaussian_var 1e-4, timesteps linspace(0, 999, n).long()) on a random network: images of
4 x 4 x 1 (D = 16), A = U diag(s) V^T with random orthogonal U (6 x 6), V (16 x 16) and singular values
spread from 2 to 0.02 (so the coordinates join the filter at different times), the linear DDPM schedule,
and eps(x, t) = tanh(W x + b t / 1000) (W, b random) asked through the reference's `NetReparametrized` in
V's basis. Recorded for a teacher-forced replay: the initial particles, each transition's particles, its
Gaussian draws and its ancestors (and the log weights they were drawn from), the final particles and final
log weights. Cases: `noisy` (sigma_y 0.5: taus spread over the grid, a plain-chain tail below the smallest
tau) and `noiseless` (sigma_y 0: every coordinate filtered from the start).
"""

from __future__ import annotations

import os

import numpy as np

from tools import make_fixtures as mf
from tools.reference import importable

SHAPE, M, PARTICLES, STEPS = (4, 4, 1), 6, 8, 12


def orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def run_case(pf, torch, sigma: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    d = int(np.prod(SHAPE))
    u, vh = orthogonal(rng, M), orthogonal(rng, d)
    s = np.geomspace(2.0, 0.02, M)
    a = u @ np.diag(s) @ vh[:M]
    w = rng.standard_normal((d, d)) * 0.3 / np.sqrt(d)
    b = rng.standard_normal(d)
    x_true = np.tanh(rng.standard_normal(d))
    y = a @ x_true + sigma * rng.standard_normal(M)
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)
    f32 = lambda z: torch.tensor(np.asarray(z), dtype=torch.float32)
    w_t, b_t, vh_t = f32(w), f32(b), f32(vh)

    def base_net(x, t):
        return torch.tanh(x @ w_t.T + b_t * (float(t) / 1000.0))

    from mcg_diff.sgm import ScoreModel
    from mcg_diff.utils import NetReparametrized

    score_model = ScoreModel(net=NetReparametrized(base_net, vh_t), alphas_cumprod=alphas_cumprod, device="cpu")
    timesteps = torch.linspace(0, 999, STEPS).long()
    torch.manual_seed(seed)
    initial = torch.randn(PARTICLES, d)

    record = {"particles_in": [], "z": [], "ancestors": [], "logits": []}
    plain_predict, plain_randn, plain_categorical = pf.predict, torch.randn_like, pf.Categorical

    def predict(**kw):
        record["particles_in"].append(kw["particles"].clone().numpy())
        return plain_predict(**kw)

    def randn_like(x):
        z = plain_randn(x)
        record["z"].append(z.clone().numpy())
        return z

    class Categorical:
        def __init__(self, logits, validate_args=False):
            self.inner = plain_categorical(logits=logits, validate_args=validate_args)
            self.logits = logits

        def sample(self, shape):
            out = self.inner.sample(shape)
            record["logits"].append(self.logits.clone().numpy())
            record["ancestors"].append(out.clone().numpy())
            return out

    pf.predict, torch.randn_like, pf.Categorical = predict, randn_like, Categorical
    try:
        particles, log_weights = pf.mcg_diff(
            initial_particles=initial.clone(), observation=f32(u.T @ y), score_model=score_model,
            coordinates_mask=torch.arange(d) < M, timesteps=timesteps, likelihood_diagonal=f32(s),
            var_observation=sigma ** 2, eta=1.0, gaussian_var=1e-4)
    finally:
        pf.predict, torch.randn_like, pf.Categorical = plain_predict, plain_randn, plain_categorical
    n = len(record["particles_in"])
    filtered = len(record["ancestors"])
    ancestors = np.tile(np.arange(PARTICLES), (n, 1))
    logits = np.zeros((n, PARTICLES))
    ancestors[:filtered] = np.stack(record["ancestors"])          # the filtering transitions come first
    logits[:filtered] = np.stack(record["logits"])
    return {"sigma": np.float32(sigma), "u": u, "s": s, "vh": vh, "w": w, "b": b, "y": y,
            "timesteps": timesteps.numpy(), "initial": initial.numpy(),
            "particles_in": np.stack(record["particles_in"]), "z": np.stack(record["z"]),
            "ancestors": ancestors, "logits": logits, "filtered": np.int64(filtered),
            "particles": particles.numpy(), "log_weights": log_weights.numpy()}


def main():
    args = mf.arguments(__doc__, 0, [("mcg_diff", "a clone of gabrielvc/mcg_diff")], network=False).parse_args()
    mf.start(args)
    importable(args.mcg_diff)
    import torch
    from mcg_diff import particle_filter as pf

    arrays = {}
    for case, sigma, seed in (("noisy", 0.5, args.seed), ("noiseless", 0.0, args.seed + 1)):
        for k, v in run_case(pf, torch, sigma, seed).items():
            arrays[f"{case}_{k}"] = np.asarray(v)
    path = os.path.join(args.out, "mcgdiff.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: " + ", ".join(f"{c}: {int(arrays[c + '_filtered'])} of "
                                        f"{len(arrays[c + '_z'])} transitions filtered" for c in ("noisy", "noiseless")))


if __name__ == "__main__":
    main()
