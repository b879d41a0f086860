"""SITCOM, step-wise triple-consistent diffusion sampling (Alkhouri, Liang, Huang, Wang, Qu, Ravishankar, ICML
2025), as its authors' script runs it (`SITCOM_with_noise.py`).

Few steps (20), each three moves from x_t at timestep t:

1. measurement consistency through the network: Adam on v, started at x_t, minimising
   ||A(clip(x0_hat(v))) - y||^2 with x0_hat(v) = (v - sqrt(1 - ab_t) eps(v, t)) / sqrt(ab_t), for at most
   `iterations` steps, stopping early once the loss is below ((sigma_y + 0.001)^2 M) (M values in y): the
   noise level the fit should not go under;
2. on inpainting, one more gradient step of size `scale` on ||A x0 - y||^2 at the last x0_hat, clipped
   (the script's branch for its box-inpainting task);
3. x_{t'} = sqrt(ab_t') x0 + sqrt(1 - ab_t') z, fresh noise (t' = t - T / steps; the last step lands on
   ab_0).

The steps are its DDIM scheduler's, t = k (T // steps) for k = steps - 1 .. 0, and x_T is N(0, I). The sample
is the last x0. Departure: the script keeps, as its output, the x0 of highest PSNR against the true image
over all steps (an oracle); dps_jax returns the last one. Defaults (its README's command, `configs/
inpainting_config.yaml`): 20 steps, 30 Adam iterations, lr 0.02, inpainting scale 0.5.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dps_jax import likelihoods, prior as prior_lib, schedule as schedule_lib
from dps_jax.solvers import base


@flax.struct.dataclass
class Options:
    steps: int = base.static_field(20)                 # N: t = k (T // N), k = N - 1 .. 0
    iterations: int = base.static_field(30)            # K: Adam steps per diffusion step (at most)
    lr: float = 0.02                                   # Adam's learning rate
    scale: float = 0.5                                 # inpainting's extra gradient step on x0

    def check(self) -> None:
        base.check_int("sitcom steps", self.steps, 1)
        base.check_int("sitcom iterations", self.iterations, 1)
        base.check_finite_number("sitcom lr", self.lr)
        base.check_finite_number("sitcom scale", self.scale)


def grid(options: Options, schedule: base.Schedule) -> base.Grid:
    """One row per step: t, ab_t and ab_{t'} (t' = t - T // steps; ab_0 below 0)."""
    steps = base.check_int("steps", options.steps, 1)
    num_timesteps = base.check_int("num_timesteps", schedule.num_timesteps, 1)
    if steps > num_timesteps:
        raise ValueError(f"sitcom steps {steps} exceeds num_timesteps {num_timesteps}")
    ratio = num_timesteps // steps
    t = (np.arange(steps) * ratio)[::-1]
    ab = np.asarray(schedule_lib.build_tables(schedule.name, num_timesteps, num_timesteps).alphas_cumprod)
    prev = t - ratio
    xs = {"t": jnp.asarray(t, jnp.int32), "ab": jnp.asarray(ab[t], jnp.float32),
          "ab_prev": jnp.asarray(ab[np.maximum(prev, 0)], jnp.float32), "index": jnp.asarray(t // ratio, jnp.int32)}
    return base.Grid(xs, steps * options.iterations)


def x0_of(prior, v, t, ab):
    """clip(x0_hat(v)) at timestep t: (H, W, C)."""
    return jnp.clip(prior_lib.x0_at_step(prior, v, t, ab), -1.0, 1.0)


def fit(prior, problem, x_t, t, ab, options: Options):
    """Step 1: (the x0 of the last evaluated v, the Adam steps taken). The fitted v itself is not kept: the
    next x_t is x0 noised afresh (step 3)."""
    y = problem.y
    threshold = (problem.sigma + 0.001) ** 2 * y.size

    def loss(v):
        x0 = x0_of(prior, v, t, ab)
        return jnp.sum((problem.op(x0) - y) ** 2), x0

    adam = optax.adam(options.lr)

    def body(carry, _):
        v, opt_state, x0_last, done, taken = carry
        (value, x0), g = jax.value_and_grad(loss, has_aux=True)(v)
        stop = done | (value < threshold)           # the script breaks before its backward pass
        updates, new_state = adam.update(g, opt_state, v)
        v_new = jnp.where(stop, v, optax.apply_updates(v, updates))
        opt_state = jax.tree_util.tree_map(lambda a, b: jnp.where(stop, a, b), opt_state, new_state)
        x0_last = jnp.where(done, x0_last, x0)
        return (v_new, opt_state, x0_last, stop, taken + jnp.where(stop, 0, 1)), None

    init = (x_t, adam.init(x_t), jnp.zeros_like(x_t), jnp.asarray(False), jnp.asarray(0))
    (_, _, x0, _, taken), _ = jax.lax.scan(body, init, None, length=options.iterations)
    return x0, taken


def init(key, problem, prior, options: Options, image_shape):
    return {"x": jax.random.normal(key, tuple(image_shape), jnp.float32),
            "x0": jnp.zeros(tuple(image_shape), jnp.float32)}


def update(state, c, noise, problem, prior, options: Options):
    x0, taken = fit(prior, problem, state["x"], c["t"], c["ab"], options)
    if problem.op.name == "inpainting":
        g = jax.grad(lambda x: jnp.sum((problem.op(x) - problem.y) ** 2))(x0)
        x0 = jnp.clip(x0 - options.scale * g, -1.0, 1.0)
    x_next = jnp.sqrt(c["ab_prev"]) * x0 + jnp.sqrt(1 - c["ab_prev"]) * noise["x"]
    d = likelihoods.distance(problem.y, problem.op(x0), "gaussian")
    return {"x": x_next, "x0": x0}, {"distance": d, "iterations": taken.astype(jnp.float32), "x0_hat": x0}


def result(state):
    return state["x0"]


SOLVER = base.Solver("sitcom", Options, init=init, update=update, result=result, grid=grid,
                     needs=frozenset({"sigma"}))
