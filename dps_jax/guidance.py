"""Conditioning rules applied after each unconditional reverse step x_t -> x'_{t-1}.

  ps          DPS (Chung et al. 2023, Alg. 1): x_{t-1} = x'_{t-1} - scale * grad_{x_t} d(y, A(x0_hat(x_t)))
  ps+         as ps, with d averaged over `num_perturb` perturbed estimates x0_hat + 0.05 u, u ~ U[0, 1)
              (the official variant)
  mcg         ps, then the projection onto the noisy measurement set {x : A(x) = y_t}
              (Chung et al. 2022, manifold constrained gradients)
  projection  only the projection (score-SDE / ILVR style)
  vanilla     no conditioning: unconditional samples
Here y_t = sqrt(alphas_cumprod) y + sqrt(1 - alphas_cumprod) z is the measurement noised to level t,
and d is the distance of `likelihoods.distance` (the norm, or its Poisson weighting).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dps_jax import likelihoods
from dps_jax.operators import Operator

METHODS = ("ps", "ps+", "mcg", "projection", "vanilla")
PERTURB_SCALE = 0.05


def check_method(method: str, op: Operator | None = None) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown guidance method {method!r}; expected one of {METHODS}")
    if op is not None and method in ("mcg", "projection") and not op.linear:
        raise ValueError(f"guidance {method!r} needs a linear operator with a projection; "
                         f"{op.name!r} is nonlinear: use 'ps'")


def needs_gradient(method: str) -> bool:
    return method in ("ps", "ps+", "mcg")


def measurement_distance(method: str, op: Operator, y, x0_hat, noise_model: str, key=None,
                         num_perturb: int = 5):
    """The scalar d(y, A(x0_hat)) that the gradient step descends; x0_hat (H, W, C)."""
    if method == "ps+":
        u = jax.random.uniform(key, (num_perturb,) + x0_hat.shape, x0_hat.dtype)
        ds = jax.vmap(lambda v: likelihoods.distance(y, op(x0_hat + PERTURB_SCALE * v), noise_model))(u)
        return jnp.mean(ds)
    return likelihoods.distance(y, op(x0_hat), noise_model)


def condition(method: str, x_prime, grad, scale, op: Operator, y_t):
    """x_{t-1} from the unconditional x'_{t-1}, the gradient of d w.r.t. x_t, and y_t."""
    if method in ("ps", "ps+"):
        return x_prime - scale * grad
    if method == "mcg":
        return op.project(x_prime - scale * grad, y_t)
    if method == "projection":
        return op.project(x_prime, y_t)
    if method == "vanilla":
        return x_prime
    raise ValueError(f"unknown guidance method {method!r}; expected one of {METHODS}")
