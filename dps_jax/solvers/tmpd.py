"""TMPD, Tweedie moment projected diffusion (Boys, Girolami, Pidstrigach, Reich, Mosca, Akyildiz 2024), for
linear A with Gaussian noise.

p(x_0 | x_t) is replaced by the Gaussian with Tweedie's two moments: mean x0_hat(x_t) and covariance
C_t = r_t J with J = d x0_hat / d x_t and r_t = (1 - ab_t) / sqrt(ab_t). Then p(y | x_t) is Gaussian and
E[x_0 | x_t, y] has a closed form, a Kalman update of x0_hat:

    x0_y = x0_hat + J^T A^T (A J A^T + sigma_y^2 / r_t I)^{-1} (y - A x0_hat)

computed by vector-Jacobian products through the network (no Jacobian is stored unless `covariance` is
"full"), and x0_y replaces x0_hat in the DDPM step (the posterior q(x_{t-1} | x_t, x_0) mean, its variance
beta_t (1 - ab_{t-1}) / (1 - ab_t)). `covariance`:

- "diag" (the reference's `KPDDPMplus`, its choice for masks): A J A^T replaced by the diagonal of its row
  sums, A J^T A^T A(1) (for a mask, the row sums over the observed pixels), one extra vector-Jacobian
  product per step; a negative row sum (possible for an A that is not a mask, where the reference uses
  "full") is taken as 0, leaving sigma_y^2 / r_t;
- "full" (its `KPDDPM`): the M x M matrix A J A^T from M vector-Jacobian products and a linear solve; exact
  for a Gaussian prior (TMPD then samples the exact posterior), for measurements of at most 4,096 values.

x0_hat is not clipped (the reference's); x0_y is, to [-1, 1], for a prior of images (`clip_denoised`): a
departure, as on the shipped prior the unclipped update leaves the image range and the run diverges
(|x| 7.6e4 at 50 steps, 1.5e4 at 250, super-resolution x4). 1000 DDPM steps by default, as its image
experiments.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from dps_jax import likelihoods
from dps_jax.prior import denoise
from dps_jax.solvers import base

COVARIANCES = ("diag", "full")
MAX_FULL = 4096          # measurement values up to which "full" forms A J A^T (M vector-Jacobian products)


@flax.struct.dataclass
class Options(base.TableOptions):
    covariance: str = base.static_field("diag")

    def check(self) -> None:
        base.TableOptions.check(self)
        if self.covariance not in COVARIANCES:
            raise ValueError(f"unknown tmpd covariance {self.covariance!r}; expected one of {COVARIANCES}")


def kalman_x0(prior, x_t, c, op, y, sigma_y, covariance: str):
    """x0_y, the moment-matched E[x_0 | x_t, y], and the network's Denoised at x_t: (H, W, C) each."""
    plain = prior.replace(clip_denoised=False, dynamic_threshold=False)

    def h(x):
        den = denoise(plain, x, c)
        return op(den.x0_hat).reshape(-1), den

    hx, vjp, den = jax.vjp(h, x_t, has_aux=True)
    ratio = (1 - c.alphas_cumprod) / jnp.sqrt(c.alphas_cumprod)
    residual = jnp.reshape(y, (-1,)) - hx
    if covariance == "diag":
        # Row sums can be negative for an A that is not a mask (the reference divides by them there): at 0.
        row_sums = op(vjp(op(jnp.ones_like(x_t)).reshape(-1))[0]).reshape(-1)
        c_yy = jnp.maximum(row_sums, 0.0) + sigma_y ** 2 / ratio
        f = residual / c_yy
    else:
        rows = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(hx.shape[0], dtype=hx.dtype))      # (M, H, W, C)
        c_yy = jax.vmap(lambda g: op(g).reshape(-1))(rows) + sigma_y ** 2 / ratio * jnp.eye(hx.shape[0])
        f = jnp.linalg.solve(c_yy, residual)
    return den.x0_hat + vjp(f)[0], den


def check(problem, options) -> None:
    size = int(jnp.size(problem.y))
    if options.covariance == "full" and size > MAX_FULL:
        raise ValueError(f"tmpd covariance 'full' forms an M x M matrix from M network gradients; y has "
                         f"M = {size} values (at most {MAX_FULL}): use covariance 'diag'")


def update(x_t, c, noise, problem, prior, options: Options):
    x0_y, den = kalman_x0(prior, x_t, c, problem.op, problem.y, problem.sigma, options.covariance)
    if prior.clip_denoised:      # a learned network's Jacobian can make the update leave the image range
        x0_y = jnp.clip(x0_y, -1.0, 1.0)
    mean = c.posterior_mean_coef1 * x0_y + c.posterior_mean_coef2 * x_t
    x_next = mean + jnp.where(c.index == 0, 0.0, jnp.sqrt(c.posterior_variance) * noise["x"])
    d = likelihoods.distance(problem.y, problem.op(den.x0_hat), "gaussian")
    return x_next, {"distance": d, "x0_hat": x0_y}


SOLVER = base.Solver("tmpd", Options, init=base.start, update=update, needs=frozenset({"linear", "sigma"}),
                     check=check)
