"""Measurement noise n in y = A(x) + n, and the data-consistency distance DPS descends.

Gaussian noise: y = A(x) + sigma * z. The DPS distance is ||y - A(x0_hat)||_2 (the paper's
zeta_i / ||y - A(x0_hat)|| step is the gradient of this norm times the step scale).
Poisson noise (official simulation): map to [0, 1], clip, draw Poisson counts of 255 * rate * x,
divide back, map to [-1, 1], clip. Its distance, as the official code weights it, is
mean(||y - A(x0_hat)||_2 / |y|): the norm divided by |y| element-wise, then averaged.
Each function works on one measurement; vmap gives one distance per posterior sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NOISE_MODELS = ("gaussian", "poisson", "clean")


def check_noise(name: str, sigma: float = 0.05, rate: float = 1.0):
    if name not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {name!r}; expected one of {NOISE_MODELS}")
    if name == "gaussian" and not sigma >= 0:
        raise ValueError(f"Gaussian noise sigma must be >= 0, got {sigma!r}")
    if name == "poisson" and not rate > 0:
        raise ValueError(f"Poisson noise rate must be > 0, got {rate!r}")


def add_noise(key, clean, name: str = "gaussian", sigma: float = 0.05, rate: float = 1.0):
    """A noisy measurement y from A(x) (`clean`, any shape); `key` is a jax PRNG key."""
    check_noise(name, sigma, rate)
    if name == "clean":
        return clean
    if name == "gaussian":
        return clean + sigma * jax.random.normal(key, clean.shape, clean.dtype)
    x01 = jnp.clip((clean + 1.0) / 2.0, 0.0, 1.0)
    counts = jax.random.poisson(key, x01 * 255.0 * rate, clean.shape)
    return jnp.clip(counts.astype(clean.dtype) / 255.0 / rate * 2.0 - 1.0, -1.0, 1.0)


def distance(y, y_hat, name: str = "gaussian"):
    """The scalar DPS data-consistency distance between y and A(x0_hat) (same shapes)."""
    residual = jnp.sqrt(jnp.sum(jnp.square(y - y_hat)))
    if name in ("gaussian", "clean"):
        return residual
    if name == "poisson":
        return jnp.mean(residual / jnp.abs(y))
    raise ValueError(f"unknown noise model {name!r}; expected one of {NOISE_MODELS}")
