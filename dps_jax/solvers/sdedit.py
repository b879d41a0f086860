"""SDEdit (Meng et al. 2022) for inverse problems, as seed 003 uses it: no gradient, only a start from y.

The start image x_y is the point of {x : A x = y} nearest 0 (`Operator.project` of a zero image: the masked
image for inpainting, the pseudo-inverse for SR, A^+ y by conjugate gradients for blur). It is noised to
the first step whose timestep is at most `t_star`,

    x_{t*} = sqrt(alphas_cumprod_{t*}) x_y + sqrt(1 - alphas_cumprod_{t*}) z,

and the unconditional reverse process (DDPM or DDIM) runs from there to t = 0. Steps above t_star cost
nothing (a `lax.cond` on the step row, which is the same for every sample); their record is the start image.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from dps_jax import diffusion
from dps_jax.prior import denoise
from dps_jax.solvers import base, dps


@flax.struct.dataclass
class Options(base.DiffusionOptions):
    t_star: int = base.static_field(500)            # the timestep (of num_timesteps) the run starts at

    def check(self) -> None:
        base.DiffusionOptions.check(self)
        base.check_int("t_star", self.t_star, 0)


def start_image(problem, like):
    """x_y: the least-norm x with A x = y, (H, W, C)."""
    return problem.op.project(jnp.zeros_like(like), problem.y)


def init(key, problem, prior, options, image_shape):
    return {"x": jnp.zeros(tuple(image_shape), jnp.float32), "started": jnp.asarray(False)}


def draw(key, state, problem, options):
    return {"x": jax.random.normal(key, state["x"].shape), "start": jax.random.normal(jax.random.fold_in(key, 1),
                                                                                     state["x"].shape)}


def update(state, c, noise, problem, prior, options: Options):
    x_y = start_image(problem, state["x"])

    def wait(state):
        return state, {"distance": dps.distance(problem, x_y), "x0_hat": x_y}

    def step(state):
        x_t = jnp.where(state["started"], state["x"], diffusion.q_sample(x_y, c, noise["start"]))
        den = denoise(prior, x_t, c)
        x = base.reverse_update(x_t, den, c, noise["x"], options)
        return {"x": x, "started": jnp.asarray(True)}, {"distance": dps.distance(problem, den.x0_hat),
                                                         "x0_hat": den.x0_hat}

    return jax.lax.cond(c.t_model > options.t_star, wait, step, state)


SOLVER = base.Solver("sdedit", Options, init=init, update=update, draw=draw, needs=frozenset({"projection"}))
