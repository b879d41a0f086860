"""The Python API: load a prior, build an operator, draw N posterior samples of y in one call.

    import jax
    from dps_jax import api, operators
    prior = api.load_prior()                                       # the shipped 32 x 32 prior
    op = operators.build("super_resolution", (32, 32, 1), scale_factor=4)
    y = api.measure(op, x, jax.random.PRNGKey(0), noise="gaussian", sigma=0.05)
    out = api.sample(prior, op, y, num_samples=16, steps=100, scale=10.0)
    out["samples"]                                                 # (16, 32, 32, 1)

`api.sample` builds a `solvers.Runner` (the builder the CLI uses) and runs it once; to sample many
measurements of the same shapes, build the runner once with `solvers.build` and call it for each.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from dps_jax import likelihoods, solvers
from dps_jax import prior as prior_lib
from dps_jax.operators import Operator
from dps_jax.solvers.base import with_sampler


def load_prior(path: Optional[str] = None, dtype=None, **options) -> prior_lib.Prior:
    """The prior of a dps_jax checkpoint (the shipped prior by default); see `prior.load`."""
    return prior_lib.load(path, dtype=dtype, **options)


def measure(op: Operator, x, key, noise: str = "gaussian", sigma: float = 0.05, rate: float = 1.0):
    """A simulated noisy measurement y = noise(A(x)) of one image x (H, W, C)."""
    return likelihoods.add_noise(key, op(jnp.asarray(x, jnp.float32)), noise, sigma=sigma, rate=rate)


def sample(prior: Optional[prior_lib.Prior], op: Operator, y, *, solver="ps", num_samples: int = 4,
           steps: int = 100, respacing: str = "", sampler: str = "ddpm", eta: float = 0.0,
           noise: str = "gaussian", sigma: Optional[float] = None, schedule: str = "linear", num_timesteps: int = 1000, image_shape=None,
           seed: int = 0, chunk_size: int = 0, record_every: int = 0, steps_per_call: int = 0,
           progress: Optional[Callable] = None, devices=None, **options) -> dict:
    """N posterior samples of p(x | y) with a solver (DPS, `ps`, by default). Returns numpy arrays:
    samples (N, H, W, C), distance (N, T), and x_record / x0_hat_record if record_every > 0.

    `solver` is a registered name or a `solvers.Solver`; iterative solvers need no prior (None) but an
    `image_shape`. `options` are the solver's own (`scale` for ps, ps+ and mcg; `solvers.get(name).Options`);
    `sampler` and `eta` pick the DDPM or DDIM step of the diffusion solvers; `noise` is the noise model of
    y (it picks the DPS distance) and `sigma` its Gaussian noise std (needed by `ddrm`, which models it).
    `image_shape` defaults to the prior's training size.
    """
    spec = solvers.get(solver) if isinstance(solver, str) else solver
    options = with_sampler(spec, options, sampler, eta)
    if image_shape is None:
        if prior is None or prior.image_shape is None:
            raise ValueError("image_shape=(H, W, C) is needed: the prior does not state its image size")
        image_shape = prior.image_shape
    runner = solvers.build(prior, image_shape, solver=spec, options=options, steps=steps, respacing=respacing,
                           schedule=schedule, num_timesteps=num_timesteps, num_samples=num_samples,
                           chunk_size=chunk_size, record_every=record_every, steps_per_call=steps_per_call,
                           devices=devices)
    problem = solvers.make_problem(op, y, runner.image_shape, noise, sigma)
    return runner(problem, jax.random.PRNGKey(seed), progress)

