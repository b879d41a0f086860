"""A = U Sigma V^T for the operators that have an efficient SVD, as spectral methods (DDRM) need it.

Every such operator here acts on each channel as A(X) = L X R^T with an (m, H) matrix L and an (n, W)
matrix R: super-resolution (the separable resize matrices), Gaussian blur (the 1-D reflection-padded
correlation matrices of its rank-one kernel) and inpainting (L = R = I, the mask as the singular values).
With the full SVDs L = U_L S_L V_L^T and R = U_R S_R V_R^T, the spectral coordinates of an image are

    V^T x = V_L^T X V_R               an (H, W, C) array, like the image
    singulars[i, j] = s_L[i] s_R[j]   for i < m, j < n; 0 elsewhere (directions A does not see)
    U^T y = U_L^T Y U_R               (m, n, C), placed in the top-left of an (H, W, C) array of zeros

so A x = U_L (singulars * V^T x)[:m, :n] U_R^T, and every spectral update is elementwise. `observed` marks
the coordinates that have a row of U^T y (the (m, n) block); a singular value there may still be zero
(`cutoff` zeroes the 1-D singular values below it, as DDRM's own operators do, so that a nearly invisible
direction is not divided by). For inpainting the singular values and `observed` are the mask itself
(V = U = I, `diagonal`).

Each operator that has an SVD supplies it from these helpers (`OperatorSpec.svd`, `Operator.svd`); motion
blur (a kernel of full rank) and phase retrieval (nonlinear) have none.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Spectral(NamedTuple):
    """The SVD of one operator (a pytree of arrays): see the module docstring."""
    v_h: jnp.ndarray          # (H, H) orthogonal
    v_w: jnp.ndarray          # (W, W)
    u_h: jnp.ndarray          # (m, m)
    u_w: jnp.ndarray          # (n, n)
    singulars: jnp.ndarray    # (H, W, 1 or C), zero where A sees nothing
    observed: jnp.ndarray     # (H, W, 1 or C), 1 on the coordinates of U^T y, 0 elsewhere


def to_spectral(sp: Spectral, x):
    """V^T x: (H, W, C) -> (H, W, C)."""
    return jnp.einsum("hi,hwc,wj->ijc", sp.v_h, x, sp.v_w)


def from_spectral(sp: Spectral, v):
    """V v: (H, W, C) -> (H, W, C)."""
    return jnp.einsum("hi,ijc,wj->hwc", sp.v_h, v, sp.v_w)


def measurement_to_spectral(sp: Spectral, y):
    """U^T y, placed in an image-shaped array: (m, n, C) -> (H, W, C), zeros outside (m, n)."""
    m, n = sp.u_h.shape[0], sp.u_w.shape[0]
    h, w = sp.v_h.shape[0], sp.v_w.shape[0]
    uy = jnp.einsum("mi,mnc,nj->ijc", sp.u_h, y, sp.u_w)
    return jnp.pad(uy, ((0, h - m), (0, w - n), (0, 0)))


def apply(sp: Spectral, x):
    """A x through the decomposition: (H, W, C) -> (m, n, C) (a check of the factors)."""
    m, n = sp.u_h.shape[0], sp.u_w.shape[0]
    v = (sp.singulars * to_spectral(sp, x))[:m, :n]
    return jnp.einsum("mi,ijc,nj->mnc", sp.u_h, v, sp.u_w)


def regularised_pinv(sp: Spectral, y, lam=0.0):
    """A^T (A A^T + lam I)^{-1} y = V diag(s / (s^2 + lam)) U^T y: (m, n, C) -> (H, W, C).

    lam = 0 is the pseudo-inverse A^+ y (coordinates with a zero singular value give 0); lam > 0 the
    Tikhonov-regularised inverse.
    """
    s = jnp.broadcast_to(sp.singulars, (sp.v_h.shape[0], sp.v_w.shape[0], jnp.shape(y)[-1]))
    seen = (sp.observed > 0) & (s > 0)
    gain = jnp.where(seen, s / jnp.where(seen, s ** 2 + lam, 1.0), 0.0)
    return from_spectral(sp, gain * measurement_to_spectral(sp, y))


def separable(left: np.ndarray, right: np.ndarray, cutoff: float = 0.0) -> Spectral:
    """The Spectral of X -> L X R^T from L (m, H) and R (n, W), in float64 then stored as float32; 1-D
    singular values below `cutoff` become 0."""
    u_l, s_l, vt_l = np.linalg.svd(np.asarray(left, np.float64), full_matrices=True)
    u_r, s_r, vt_r = np.linalg.svd(np.asarray(right, np.float64), full_matrices=True)
    s_l, s_r = np.where(s_l < cutoff, 0.0, s_l), np.where(s_r < cutoff, 0.0, s_r)
    (m, h), (n, w) = left.shape, right.shape
    singulars, observed = np.zeros((h, w), np.float64), np.zeros((h, w), np.float64)
    singulars[:len(s_l), :len(s_r)] = np.outer(s_l, s_r)
    observed[:m, :n] = 1.0
    f = lambda a: jnp.asarray(a[..., None], jnp.float32)
    g = lambda a: jnp.asarray(a, jnp.float32)
    return Spectral(v_h=g(vt_l.T), v_w=g(vt_r.T), u_h=g(u_l), u_w=g(u_r), singulars=f(singulars),
                    observed=f(observed))


def reflect_correlation_matrix(taps: np.ndarray, length: int) -> np.ndarray:
    """(length, length): 1-D correlation with `taps` (odd count) after reflection padding (`mode="reflect"`:
    ... 2 1 | 0 1 ... n-1 | n-2 ...), the 1-D factor of `blur.forward`."""
    k = len(taps)
    p = k // 2
    pos = np.arange(length)[:, None] + np.arange(k)[None, :] - p
    period = 2 * (length - 1)
    pos = np.mod(pos, period)
    pos = np.where(pos < length, pos, period - pos)
    mat = np.zeros((length, length), np.float64)
    np.add.at(mat, (np.repeat(np.arange(length), k), pos.ravel()), np.tile(np.asarray(taps, np.float64), length))
    return mat


def diagonal(mask, image_shape) -> Spectral:
    """The Spectral of A x = mask * x (inpainting): U = V = I, the mask as singular values and `observed`."""
    h, w, _ = image_shape
    mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), (h, w, jnp.shape(mask)[-1]))
    eye = lambda n: jnp.eye(n, dtype=jnp.float32)
    return Spectral(v_h=eye(h), v_w=eye(w), u_h=eye(h), u_w=eye(w), singulars=mask, observed=mask)
