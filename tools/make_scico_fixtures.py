"""Regenerate the SCICO fixtures of tests/fixtures/ (DnCNN and PnP-ADMM), with SCICO itself (imported, never
copied). SCICO pins its own jax, so it runs in an environment of its own:

    python3.11 -m venv /tmp/scicoenv && /tmp/scicoenv/bin/pip install scico==0.0.7
    /tmp/scicoenv/bin/python -m tools.make_scico_fixtures --out tests/fixtures

Writes
  dncnn_scico_small.mpk   a 6-layer, 8-feature `scico.flax.DnCNNNet` with random variables (every weight,
                          batch-norm scale, bias, mean and variance drawn), saved by `scico.flax.save_variables`
  dncnn_scico_small.npz   SCICO's DnCNN denoiser (`scico.denoiser.DnCNN`'s call, over those variables) on a
                          (16, 16) and a (16, 16, 3) image in [0, 1]; and SCICO's ADMM (the paper's PnP-ADMM:
                          squared L2 loss, the DnCNN functional as g, C = I, rho 0.2, 10 iterations, x0 = A^T y,
                          the linear subproblem by CG to 1e-9) for inpainting (a mask) and denoising (A = I)
"""

from __future__ import annotations

import argparse
import os

import numpy as np

RHO, ITERATIONS, SIZE = 0.2, 10, 16


def random_variables(model, rng):
    import jax
    import jax.numpy as jnp

    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 1)), train=False)

    def draw(path, v):
        name = jax.tree_util.keystr(path)
        if name.endswith("['var']"):
            return jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype)
        if name.endswith("['scale']"):
            return jnp.asarray(1 + rng.normal(0, 0.1, v.shape), v.dtype)
        if name.endswith("['mean']") or name.endswith("['bias']"):
            return jnp.asarray(rng.normal(0, 0.1, v.shape), v.dtype)
        fan_in = np.prod(v.shape[:-1])
        return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), v.shape), v.dtype)

    return jax.tree_util.tree_map_with_path(draw, {"params": variables["params"],
                                                   "batch_stats": variables["batch_stats"]})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import jax
    import scico
    import scico.numpy as snp
    from scico import denoiser, functional, linop, loss
    from scico.flax import DnCNNNet, FlaxMap, save_variables
    from scico.optimize.admm import ADMM, LinearSubproblemSolver

    jax.config.update("jax_enable_x64", False)
    rng = np.random.default_rng(args.seed)
    model = DnCNNNet(depth=6, channels=1, num_filters=8)
    variables = random_variables(model, rng)
    os.makedirs(args.out, exist_ok=True)
    save_variables(variables, os.path.join(args.out, "dncnn_scico_small.mpk"))

    # SCICO's DnCNN denoiser over these variables: its call (channels denoised one by one) without its
    # constructor, which only reads the published files.
    den = denoiser.DnCNN.__new__(denoiser.DnCNN)
    FlaxMap.__init__(den, model, variables)
    den.variant, den.is_blind = "6M", True
    g = functional.DnCNN.__new__(functional.DnCNN)
    g.dncnn = den
    g._denoise = lambda x, sigma: den(x)

    x2 = rng.uniform(0, 1, (SIZE, SIZE)).astype(np.float32)
    x3 = rng.uniform(0, 1, (SIZE, SIZE, 3)).astype(np.float32)
    arrays = dict(x2=x2, out2=np.asarray(den(snp.array(x2))), x3=x3, out3=np.asarray(den(snp.array(x3))))

    truth = rng.uniform(0, 1, (SIZE, SIZE)).astype(np.float32)
    mask = (rng.uniform(size=(SIZE, SIZE)) > 0.5).astype(np.float32)
    for name, A in (("inpaint", linop.Diagonal(snp.array(mask))), ("denoise", linop.Identity((SIZE, SIZE)))):
        y = np.asarray(A(snp.array(truth))) + 0.05 * rng.normal(size=(SIZE, SIZE)).astype(np.float32)
        f = loss.SquaredL2Loss(y=snp.array(y), A=A)
        solver = ADMM(f=f, g_list=[g], C_list=[linop.Identity((SIZE, SIZE))], rho_list=[RHO], x0=A.T @ snp.array(y),
                      maxiter=ITERATIONS, subproblem_solver=LinearSubproblemSolver(cg_kwargs={"tol": 1e-9, "maxiter": 500}))
        x = solver.solve()
        arrays.update({f"{name}_truth": truth, f"{name}_y": y, f"{name}_x": np.asarray(x)})
    arrays["inpaint_mask"] = mask
    arrays["settings"] = np.array(f"scico {scico.__version__}, jax {jax.__version__}; rho {RHO}, "
                                  f"{ITERATIONS} iterations, images in [0, 1]")
    np.savez_compressed(os.path.join(args.out, "dncnn_scico_small.npz"), **arrays)
    print("wrote dncnn_scico_small.mpk / .npz to", args.out)


if __name__ == "__main__":
    main()
