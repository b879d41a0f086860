"""The data-consistency proximal step that PnP-ADMM and DiffPIR share, for a linear A:

    prox(r) = argmin_x 1/2 ||y - A x||^2 + rho/2 ||x - r||^2,   i.e.   (A^T A + rho I) x = A^T y + rho r

solved exactly where A has an SVD (`operators.spectral`: x = V (Sigma^T U^T y + rho V^T r) / (Sigma^2 + rho),
elementwise for masks, the separable SR resize and the Gaussian blur with reflection) and by conjugate
gradients otherwise (motion blur). Also the start A^+ y that RED-diff and DiffPIR share (`pseudo_inverse`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dps_jax.operators import spectral


def solve_spectral(sp: spectral.Spectral, y, r, rho):
    """prox(r) through A = U Sigma V^T: (H, W, C)."""
    s = sp.singulars
    v = (s * spectral.measurement_to_spectral(sp, y) + rho * spectral.to_spectral(sp, r)) / (s ** 2 + rho)
    return spectral.from_spectral(sp, v)


def solve_cg(problem, x_start, r, rho, iterations: int):
    """prox(r) by conjugate gradients on the normal equations, from x_start."""
    at = lambda v: problem.op.adjoint(v, x_start)
    normal = lambda v: at(problem.op(v)) + rho * v
    # Stop at float32 precision: iterating on a solved system divides 0 by 0.
    x, _ = jax.scipy.sparse.linalg.cg(normal, at(problem.y) + rho * r, x0=x_start, tol=1e-6, atol=0.0,
                                      maxiter=iterations)
    return x


def solve(problem, r, rho, x_start=None, cg_iterations: int = 50):
    """prox(r) for the problem: through its SVD (`problem.aux`) when `prepare` found one, else by CG."""
    if problem.aux is not None:
        return solve_spectral(problem.aux, problem.y, r, rho)
    return solve_cg(problem, r if x_start is None else x_start, r, rho, cg_iterations)


def pseudo_inverse(problem, image_shape):
    """A^+ y (H, W, C): through the SVD when `prepare` found one, else the least-norm projection of 0."""
    if problem.aux is not None:
        return spectral.regularised_pinv(problem.aux, problem.y)
    return problem.op.project(jnp.zeros(tuple(image_shape), jnp.float32), problem.y)
