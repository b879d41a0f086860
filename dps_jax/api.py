"""The Python API: load a prior, build an operator, draw N posterior samples for y in one call.

    from dps_jax import api, operators
    model, params, config = api.load_prior()                     # the shipped 32 x 32 prior
    op = operators.build("super_resolution", (32, 32, 1), scale_factor=4)
    y = api.measure(op, x, key, noise="gaussian", sigma=0.05)    # simulate y = A(x) + n
    out = api.sample(model, params, op, y, num_samples=16, steps=100, scale=0.5)
    out["samples"]                                               # (16, 32, 32, 1)
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import diffusion, likelihoods, samplers, schedule
from dps_jax.models.checkpoint import load_checkpoint
from dps_jax.operators import Operator

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
SHIPPED_PRIOR = os.path.join(ASSETS, "fmnist32.msgpack")
SHIPPED_IMAGES = os.path.join(ASSETS, "test_images")


def load_prior(path: Optional[str] = None, dtype=None):
    """(UNet module, params, UNetConfig) from a dps_jax checkpoint; the shipped prior by default."""
    return load_checkpoint(path or SHIPPED_PRIOR, dtype=dtype)


def check_measurement(y, expected_shape=None) -> None:
    """Raise if y has NaN/Inf entries or the wrong shape."""
    y = np.asarray(y)
    if expected_shape is not None and tuple(y.shape) != tuple(expected_shape):
        raise ValueError(f"measurement has shape {tuple(y.shape)}; the operator produces {tuple(expected_shape)}")
    bad = ~np.isfinite(y)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"measurement contains {int(bad.sum())} NaN/Inf values (first at index {idx})")


def measure(op: Operator, x, key, noise: str = "gaussian", sigma: float = 0.05, rate: float = 1.0):
    """A simulated noisy measurement y = noise(A(x)) of one image x (H, W, C)."""
    return likelihoods.add_noise(key, op(jnp.asarray(x, jnp.float32)), noise, sigma=sigma, rate=rate)


def default_var_type(model_config, extra_var_type: str = "") -> str:
    if model_config.learn_sigma:
        return "learned_range"
    return extra_var_type or "fixed_large"


def sample(model, params, op: Operator, y, *, num_samples: int = 4, steps: int = 100, respacing: str = "",
           sampler: str = "ddpm", eta: float = 0.0, guidance: str = "ps", scale: float = 1.0,
           noise: str = "gaussian", var_type: str = "", schedule_name: str = "linear",
           num_timesteps: int = 1000, seed: int = 0, record_every: int = 0, progress=None, loop: str = "auto"):
    """N posterior samples of p(x | y) with DPS. Returns a dict of numpy arrays:
    samples (N, H, W, C), distance (N, T), and x_record / x0_hat_record if record_every > 0.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    cfg = model.config
    image_shape = (cfg.image_size, cfg.image_size, cfg.in_channels)
    out_shape = jax.eval_shape(op, jax.ShapeDtypeStruct(image_shape, jnp.float32)).shape
    check_measurement(y, out_shape)
    tables = schedule.build_tables(schedule_name, num_timesteps, respacing or steps)
    scfg = samplers.SamplerConfig(sampler=sampler, eta=eta, guidance=guidance, noise_model=noise,
                                  var_type=var_type or default_var_type(cfg), record_every=record_every)
    f = samplers.make_sampler(samplers.unet_denoise_fn(model), scfg, image_shape, progress, loop=loop)
    keys = jax.random.split(jax.random.PRNGKey(seed), num_samples)
    out = f(params, op, jnp.asarray(y, jnp.float32), keys, diffusion.step_coefficients(tables), scale)
    out = jax.tree_util.tree_map(np.asarray, out)
    out["samples"] = out.pop("sample")
    return out
