"""ScoreALD as seed 003 defines it (after Jalal et al. 2021): the DPS gradient with an annealed step size.

    x_{t-1} = x'_{t-1} - lambda_t grad_{x_t} ||y - A(x0_hat)||

x'_{t-1} the unconditional DDPM / DDIM step, lambda_t linear in the step index from `scale_start` at the
first reverse step to `scale_end` at the last (seed 003: [10, 15] for deconvolution, [15, 20] for
inpainting on FFHQ 256, 1000 steps). Unlike DPS's zeta the step is not divided by anything, so the
endpoints are task- and resolution-specific.
"""

from __future__ import annotations

import flax.struct

from dps_jax.solvers import base, dps


@flax.struct.dataclass
class Options(base.DiffusionOptions):
    scale_start: float = 10.0                       # lambda at the first (noisiest) step
    scale_end: float = 15.0                         # lambda at the last step

    def check(self) -> None:
        base.DiffusionOptions.check(self)
        base.check_finite_number("scale_start", self.scale_start)
        base.check_finite_number("scale_end", self.scale_end)


def step_size(c, options: Options):
    """lambda_t: scale_start at c.fraction = 1 (the first step), scale_end at 0 (the last)."""
    return options.scale_end + (options.scale_start - options.scale_end) * c.fraction


def update(x_t, c, noise, problem, prior, options: Options):
    den, d, grad = dps.denoise_with_gradient(x_t, c, prior, lambda x0_hat: dps.distance(problem, x0_hat))
    x_prime = base.reverse_update(x_t, den, c, noise["x"], options)
    return x_prime - step_size(c, options) * grad, {"distance": d, "x0_hat": den.x0_hat}


SOLVER = base.Solver("scoreald", Options, init=base.start, update=update)
