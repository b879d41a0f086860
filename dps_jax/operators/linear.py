"""What a linear A gives without being asked: the projection onto its measurement set, by conjugate gradients.

    x_p = x + A^+ (y - A x),   A^+ r = argmin ||d|| over the d that minimise ||A d - r||

so A x_p = y where y is in A's range (then x_p is the point of {x' : A x' = y} nearest x, and A^+ y, from
x = 0, the least-norm solution), and A x_p is the nearest point of A's range to y otherwise (a noisy y that no
image explains: MCG's and Score-SDE's y_t). A^+ r comes from CG on the normal equations A^T A d = A^T r started
at d = 0, which stays in A's row space and so converges to the least-norm solution even where A A^T is
singular (repeated or empty rows), where CG on A A^T z = r would divide by zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# CG steps of a derived projection (an operator's static "cg_iterations" overrides it) and the relative
# residual it stops at (jax's default).
CG_ITERATIONS = 50
CG_TOL = 1e-5


def cg_projection(forward, adjoint, x, y, iterations: int = CG_ITERATIONS, tol: float = CG_TOL):
    """x + A^+ (y - A x) for one image x (H, W, C): `forward` is A, `adjoint` A^T (y -> image)."""
    d, _ = jax.scipy.sparse.linalg.cg(lambda v: adjoint(forward(v)), adjoint(y - forward(x)), x0=jnp.zeros_like(x),
                                      tol=tol, atol=0.0, maxiter=iterations)
    return x + d
