"""An exact denoiser written as the network of every process and parametrisation a `Prior` can read.

    prior = networks.as_prior(denoiser, params, "edm", "edm", image_shape=(8, 8, 1))

`denoiser(params, x, sigma)` is E[x_0 | x_0 + sigma n = x] (H, W, C), e.g. a Gaussian mixture's
(`gmm.MixtureEps().x0_at_sigma`). The prior's network returns what a perfectly trained network of that
process and parametrisation outputs, so reading it back through `prior.denoise` / `prior.x0_at_sigma` must
give the denoiser again: the tests' check of the readings, and the calibration benchmark's way of running
one posterior through every parametrisation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Tuple

import jax.numpy as jnp

from dps_jax import prior as prior_lib, schedule


@dataclasses.dataclass(frozen=True)
class ExactNetwork:
    """The `apply` (params, x_in (H, W, C), cond) -> output of a perfect network; params = {"denoiser": ...,
    "alphas_cumprod": the discrete table (T,)}. cond is the timestep (T - 1) s (discrete_vp and vp; an integer
    one indexes the discrete table, a fractional one is read on the continuous schedule the table discretises)
    or sigma (ve, edm)."""
    denoiser: Callable
    process: str
    mean_type: str
    sigma_data: float = 0.5

    def __call__(self, params, x_in, cond):
        den = lambda x, sigma: self.denoiser(params["denoiser"], x, sigma)
        if self.process in ("discrete_vp", "vp"):
            table = params["alphas_cumprod"]
            cond = jnp.asarray(cond)
            if self.process == "discrete_vp" and jnp.issubdtype(cond.dtype, jnp.integer):
                ab = table[cond]
            else:       # a continuous time; a discrete network asked between its timesteps reads it so too
                s = cond / (table.shape[0] - 1)
                ab = jnp.exp(-(0.5 * prior_lib.VP_BETA_D * s ** 2 + prior_lib.VP_BETA_MIN * s))
            x0 = den(x_in / jnp.sqrt(ab), jnp.sqrt(1 / ab - 1))
            eps = (x_in - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
            if self.mean_type == "epsilon":
                return eps
            if self.mean_type == "v":
                return jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0
            return x0
        sigma = cond
        if self.process == "ve":
            x0 = den(x_in, sigma)
            if self.mean_type == "epsilon":
                return (x_in - x0) / sigma
            if self.mean_type == "score":
                return (x0 - x_in) / sigma ** 2
            return x0
        sd2 = self.sigma_data ** 2
        x = x_in * jnp.sqrt(sigma ** 2 + sd2)                       # undo c_in
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / jnp.sqrt(sigma ** 2 + sd2)
        return (den(x, sigma) - c_skip * x) / c_out


def as_prior(denoiser: Callable, params: Any, process: str, mean_type: str, image_shape: Tuple[int, int, int],
             var_type: str = "fixed_small", num_timesteps: int = 1000, sigma_data: float = 0.5) -> prior_lib.Prior:
    """A Prior of the given process and parametrisation whose network is the exact `denoiser`."""
    table = jnp.asarray(schedule.build_tables("linear", num_timesteps, num_timesteps).alphas_cumprod, jnp.float32)
    h, w, c = image_shape
    p = prior_lib.Prior(params={"denoiser": params, "alphas_cumprod": table},
                        apply=ExactNetwork(denoiser, process, mean_type, sigma_data), process=process,
                        mean_type=mean_type, var_type=var_type, clip_denoised=False, sigma_data=sigma_data,
                        image_size=h if h == w else None, channels=c)
    p.check()
    return p


def gaussian_denoiser(params, x, sigma):
    """E[x_0 | x] for x_0 ~ N(m, s^2 I), params {"m", "s"}: m + s^2 / (s^2 + sigma^2) (x - m)."""
    m, s2 = params["m"], params["s"] ** 2
    return m + s2 / (s2 + sigma ** 2) * (x - m)
