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

Any other linear A can be given as dense factors (`Dense`: V (D, D), U (M, M) and the singular values, D the
image's and M the measurement's number of entries), made from a user's arrays or, for small problems, from
the matrix of A itself (`dense_of`). Its spectral coordinates are V^T x in the image's shape (the flat
index order), so every spectral update stays elementwise and every function below takes either form.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Tuple

import flax.struct
import jax
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


@flax.struct.dataclass
class Dense:
    """A = U Sigma V^T as dense matrices over the flattened image (D) and measurement (M); `singulars` and
    `observed` in the image's shape, in flat index order (the first min(D, M) coordinates are seen)."""
    v: jnp.ndarray                     # (D, D) orthogonal
    u: jnp.ndarray                     # (M, min(M, D)): orthonormal columns, the ones a singular value meets
    singulars: jnp.ndarray             # (H, W, C)
    observed: jnp.ndarray              # (H, W, C)
    y_shape: Tuple[int, ...] = flax.struct.field(pytree_node=False, default=())


@flax.struct.dataclass
class Functional:
    """A = U Sigma V^T given as functions (a user's fast transforms: an FFT, a wavelet): `vt` x -> V^T x and
    `v` its inverse over images (H, W, C), `ut` y -> U^T y into the image's shape (coordinate i of the
    image-shaped result pairs with singular value i; zeros where y has no component) and `u` back to y;
    `singulars` and `observed` in the image's shape."""
    singulars: jnp.ndarray
    observed: jnp.ndarray
    vt: Callable = flax.struct.field(pytree_node=False, default=None)
    v: Callable = flax.struct.field(pytree_node=False, default=None)
    ut: Callable = flax.struct.field(pytree_node=False, default=None)
    u: Callable = flax.struct.field(pytree_node=False, default=None)


def functional(vt, v, ut, u, singulars, image_shape, observed=None, cutoff: float = 0.0) -> Functional:
    """The Functional form of a user's SVD; `observed` defaults to the coordinates with a singular value."""
    s = np.asarray(singulars, np.float64)
    if s.shape != tuple(image_shape):
        raise ValueError(f"singular values of shape {s.shape}; as functions, an SVD gives them in the image's shape "
                         f"{tuple(image_shape)} (0 where A sees nothing)")
    obs = (s > 0) if observed is None else np.asarray(observed) > 0
    f = lambda a: jnp.asarray(a, jnp.float32)
    return Functional(singulars=f(np.where(s < cutoff, 0.0, s)), observed=f(obs), vt=vt, v=v, ut=ut, u=u)


def dense(u, s, v, image_shape, y_shape, cutoff: float = 0.0) -> Dense:
    """The Dense form of A = U diag(s) V^T (U (M, M) or its first min(M, D) columns, s (k,), V (D, D),
    k <= min(M, D)), singular values below `cutoff` (or float32's resolution of A) set to 0; a ValueError
    naming what does not fit. Only U's first min(M, D) columns meet a singular value: the rest are dropped."""
    u, s, v = (np.asarray(a, np.float64) for a in (u, s, v))
    d, m = int(np.prod(image_shape)), int(np.prod(y_shape))
    if (u.ndim != 2 or u.shape[0] != m or u.shape[1] not in (m, min(m, d)) or v.shape != (d, d) or s.ndim != 1
            or len(s) > min(m, d)):
        raise ValueError(f"an SVD of A for images {tuple(image_shape)} and measurements {tuple(y_shape)} needs U "
                         f"({m}, {m}) or ({m}, {min(m, d)}), at most {min(m, d)} singular values and V ({d}, {d}); "
                         f"got U {u.shape}, s {s.shape}, V {v.shape}")
    u = u[:, :min(m, d)]
    singulars, observed = np.zeros(d), np.zeros(d)
    # Below float32's resolution of A (numpy's lstsq rule) a singular value is rounding, not signal: 0, so
    # that no pseudo-inverse divides by it.
    floor = max(cutoff, np.finfo(np.float32).eps * max(m, d) * float(s.max(initial=0.0)))
    singulars[:len(s)] = np.where(s < floor, 0.0, s)
    observed[:min(m, d)] = 1.0
    f = lambda a: jnp.asarray(a, jnp.float32)
    return Dense(v=f(v), u=f(u), singulars=f(singulars.reshape(image_shape)),
                 observed=f(observed.reshape(image_shape)), y_shape=tuple(int(n) for n in y_shape))


def dense_of(forward, image_shape, cutoff: float = 0.0) -> Dense:
    """The Dense SVD of a linear `forward` (x (H, W, C) -> y), from its matrix: one application per basis
    image, then numpy's SVD in float64 (O(D^3) time, D^2 memory: for small images). With more measurements
    than pixels U is computed without the columns no singular value meets (a Fourier operator's real and
    imaginary parts, 2048 x 1024: 4.0 s with them)."""
    d = int(np.prod(image_shape))
    basis = jnp.eye(d, dtype=jnp.float32).reshape((d,) + tuple(image_shape))
    columns = jax.vmap(forward)(basis)                            # (D, *y_shape): row i is A e_i
    y_shape = tuple(columns.shape[1:])
    a = np.asarray(columns, np.float64).reshape(d, -1).T           # (M, D)
    u, s, vt = np.linalg.svd(a, full_matrices=a.shape[0] < d)      # V square either way; U (M, min(M, D))
    return dense(u, s, vt.T, image_shape, y_shape, cutoff)


def to_spectral(sp, x):
    """V^T x: (H, W, C) -> (H, W, C)."""
    if isinstance(sp, Dense):
        return (sp.v.T @ x.reshape(-1)).reshape(x.shape)
    if isinstance(sp, Functional):
        return sp.vt(x)
    return jnp.einsum("hi,hwc,wj->ijc", sp.v_h, x, sp.v_w)


def from_spectral(sp, v):
    """V v: (H, W, C) -> (H, W, C)."""
    if isinstance(sp, Dense):
        return (sp.v @ v.reshape(-1)).reshape(v.shape)
    if isinstance(sp, Functional):
        return sp.v(v)
    return jnp.einsum("hi,ijc,wj->hwc", sp.v_h, v, sp.v_w)


def _pad_to(vector, d: int):
    """A flat vector cut or zero-padded to length d."""
    return jnp.pad(vector, (0, max(0, d - vector.shape[0])))[:d]


def measurement_to_spectral(sp, y):
    """U^T y, placed in an image-shaped array: (m, n, C) -> (H, W, C), zeros outside (m, n)."""
    if isinstance(sp, Dense):
        return _pad_to(sp.u.T @ y.reshape(-1), sp.singulars.size).reshape(sp.singulars.shape)
    if isinstance(sp, Functional):
        return sp.ut(y)
    m, n = sp.u_h.shape[0], sp.u_w.shape[0]
    h, w = sp.v_h.shape[0], sp.v_w.shape[0]
    uy = jnp.einsum("mi,mnc,nj->ijc", sp.u_h, y, sp.u_w)
    return jnp.pad(uy, ((0, h - m), (0, w - n), (0, 0)))


def apply(sp, x):
    """A x through the decomposition: (H, W, C) -> (m, n, C) (a check of the factors)."""
    if isinstance(sp, Dense):
        v = (sp.singulars * to_spectral(sp, x)).reshape(-1)
        return (sp.u @ _pad_to(v, sp.u.shape[1])).reshape(sp.y_shape)
    if isinstance(sp, Functional):
        return sp.u(sp.singulars * to_spectral(sp, x))
    m, n = sp.u_h.shape[0], sp.u_w.shape[0]
    v = (sp.singulars * to_spectral(sp, x))[:m, :n]
    return jnp.einsum("mi,ijc,nj->mnc", sp.u_h, v, sp.u_w)


def regularised_pinv(sp, y, lam=0.0):
    """A^T (A A^T + lam I)^{-1} y = V diag(s / (s^2 + lam)) U^T y: (m, n, C) -> (H, W, C).

    lam = 0 is the pseudo-inverse A^+ y (coordinates with a zero singular value give 0); lam > 0 the
    Tikhonov-regularised inverse.
    """
    if isinstance(sp, (Dense, Functional)):
        s = sp.singulars
    else:
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
