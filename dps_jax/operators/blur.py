"""Deblurring: A(x) = k * x, a per-channel cross-correlation after reflection padding (as the official
code's ReflectionPad2d + grouped Conv2d), with a Gaussian kernel or a random camera-shake kernel.

Kernels are (k, k) float32 arrays with k odd, non-negative, summing to 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _check_kernel_size(kernel_size, image_shape):
    if isinstance(kernel_size, bool) or not float(kernel_size).is_integer() or kernel_size < 1 \
            or int(kernel_size) % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    h, w, _ = image_shape
    if int(kernel_size) // 2 >= min(h, w):
        raise ValueError(
            f"kernel_size {kernel_size} is too large for a {h} x {w} image "
            f"(reflection padding needs kernel_size // 2 < {min(h, w)})")
    return int(kernel_size)


def gaussian_kernel(kernel_size: int = 61, sigma: float = 3.0) -> np.ndarray:
    """The official Gaussian kernel, (k, k) float64: a centred delta filtered by a sampled Gaussian
    truncated at 4 sigma, with `scipy.ndimage.gaussian_filter`'s half-sample-symmetric borders."""
    if not sigma > 0:
        raise ValueError(f"Gaussian blur sigma (intensity) must be positive, got {sigma!r}")
    radius = int(4.0 * float(sigma) + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / float(sigma)) ** 2)
    taps /= taps.sum()
    # Filtering a delta at c: out[i] = sum of the taps j whose mirrored position i + j lands on c.
    n, c = kernel_size, kernel_size // 2
    pos = np.arange(n)[:, None] + np.arange(-radius, radius + 1)[None, :]
    period = 2 * n
    pos = np.mod(pos, period)
    pos = np.where(pos < n, pos, period - 1 - pos)
    g = ((pos == c) * taps[None, :]).sum(axis=1)
    return np.outer(g, g)


def motion_kernel(key, kernel_size: int = 61, intensity: float = 0.5, num_points: int = 512):
    """A random camera-shake kernel, (k, k) float32, non-negative, summing to 1, inside the window.

    The camera path is a planar curve with a random heading whose turning rate performs a random
    walk; `intensity` in [0, 1] sets its length (from a quarter of the window to nearly all of it),
    how much it turns and how much it jitters. Intensity 0 gives a straight streak. The path is
    splatted bilinearly onto the grid with equal exposure per point and centred on its centroid.
    """
    if not 0.0 <= float(intensity) <= 1.0:
        raise ValueError(f"motion blur intensity must lie in [0, 1], got {intensity!r}")
    k = int(kernel_size)
    c = (k - 1) / 2.0
    k_head, k_turn, k_jit = jax.random.split(key, 3)
    length = (0.25 + 0.65 * intensity) * (k - 1)
    heading0 = jax.random.uniform(k_head, (), minval=0.0, maxval=2 * jnp.pi)
    # Turning rate: a random walk, so curvature is smooth but wanders; total turn grows with intensity.
    # Scaled so that the total change of heading has standard deviation 2.5 * intensity^1.5 radians
    # (the heading is a twice-integrated white noise: its variance grows as n^3 / 3).
    turn_rate = jnp.cumsum(jax.random.normal(k_turn, (num_points,))) * (
        2.5 * intensity ** 1.5 * math.sqrt(3.0) / num_points ** 1.5)
    heading = heading0 + jnp.cumsum(turn_rate)
    step = length / num_points
    path = jnp.cumsum(jnp.stack([jnp.cos(heading), jnp.sin(heading)], -1) * step, axis=0)
    path = path + jax.random.normal(k_jit, path.shape) * (0.6 * intensity)
    path = path - path.mean(axis=0)
    # Keep the whole path (and its bilinear footprint) inside the window.
    reach = jnp.max(jnp.abs(path))
    path = path * jnp.minimum(1.0, (c - 1.0) / jnp.maximum(reach, 1e-6)) + c
    r0 = jnp.floor(path[:, 1]).astype(jnp.int32)
    c0 = jnp.floor(path[:, 0]).astype(jnp.int32)
    fr, fc = path[:, 1] - r0, path[:, 0] - c0
    kern = jnp.zeros((k, k), jnp.float32)
    for dr, dc, wgt in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                        (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        kern = kern.at[r0 + dr, c0 + dc].add(wgt)
    return kern / kern.sum()


def _kernel_params(kernel):
    return {"kernel": jnp.asarray(kernel, jnp.float32)}


def make_gaussian(image_shape, kernel_size=61, intensity=3.0):
    """Data for the paper's Gaussian blur (size 61, sigma 3.0); `intensity` is sigma."""
    k = _check_kernel_size(kernel_size, image_shape)
    return _kernel_params(gaussian_kernel(k, float(intensity)))


def make_motion(image_shape, kernel_size=61, intensity=0.5, key=None, kernel=None):
    """Data for motion blur: a given (k, k) kernel, or one drawn with `key` (the paper: 61, 0.5)."""
    if kernel is not None:
        kernel = np.asarray(kernel, np.float32)
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
            raise ValueError(f"motion blur kernel must be square (k, k), got shape {kernel.shape}")
        _check_kernel_size(kernel.shape[0], image_shape)
        return _kernel_params(kernel)
    k = _check_kernel_size(kernel_size, image_shape)
    if key is None:
        raise ValueError("motion blur needs a kernel, or a key to draw one")
    return _kernel_params(motion_kernel(key, k, float(intensity)))


def forward(x, data):
    """(H, W, C) -> (H, W, C): reflection padding by k // 2, then per-channel cross-correlation."""
    kern = data["kernel"]
    p = kern.shape[0] // 2
    c = x.shape[-1]
    xp = jnp.pad(x, ((p, p), (p, p), (0, 0)), mode="reflect")
    rhs = jnp.broadcast_to(kern[:, :, None, None], kern.shape + (1, c)).astype(x.dtype)
    out = jax.lax.conv_general_dilated(
        xp[None], rhs, window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST)
    return out[0]


def display(y, data):
    """The official code shows the blurred image itself."""
    return y


def project(x, y, data, iterations: int = 50):
    """x + A^T (A A^T)^-1 (y - A x), with the inverse by conjugate gradients (A A^T is symmetric
    positive semi-definite; the residual's component in its null space is left alone)."""
    fwd = lambda v: forward(v, data)
    adjoint = jax.linear_transpose(fwd, x)
    at = lambda r: adjoint(r)[0]
    z, _ = jax.scipy.sparse.linalg.cg(lambda r: fwd(at(r)), y - fwd(x), maxiter=iterations)
    return x + at(z)
