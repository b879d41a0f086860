"""Deblurring: A(x) = k * x, a per-channel cross-correlation after reflection padding (as the official
code's ReflectionPad2d + grouped Conv2d), with a Gaussian kernel or a random camera-shake kernel.

Kernels are (k, k) float32 arrays with k odd, non-negative, summing to 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.operators import spectral


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


# The motion kernels of the paper come from the `motionblur` package (github LeviBorodenko/motionblur), size
# 61, intensity 0.5. Its model, as its documentation describes it: on a window drawn at twice the size, a
# camera path of random total length made of many short straight steps whose directions stay within a
# random maximum angle and change sign with a small random probability, centred on its mean, turned by a
# random angle, drawn as a line, blurred, and downsampled. What follows draws the same distribution
# (benchmarks against kernels the package drew are in tests/test_operators.py).
_SMALL = 0.1        # keeps the step scale and the angle distribution non-degenerate at intensity 1 / 0


def motion_kernel(key, kernel_size: int = 61, intensity: float = 0.5) -> np.ndarray:
    """A random camera-shake kernel as the DPS paper drew them, (k, k) float32, non-negative, summing to 1.

    With I = intensity in [0, 1] and d the diagonal of a 2k x 2k canvas:
      path length   L = 0.75 d (U(0, 1) + U(0, I^2))
      step lengths  s ~ (1.1 - I) d Beta(1, 30), drawn until they add up to L (a step longer than L is
                    redrawn);
      directions    a_0 ~ U(-m, m) with m ~ U(0, I pi); then |a_j| ~ Triangular(0, I m, m + 0.1) with the
                    sign of a_{j-1}, flipped with probability p ~ Beta(2, 20);
      the points    cumsum(s_j e^{i a_j}) minus their mean, rotated by U(0, pi), at the canvas centre;
    drawn as a polyline of width max(1, floor(d / 150)) in 8 bits, Gaussian-blurred with radius floor(d / 100),
    resized to k x k (Lanczos) and normalised. `key` (a JAX key) seeds the draw; the kernel is made on the
    host, once per measurement.
    """
    from PIL import Image, ImageDraw, ImageFilter

    intensity = float(intensity)
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"motion blur intensity must lie in [0, 1], got {intensity!r}")
    k = int(kernel_size)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel().tolist())
    big = 2 * k
    diag = math.hypot(big, big)
    length = 0.75 * diag * (rng.uniform() + rng.uniform(0.0, intensity ** 2))
    scale = (1.0 - intensity + _SMALL) * diag
    steps, total, draws = [], 0.0, 0
    while total < length and draws < 1_000_000:     # a tiny L rejects most draws: bound the work
        s = scale * rng.beta(1.0, 30.0, size=256)
        draws += s.size
        for v in s[s < length]:
            steps.append(v)
            total += v
            if total >= length:
                break
    steps = np.asarray(steps or [0.0])
    max_angle = rng.uniform(0.0, intensity * math.pi)
    flip = rng.beta(2.0, 20.0)
    angles = np.empty(len(steps))
    angles[0] = rng.uniform(-max_angle, max_angle)
    for j in range(1, len(steps)):
        mag = rng.triangular(0.0, intensity * max_angle, max_angle + _SMALL)
        sign = np.sign(angles[j - 1])          # 0 only at intensity 0, where every angle is 0
        angles[j] = mag * (-sign if rng.uniform() < flip else sign)
    path = np.cumsum(steps * np.exp(1j * angles))
    path = (path - path.mean()) * np.exp(1j * rng.uniform(0.0, math.pi)) + (big + 1j * big) / 2
    canvas = Image.new("L", (big, big))
    # At least 1 pixel wide: below size 54 the package's width floor(d / 150) is 0 and it draws nothing.
    ImageDraw.Draw(canvas).line([(float(z.real), float(z.imag)) for z in path], fill=255,
                                width=max(1, int(diag / 150)))
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=int(diag * 0.01))).resize((k, k), Image.LANCZOS)
    kern = np.asarray(canvas, np.float32)
    if kern.sum() == 0:          # a path that left the canvas entirely: a point blur (no blur)
        kern = np.zeros((k, k), np.float32)
        kern[k // 2, k // 2] = 1.0
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


def gaussian_svd(data, image_shape, cutoff: float = 0.0):
    """A = U Sigma V^T of the Gaussian blur: its kernel is rank one, g_h g_w^T, so A acts on each channel as
    L X R^T with the 1-D reflection-padded correlation matrices of g_h and g_w (`spectral.separable`)."""
    h, w, _ = image_shape
    kernel = np.asarray(data["kernel"], np.float64)
    u, s, vt = np.linalg.svd(kernel)
    if s[1:].max(initial=0.0) > 1e-6 * s[0]:
        raise ValueError("gaussian_blur kernel is not separable (rank one); no efficient SVD")
    g_h, g_w = np.sqrt(s[0]) * u[:, 0], np.sqrt(s[0]) * vt[0]
    return spectral.separable(spectral.reflect_correlation_matrix(g_h, h),
                              spectral.reflect_correlation_matrix(g_w, w), cutoff)
