"""DPS, diffusion posterior sampling (Chung et al. 2023, Algorithms 1 and 2), and the official `ps+`.

One step from x_t, for one image:

    x0_hat   = E[x_0 | x_t]                                      (Tweedie, `prior.denoise`)
    x'_{t-1} = the unconditional DDPM (or DDIM) step
    x_{t-1}  = x'_{t-1} - zeta * grad_{x_t} d(y, A(x0_hat))

with d the norm ||y - A(x0_hat)|| for Gaussian noise (the paper's zeta_i = zeta / ||y - A(x0_hat)|| step on
the squared norm is this gradient), and mean(||y - A(x0_hat)|| / |y|) for Poisson noise (the official
weighting; `likelihoods.distance`). The gradient goes through the network. Each posterior sample has its
own distance and its own gradient: nothing couples the samples.

`ps+` averages d over `num_perturb` perturbed estimates x0_hat + perturb_scale * u, u ~ U[0, 1)^n.
`ps_unit` (seed 003's "unit-normalised DPS") steps a fixed length `scale` along -grad / ||grad||.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.struct

from dps_jax import likelihoods
from dps_jax.prior import denoise
from dps_jax.solvers import base


@flax.struct.dataclass
class Options(base.DiffusionOptions):
    scale: float = 1.0                              # zeta, the step size

    def check(self) -> None:
        base.DiffusionOptions.check(self)
        base.check_finite_number("scale (zeta)", self.scale)


@flax.struct.dataclass
class PlusOptions(Options):
    num_perturb: int = base.static_field(5)
    perturb_scale: float = 0.05

    def check(self) -> None:
        Options.check(self)
        base.check_int("num_perturb", self.num_perturb, 1)
        base.check_finite_number("perturb_scale", self.perturb_scale)


def distance(problem: base.Problem, x0_hat):
    """d(y, A(x0_hat)) for one image x0_hat (H, W, C): a scalar."""
    return likelihoods.distance(problem.y, problem.op(x0_hat), problem.noise)


def denoise_with_gradient(x_t, c, prior, distance_fn):
    """The network's view of x_t, d = distance_fn(x0_hat) and grad_{x_t} d (through the network)."""
    def d_and_denoised(x):
        den = denoise(prior, x, c)
        return distance_fn(den.x0_hat), den

    (d, den), grad = jax.value_and_grad(d_and_denoised, has_aux=True)(x_t)
    return den, d, grad


def guided_step(x_t, c, noise, prior, options, distance_fn):
    """x'_{t-1} - scale * grad_{x_t} distance_fn(x0_hat), and the step's record."""
    den, d, grad = denoise_with_gradient(x_t, c, prior, distance_fn)
    x_prime = base.reverse_update(x_t, den, c, noise["x"], options)
    return x_prime - options.scale * grad, {"distance": d, "x0_hat": den.x0_hat}


def update(x_t, c, noise, problem, prior, options: Options):
    return guided_step(x_t, c, noise, prior, options, lambda x0_hat: distance(problem, x0_hat))


@flax.struct.dataclass
class UnitOptions(Options):
    scale: float = 0.3                              # the step's length in image space (seed 003: 0.3 deconvolution)


def update_unit(x_t, c, noise, problem, prior, options: UnitOptions):
    """Unit-normalised DPS (seed 003): x'_{t-1} - scale * g / ||g||, g = grad_{x_t} ||y - A(x0_hat)||."""
    den, d, grad = denoise_with_gradient(x_t, c, prior, lambda x0_hat: distance(problem, x0_hat))
    x_prime = base.reverse_update(x_t, den, c, noise["x"], options)
    unit = grad / jnp.maximum(jnp.sqrt(jnp.sum(grad ** 2)), 1e-12)
    return x_prime - options.scale * unit, {"distance": d, "x0_hat": den.x0_hat}


def draw_plus(key, x_t, problem, options: PlusOptions):
    u = jax.random.uniform(jax.random.fold_in(key, 1), (options.num_perturb,) + x_t.shape, x_t.dtype)
    return {**base.draw_x(key, x_t, problem, options), "perturb": u}


def update_plus(x_t, c, noise, problem, prior, options: PlusOptions):
    def mean_distance(x0_hat):
        perturbed = x0_hat + options.perturb_scale * noise["perturb"]
        return jnp.mean(jax.vmap(lambda v: distance(problem, v))(perturbed))
    return guided_step(x_t, c, noise, prior, options, mean_distance)


SOLVER = base.Solver("ps", Options, init=base.start, update=update)
SOLVER_PLUS = base.Solver("ps+", PlusOptions, init=base.start, update=update_plus, draw=draw_plus)
SOLVER_UNIT = base.Solver("ps_unit", UnitOptions, init=base.start, update=update_unit)
