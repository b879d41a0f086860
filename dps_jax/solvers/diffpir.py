"""DiffPIR, denoising diffusion models for plug-and-play image restoration (Zhu et al. 2023), for a linear A.

Half-quadratic splitting inside the reverse process: each step from x_t (ab = ab_t, ab' = ab_{t-1})

    x0_hat = E[x_0 | x_t]                                                   (the network, clipped)
    x0     = argmin_x ||y - A x||^2 + rho_t ||x - x0_hat||^2                 (`solvers.proximal`)
    eps    = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
    x_{t-1} = sqrt(ab') x0 + sqrt(1 - ab') (sqrt(1 - zeta) eps + sqrt(zeta) z)

with rho_t = lambda sigma_n^2 / sigma_t^2, sigma_t = sqrt(1 - ab) / sqrt(ab) the noise level of x_t / sqrt(ab),
and sigma_n the noise std of y in the reference's units: images in [0, 1], i.e. half the std of the [-1, 1]
images dps_jax uses, and at least 0.001 (the reference's floor). The data step is exact where A has an SVD
(masks, SR, Gaussian blur) and by conjugate gradients otherwise (motion blur). The steps follow the
quadratic spacing of the reference ("quadN" respacing, `steps` of them, from t = 999 to 0); the step at
t = 0 has nothing left to do and keeps x. The start is A^+ y noised to the first step (the reference
starts from the upsampled or masked y the same way).

Defaults are the reference scripts' for noisy SR and deblurring (lambda 1, zeta 0.1, 100 steps; its
inpainting script uses zeta 1 and 20 steps, noiselessly). The reference also offers a DDIM eta, 0 in every
script: not offered here.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from dps_jax.prior import denoise
from dps_jax.solvers import base, dps, proximal

SIGMA_FLOOR = 0.001


@flax.struct.dataclass
class Options:
    lam: float = 1.0                                   # lambda
    zeta: float = 0.1                                  # zeta: the share of fresh noise in each step
    steps: int = base.static_field(100)                # "quad{steps}" respacing
    cg_iterations: int = base.static_field(50)         # data step without an SVD (motion blur)

    def check(self) -> None:
        base.check_finite_number("diffpir lam", self.lam)
        if not (0.0 <= self.zeta <= 1.0):
            raise ValueError(f"diffpir zeta must be in [0, 1], got {self.zeta!r}")
        base.check_int("diffpir steps", self.steps, 2)
        base.check_int("cg_iterations", self.cg_iterations, 1)


def rho(c, sigma_y, options: Options):
    """rho_t = lambda sigma_n^2 / sigma_t^2 with sigma_n = max(sigma_y / 2, 0.001) ([0, 1] image units)."""
    sigma_n = jnp.maximum(sigma_y / 2.0, SIGMA_FLOOR)
    sigma_t2 = (1.0 - c.alphas_cumprod) / c.alphas_cumprod
    return options.lam * sigma_n ** 2 / sigma_t2


def init(key, problem, prior, options, image_shape):
    """The start noise and A^+ y; the first update mixes them at the first step's level."""
    return {"x": jax.random.normal(key, tuple(image_shape), jnp.float32), "start": proximal.pseudo_inverse(problem, image_shape),
            "started": jnp.asarray(False)}


def update(state, c, noise, problem, prior, options: Options):
    x_t = jnp.where(state["started"], state["x"],
                    c.sqrt_alphas_cumprod * state["start"] + c.sqrt_one_minus_alphas_cumprod * state["x"])
    den = denoise(prior, x_t, c)
    x0 = proximal.solve(problem, den.x0_hat, rho(c, problem.sigma, options), cg_iterations=options.cg_iterations)
    eps = (x_t - c.sqrt_alphas_cumprod * x0) / c.sqrt_one_minus_alphas_cumprod
    ab_prev = c.alphas_cumprod_prev
    x_next = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1.0 - ab_prev) * (jnp.sqrt(1.0 - options.zeta) * eps
                                                                  + jnp.sqrt(options.zeta) * noise["x"])
    x_next = jnp.where(c.index == 0, x_t, x_next)               # t = 0: the reference keeps x
    return {**state, "x": x_next, "started": jnp.asarray(True)}, {"distance": dps.distance(problem, den.x0_hat),
                                                         "x0_hat": den.x0_hat}


def respacing(options: Options) -> str:
    """The reference's quadratic spacing from t = 999 to 0."""
    return f"quad{options.steps}"


SOLVER = base.Solver("diffpir", Options, init=init, update=update, grid=base.table_grid(respacing),
                     needs=frozenset({"svd_or_cg", "sigma"}))
