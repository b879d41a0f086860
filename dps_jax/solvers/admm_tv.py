"""ADMM-TV, the paper's total-variation baseline (Appendix D.2): for a linear A,

    min_x  1/2 ||y - A x||^2 + lam ||D x||_{2,1}

D the forward differences along both image axes (zero across the last row and column), ||.||_{2,1} the
isotropic TV: per pixel and channel the 2-norm of the (vertical, horizontal) difference pair, summed.
ADMM on the split z = D x with penalty rho and the scaled dual u:

    x <- argmin 1/2 ||y - A x||^2 + rho/2 ||D x - z + u||^2   (A^T A + rho D^T D) x = A^T y + rho D^T (z - u)
    z <- shrink(D x + u, lam / rho)                            group soft-thresholding of each pair
    u <- u + D x - z

The x-subproblem is solved by `cg_iterations` conjugate-gradient steps, warm-started from the previous x:
one method for every linear A in dps_jax (masks, the SR resize, blur with reflection padding, whose
normal matrices no single FFT diagonalises). Deterministic: every sample of a run is the same.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from dps_jax.solvers import base


@flax.struct.dataclass
class Options:
    lam: float = 0.02                                 # TV weight lambda (set per task by the configs)
    rho: float = 0.2                                  # ADMM penalty
    steps: int = base.static_field(500)               # ADMM iterations
    cg_iterations: int = base.static_field(30)      # per x-update

    def check(self) -> None:
        base.check_int("steps", self.steps, 1)
        base.check_int("cg_iterations", self.cg_iterations, 1)
        base.check_finite_number("lam", self.lam)
        if not (self.rho > 0):
            raise ValueError(f"rho must be > 0, got {self.rho!r}")


def grad(x):
    """D x: (H, W, C) -> (2, H, W, C), forward differences along H and W, 0 on the last row / column."""
    dh = jnp.concatenate([x[1:] - x[:-1], jnp.zeros_like(x[:1])], axis=0)
    dw = jnp.concatenate([x[:, 1:] - x[:, :-1], jnp.zeros_like(x[:, :1])], axis=1)
    return jnp.stack([dh, dw])


def grad_adjoint(p):
    """D^T p: (2, H, W, C) -> (H, W, C), the adjoint of `grad` (a negative divergence)."""
    ph, pw = p[0], p[1]
    zh, zw = jnp.zeros_like(ph[:1]), jnp.zeros_like(pw[:, :1])
    th = jnp.concatenate([zh, ph[:-1]], axis=0) - jnp.concatenate([ph[:-1], zh], axis=0)
    tw = jnp.concatenate([zw, pw[:, :-1]], axis=1) - jnp.concatenate([pw[:, :-1], zw], axis=1)
    return th + tw


def tv(x):
    """||D x||_{2,1}, the isotropic total variation of x (H, W, C)."""
    return jnp.sum(jnp.sqrt(jnp.sum(grad(x) ** 2, axis=0)))


def shrink(v, threshold):
    """argmin_z threshold ||z||_{2,1} + 1/2 ||z - v||^2 for v (2, H, W, C): each pair scaled towards 0."""
    norm = jnp.sqrt(jnp.sum(v ** 2, axis=0, keepdims=True))
    return v * jnp.maximum(0.0, 1.0 - threshold / jnp.maximum(norm, 1e-12))


def objective(x, problem, lam):
    r = problem.y - problem.op(x)
    return 0.5 * jnp.sum(r ** 2) + lam * tv(x)


def init(key, problem, prior, options, image_shape):
    """x_0 = A^T y, z_0 = D x_0, u_0 = 0."""
    x0 = problem.op.adjoint(problem.y, jnp.zeros(image_shape, jnp.float32))
    return {"x": x0, "z": grad(x0), "u": jnp.zeros((2,) + tuple(image_shape), jnp.float32)}


def update(state, k, noise, problem, prior, options):
    x, z, u = state["x"], state["z"], state["u"]
    at = lambda v: problem.op.adjoint(v, x)                       # A^T
    normal = lambda v: at(problem.op(v)) + options.rho * grad_adjoint(grad(v))
    rhs = at(problem.y) + options.rho * grad_adjoint(z - u)
    x, _ = jax.scipy.sparse.linalg.cg(normal, rhs, x0=x, tol=0.0, atol=0.0, maxiter=options.cg_iterations)
    dx = grad(x)
    z = shrink(dx + u, options.lam / options.rho)
    u = u + dx - z
    return {"x": x, "z": z, "u": u}, {"objective": objective(x, problem, options.lam),
                                       "primal_residual": jnp.sqrt(jnp.sum((dx - z) ** 2))}


SOLVER = base.Solver("admm_tv", Options, init=init, update=update, draw=base.draw_nothing, kind="iterative",
                     needs=frozenset({"linear"}))
