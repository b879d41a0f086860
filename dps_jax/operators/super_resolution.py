"""Super-resolution: antialiased bicubic downsampling by an integer factor f.

The downsampler has MATLAB `imresize` semantics, as the official resizer does: Keys' cubic kernel
(a = -0.5) stretched by f for antialiasing, weights normalised per output pixel, borders mirrored
(half-sample symmetric). Along one axis it is a fixed matrix D of shape (ceil(n / f), n), so
A(x) = D_h x D_w^T per channel: two small matrix products, exact, differentiable, cheap.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from dps_jax.operators import spectral


def cubic(x):
    """Keys' cubic convolution kernel with a = -0.5."""
    ax = np.abs(x)
    return ((1.5 * ax ** 3 - 2.5 * ax ** 2 + 1.0) * (ax <= 1)
            + (-0.5 * ax ** 3 + 2.5 * ax ** 2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def resize_matrix(in_length: int, factor: int) -> np.ndarray:
    """The 1-D antialiased bicubic downsampling matrix, shape (ceil(in_length / factor), in_length), float64."""
    scale = 1.0 / factor
    out_length = int(math.ceil(in_length * scale))
    width = 4.0 / scale                                        # cubic support, stretched by f
    # Output pixel j (1-based) centred in input coordinates; the shift keeps the centres aligned
    # when out_length != in_length * scale.
    j = np.arange(1, out_length + 1) - (out_length - in_length * scale) / 2
    centre = j / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(centre - width / 2)
    taps = int(np.ceil(width) + 2)
    pos = left[:, None] + np.arange(taps)[None, :] - 1          # 0-based input positions
    w = scale * cubic(scale * (centre[:, None] - pos - 1))
    sums = w.sum(axis=1, keepdims=True)
    w = w / np.where(sums == 0, 1.0, sums)
    # Mirror the positions into [0, in_length): ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
    period = 2 * in_length
    p = np.mod(pos.astype(np.int64), period)
    p = np.where(p < in_length, p, period - 1 - p)
    mat = np.zeros((out_length, in_length), np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_length), taps), p.ravel()), w.ravel())
    return mat


def make(image_shape, scale_factor=4):
    """Data for x4 (or any integer factor) downsampling of images of shape (H, W, C)."""
    h, w, _ = image_shape
    if isinstance(scale_factor, bool) or not float(scale_factor).is_integer() or scale_factor < 1:
        raise ValueError(f"super-resolution scale_factor must be a positive integer, got {scale_factor!r}")
    f = int(scale_factor)
    if f > min(h, w):
        raise ValueError(f"super-resolution scale_factor {f} is larger than the image ({h} x {w})")
    dh, dw = resize_matrix(h, f), resize_matrix(w, f)
    return {
        "down_h": jnp.asarray(dh, jnp.float32), "down_w": jnp.asarray(dw, jnp.float32),
        # Pseudo-inverses for the exact projection onto {x : A x = y}.
        "pinv_h": jnp.asarray(np.linalg.pinv(dh), jnp.float32),
        "pinv_w": jnp.asarray(np.linalg.pinv(dw), jnp.float32),
    }


def forward(x, data):
    """(H, W, C) -> (ceil(H / f), ceil(W / f), C)."""
    return jnp.einsum("oh,hwc,pw->opc", data["down_h"], x, data["down_w"])


def project(x, y, data):
    """x + A^+ (y - A x): the closest image to x whose downsampling is exactly y."""
    r = y - forward(x, data)
    return x + jnp.einsum("ho,opc,wp->hwc", data["pinv_h"], r, data["pinv_w"])


def display(y, data):
    """Nearest-neighbour upsampling by f (the official code's A^T), cropped to the image size."""
    h, w = data["down_h"].shape[1], data["down_w"].shape[1]
    f = int(math.ceil(h / data["down_h"].shape[0]))
    return jnp.repeat(jnp.repeat(y, f, axis=0), f, axis=1)[:h, :w]


def svd(data, image_shape, cutoff: float = 0.0):
    """A = U Sigma V^T from the separable resize matrices (`spectral.separable`)."""
    return spectral.separable(np.asarray(data["down_h"]), np.asarray(data["down_w"]), cutoff)
