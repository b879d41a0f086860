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
t = 0 has nothing left to do and keeps x. The start is the reference scripts': y itself noised to the first
step for deblurring and inpainting (y counted as a state at its own noise level), y upsampled bicubically
for super-resolution (`start_image`); A^+ y only for an operator of another kind. Its weight sqrt(ab_T)
= 0.0064 keeps the start small whatever y is (a pseudo-inverse of a blur would amplify the noise).

Defaults are the header values of the reference scripts (lambda 1, zeta 0.1, 100 steps). The scripts run
multiples of them, which the task configs set: deblurring lambda 7, zeta 0.3; super-resolution zeta 0.25
with lambda swept over 2..12; inpainting zeta 1 and 20 steps. The reference also offers a DDIM eta, 0 in
every script: not offered here.
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


def start_image(problem, image_shape):
    """(the image the reference's scripts start from, the noise variance it already carries): y itself
    where it has the image's shape (deblurring, inpainting: y read as a diffusion state at its own noise
    level sigma_y), y upsampled bicubically where it is the image at an integer fraction of its size
    (super-resolution), else the least-squares A^+ y (an operator of one's own)."""
    y, image_shape = problem.y, tuple(image_shape)
    sigma_y = 0.0 if problem.sigma is None else problem.sigma
    if tuple(y.shape) == image_shape:
        return y, jnp.square(jnp.asarray(sigma_y, jnp.float32))
    h, w, ch = image_shape
    if y.ndim == 3 and y.shape[-1] == ch and h % y.shape[0] == 0 and w % y.shape[1] == 0:
        return jax.image.resize(y, image_shape, "cubic"), jnp.zeros((), jnp.float32)
    return proximal.pseudo_inverse(problem, image_shape), jnp.zeros((), jnp.float32)


def init(key, problem, prior, options, image_shape):
    """The start noise and the start image; the first update mixes them at the first step's level."""
    start, noise_var = start_image(problem, image_shape)
    return {"x": jax.random.normal(key, tuple(image_shape), jnp.float32), "start": start, "noise_var": noise_var,
            "started": jnp.asarray(False)}


def update(state, c, noise, problem, prior, options: Options):
    # x_T: the start image taken to the first step's level. y at noise level sigma_y is x at level
    # ab_y = 1 / (1 + sigma_y^2) scaled by 1 / sqrt(ab_y): sqrt(ab_T / ab_y) y + sqrt(1 - ab_T / ab_y) z.
    a = jnp.minimum(c.alphas_cumprod * (1.0 + state["noise_var"]), 1.0)
    x_t = jnp.where(state["started"], state["x"], jnp.sqrt(a) * state["start"] + jnp.sqrt(1.0 - a) * state["x"])
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
