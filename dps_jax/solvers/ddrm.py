"""DDRM, denoising diffusion restoration models (Kawar, Elad, Ermon, Song 2022), for linear A = U Sigma V^T.

DDRM runs the reverse process in the spectral coordinates of A (`operators.spectral`), where y is
y_bar = U^T y with noise std sigma_y on each coordinate, and the diffusion is read as a variance-exploding
one: x_t / sqrt(alphas_cumprod_t) has noise std sigma_t = sqrt(1 - alphas_cumprod_t) / sqrt(alphas_cumprod_t).
From x0_hat and eps of the network (x0_hat not clipped), each spectral coordinate i of the next state
(noise std sigma = sigma_{t-1}, z ~ N(0, 1), s_i its singular value, v = V^T x0_hat) is

    unobserved:                 v_i + sqrt(1 - eta^2) sigma (V^T eps)_i + eta sigma z_i
    observed, s_i sigma < sigma_y (y is the noisier):
                                v_i + sqrt(1 - eta^2) sigma (y_bar_i - s_i v_i) / sigma_y + eta sigma z_i
    observed, s_i sigma > sigma_y (y is the less noisy):
                                eta_b y_bar_i / s_i + (1 - eta_b) v_i + sqrt(sigma^2 - eta_b^2 sigma_y^2 / s_i^2) z_i

and x_{t-1} = sqrt(alphas_cumprod_{t-1}) V (that). The start x_T comes from p(x_T | y): y_bar_i / s_i plus
the noise that brings it to sigma_T, on the coordinates where y is the less noisy; pure noise elsewhere;
scaled by 1 / sigma_T. The paper's setting, the defaults: eta = 0.85, eta_b = 1, 20 steps strided as
range(0, 1000, 50), 1-D singular values below 0.03 treated as zero (as its operators do).

The measurement noise std sigma_y is the problem's `sigma` (in the units of the [-1, 1] images). DDRM
models Gaussian noise only; operators without an efficient SVD (motion blur, phase retrieval) are refused.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import likelihoods
from dps_jax.operators import spectral
from dps_jax.prior import denoise
from dps_jax.solvers import base


@flax.struct.dataclass
class Options:
    eta: float = 0.85                                  # eta (= eta_A = eta_C of the reference code)
    eta_b: float = 1.0                                 # eta_b
    steps: int = base.static_field(20)                 # range(0, num_timesteps, num_timesteps // steps)
    cutoff: float = base.static_field(0.03)            # 1-D singular values below it count as zero

    def check(self) -> None:
        for name in ("eta", "eta_b"):
            v = getattr(self, name)
            if not (np.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"ddrm {name} must be in [0, 1], got {v!r}")
        base.check_int("ddrm steps", self.steps, 1)
        base.check_finite_number("ddrm cutoff", self.cutoff)


def ve_sigma(alphas_cumprod):
    """The variance-exploding noise level sqrt(1 - a) / sqrt(a) of a VP step with alphas_cumprod a."""
    return jnp.sqrt(1.0 - alphas_cumprod) / jnp.sqrt(alphas_cumprod)


def initial_x(sp: spectral.Spectral, y_bar, sigma_y, z, alphas_cumprod_T):
    """x_T from p(x_T | y), for z ~ N(0, I) in spectral coordinates: all (H, W, C)."""
    sigma_T = ve_sigma(alphas_cumprod_T)
    s = jnp.broadcast_to(sp.singulars, z.shape)
    known = (sp.observed > 0) & (s * sigma_T > sigma_y)
    safe_s = jnp.where(known, s, 1.0)
    y_std = jnp.where(known, sigma_y / safe_s, 0.0)
    v = jnp.where(known, y_bar / safe_s, 0.0) + jnp.sqrt(jnp.maximum(sigma_T ** 2 - y_std ** 2, 0.0)) * z
    return spectral.from_spectral(sp, v / sigma_T)


def spectral_step(sp: spectral.Spectral, y_bar, sigma_y, x0_hat, eps, z, alphas_cumprod_prev, options: Options):
    """x_{t-1} from the network's x0_hat and eps at x_t and z ~ N(0, I) (spectral): all (H, W, C)."""
    sigma = ve_sigma(alphas_cumprod_prev)
    s = jnp.broadcast_to(sp.singulars, z.shape)
    observed = sp.observed > 0
    before = observed & (s * sigma > sigma_y)           # y is less noisy than x at this level
    after = observed & (s * sigma < sigma_y)            # y is the noisier
    v0, v_eps = spectral.to_spectral(sp, x0_hat), spectral.to_spectral(sp, eps)
    std = options.eta * sigma
    kept = jnp.sqrt(1.0 - options.eta ** 2) * sigma
    unobserved = v0 + kept * v_eps + std * z
    safe_sigma_y = jnp.where(sigma_y > 0, sigma_y, 1.0)
    noisy_y = v0 + kept * (y_bar - s * v0) / safe_sigma_y + std * z
    safe_s = jnp.where(before, s, 1.0)
    clean_y = (options.eta_b * y_bar / safe_s + (1.0 - options.eta_b) * v0
               + jnp.sqrt(jnp.maximum(sigma ** 2 - (options.eta_b * sigma_y / safe_s) ** 2, 0.0)) * z)
    v = jnp.where(before, clean_y, jnp.where(after, noisy_y, unobserved))
    return jnp.sqrt(alphas_cumprod_prev) * spectral.from_spectral(sp, v)


def init(key, problem, prior, options, image_shape):
    """The start noise; the first update turns it into x_T (it needs sigma_T, the first step's level)."""
    return {"x": jax.random.normal(key, tuple(image_shape), jnp.float32), "started": jnp.asarray(False)}


def update(state, c, noise, problem, prior, options: Options):
    sp = problem.aux
    y_bar = spectral.measurement_to_spectral(sp, problem.y)
    x_t = jnp.where(state["started"], state["x"],
                    initial_x(sp, y_bar, problem.sigma, state["x"], c.alphas_cumprod))
    # DDRM reads x0_hat straight from eps: no clipping, which would break x_t = q_sample(x0_hat, eps).
    den = denoise(prior.replace(clip_denoised=False, dynamic_threshold=False), x_t, c)
    x_next = spectral_step(sp, y_bar, problem.sigma, den.x0_hat, den.eps, noise["x"], c.alphas_cumprod_prev,
                           options)
    d = likelihoods.distance(problem.y, problem.op(den.x0_hat), "gaussian")
    return {"x": x_next, "started": jnp.asarray(True)}, {"distance": d, "x0_hat": den.x0_hat}


SOLVER = base.Solver("ddrm", Options, init=init, update=update, grid=base.table_grid(base.reference_stride),
                     needs=frozenset({"svd", "sigma"}))
