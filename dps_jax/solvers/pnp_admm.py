"""PnP-ADMM (Venkatakrishnan et al. 2013; Chan, Wang, Elgendy 2016) with a DnCNN denoiser D as the
proximal map of the prior, for a linear A (the paper's baseline, Appendix D.2):

    x <- argmin 1/2 ||y - A x||^2 + rho/2 ||x - (z - u)||^2    (A^T A + rho I) x = A^T y + rho (z - u)
    z <- D(x + u)
    u <- u + x - z

from x_0 = z_0 = A^T y, u_0 = 0; the result is x. The x-subproblem is solved exactly where A has an SVD
(`operators.spectral`: x = V (Sigma^T U^T y + rho V^T (z - u)) / (Sigma^2 + rho) -- elementwise for masks,
the separable SR resize and the Gaussian blur with reflection), and by conjugate gradients otherwise
(motion blur): `solvers.proximal`. Defaults are those of SCICO's PnP-DnCNN ADMM example, whose implementation the paper used
(rho = 0.2, 10 iterations); the denoiser is a weight file (`models/dncnn.py`: SCICO's published DnCNNs, or
the one shipped for the 32 x 32 prior). Deterministic: every sample of a run is the same.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp

from dps_jax.models import dncnn
from dps_jax.solvers import base, proximal


@flax.struct.dataclass
class Options:
    rho: float = 0.2                                  # ADMM penalty
    steps: int = base.static_field(10)                # ADMM iterations
    denoiser: str = base.static_field("")             # a DnCNN weight file; "" = the shipped one
    cg_iterations: int = base.static_field(50)        # x-update without an SVD (motion blur)

    def check(self) -> None:
        base.check_int("steps", self.steps, 1)
        base.check_int("cg_iterations", self.cg_iterations, 1)
        if not (self.rho > 0):
            raise ValueError(f"rho must be > 0, got {self.rho!r}")


def init(key, problem, prior, options, image_shape):
    x0 = problem.op.adjoint(problem.y, jnp.zeros(image_shape, jnp.float32))
    return {"x": x0, "z": x0, "u": jnp.zeros_like(x0)}


def update(state, k, noise, problem, denoiser, options: Options):
    """One ADMM iteration; `denoiser`, the solver's own network (`model`), maps an (H, W, C) image to its
    denoised one."""
    x, z, u = state["x"], state["z"], state["u"]
    x = proximal.solve(problem, z - u, options.rho, x_start=x, cg_iterations=options.cg_iterations)
    z = denoiser(x + u)
    u = u + x - z
    r = problem.y - problem.op(x)
    return {"x": x, "z": z, "u": u}, {"residual": jnp.sqrt(jnp.sum(r ** 2)),
                                       "primal_residual": jnp.sqrt(jnp.sum((x - z) ** 2))}


def result(state):
    return state["x"]


def load_denoiser(options: Options):
    return dncnn.load(options.denoiser)


def grid(options: Options, schedule) -> base.Grid:
    """One denoiser evaluation per iteration."""
    return base.iteration_grid(options, schedule)._replace(evaluations=options.steps)


SOLVER = base.Solver("pnp_admm", Options, init=init, update=update, draw=base.draw_nothing, kind="iterative",
                     grid=grid, needs=frozenset({"svd_or_cg"}), network=load_denoiser)
