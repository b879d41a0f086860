"""Fourier phase retrieval: A(x) = |F(pad(x))|, F the centred orthonormal 2-D DFT per channel.

Oversampling by zero padding: `pad = oversample / 8 * H` pixels on each side (the paper: oversample
2.0 on 256 x 256 gives 64, so the amplitude is 384 x 384). A is nonlinear.

`unit_range=True` measures the image mapped to [0, 1], |F(pad((x + 1) / 2))| (DAPS's operator): a
non-negative image cannot be confused with its negative, one of the ambiguities of the [-1, 1] convention
the paper's code uses (the default).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def fft2_centered(x):
    """Centred orthonormal 2-D DFT over the two leading axes of (H, W, C): fftshift(F(ifftshift(x)))."""
    axes = (0, 1)
    return jnp.fft.fftshift(jnp.fft.fft2(jnp.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)


def ifft2_centered(k):
    axes = (0, 1)
    return jnp.fft.fftshift(jnp.fft.ifft2(jnp.fft.ifftshift(k, axes=axes), axes=axes, norm="ortho"), axes=axes)


def make(image_shape, oversample=2.0, pad=None, unit_range=False):
    """Data (static padding) for images of shape (H, W, C); `pad` overrides oversample / 8 * H."""
    if not isinstance(unit_range, (bool, np.bool_)):
        raise ValueError(f"phase retrieval unit_range must be True or False, got {unit_range!r}")
    h, w, _ = image_shape
    if pad is None:
        if not float(oversample) >= 0:
            raise ValueError(f"phase retrieval oversample must be >= 0, got {oversample!r}")
        pad_h, pad_w = int(float(oversample) / 8.0 * h), int(float(oversample) / 8.0 * w)
    else:
        if isinstance(pad, bool) or not float(pad).is_integer() or pad < 0:
            raise ValueError(f"phase retrieval pad must be a non-negative integer, got {pad!r}")
        pad_h = pad_w = int(pad)
    # Python ints: `Operator` keeps them static (shapes under jit depend on them).
    return {"pad_h": pad_h, "pad_w": pad_w, "unit_range": bool(unit_range)}


def _pads(data):
    return data["pad_h"], data["pad_w"]


def _measured(x, data):
    """The image as the operator measures it: x, or (x + 1) / 2 with unit_range."""
    return (x + 1) / 2 if data.get("unit_range") else x


def forward(x, data):
    """(H, W, C) -> (H + 2 pad, W + 2 pad, C): the Fourier amplitude of the zero-padded image."""
    ph, pw = _pads(data)
    padded = jnp.pad(_measured(x, data), ((ph, ph), (pw, pw), (0, 0)))
    return jnp.abs(fft2_centered(padded.astype(jnp.complex64)))


def amplitude_projection(g, y):
    """Re F^-1[y exp(i angle(F g))] for g on the padded grid (H + 2 pad, W + 2 pad, C): the measured
    amplitude with g's phase, back in real space (the Fourier step of ER / HIO / OSS)."""
    k = fft2_centered(g.astype(jnp.complex64))
    return jnp.real(ifft2_centered(y * jnp.exp(1j * jnp.angle(k))))


def project(x, y, data):
    """Replace the Fourier amplitude of pad(x) by y, keep its phase, return the real part inside
    the support (one step of error reduction; Fienup 1982)."""
    ph, pw = _pads(data)
    h, w = x.shape[0], x.shape[1]
    p = amplitude_projection(jnp.pad(_measured(x, data), ((ph, ph), (pw, pw), (0, 0))), y)[ph:ph + h, pw:pw + w]
    return 2 * p - 1 if data.get("unit_range") else p


def display(y, data):
    """For display: the log amplitude, scaled to [-1, 1]."""
    v = jnp.log1p(y)
    return 2.0 * (v - v.min()) / jnp.maximum(v.max() - v.min(), 1e-12) - 1.0
