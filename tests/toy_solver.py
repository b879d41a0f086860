"""A toy solver for the plug-in test: it ignores y and steps along x0_hat alone.

    x_{t-1} = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) z        (at the last step, ab_prev = 1: x0_hat)

One module and one registry line (`solvers.register(toy_solver.SOLVER)`) make it a solver of the CLI and
the API.
"""

import flax.struct
import jax.numpy as jnp

from dps_jax.prior import denoise
from dps_jax.solvers import base, dps


@flax.struct.dataclass
class Options(base.TableOptions):                # `steps` (and `respacing`): its grid of the diffusion table
    noise_scale: float = 1.0                     # 0: deterministic


def update(x_t, c, noise, problem, prior, options):
    den = denoise(prior, x_t, c)
    x = jnp.sqrt(c.alphas_cumprod_prev) * den.x0_hat + options.noise_scale * jnp.sqrt(1 - c.alphas_cumprod_prev) * noise["x"]
    return x, {"distance": dps.distance(problem, den.x0_hat), "x0_hat": den.x0_hat}


SOLVER = base.Solver("x0_only", Options, init=base.start, update=update)
