"""Image quality metrics on images in [-1, 1] (mapped to [0, 1]): PSNR and SSIM.

SSIM is Wang et al. 2004 with an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, valid
region only, averaged over channels. Inputs are one image (H, W, C); numpy in, float out.
"""

from __future__ import annotations

import numpy as np


def _to01(x):
    return (np.asarray(x, np.float64) + 1.0) / 2.0


def psnr(x, ref) -> float:
    """Peak signal-to-noise ratio in dB of x against ref (both in [-1, 1]; peak 1 on [0, 1])."""
    mse = np.mean((np.clip(_to01(x), 0, 1) - np.clip(_to01(ref), 0, 1)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def gaussian_window(size=11, sigma=1.5):
    """The normalised 1-D Gaussian (size,) of SSIM's window (also BKS-generic's SSIM loss)."""
    g = np.exp(-0.5 * ((np.arange(size) - size // 2) / sigma) ** 2)
    return g / g.sum()


def _filter_valid(img, g):
    """Separable 'valid' filtering of a 2-D array."""
    k = len(g)
    rows = np.stack([img[i:i + img.shape[0] - k + 1] for i in range(k)], 0)
    img = np.tensordot(g, rows, axes=1)
    cols = np.stack([img[:, j:j + img.shape[1] - k + 1] for j in range(k)], 0)
    return np.tensordot(g, cols, axes=1)


def ssim(x, ref, window: int = 11) -> float:
    """Structural similarity of x against ref (one image each, (H, W, C) in [-1, 1])."""
    x, ref = np.clip(_to01(x), 0, 1), np.clip(_to01(ref), 0, 1)
    if x.shape != ref.shape:
        raise ValueError(f"ssim needs images of the same shape, got {x.shape} and {ref.shape}")
    window = min(window, x.shape[0], x.shape[1])
    window -= 1 - window % 2                     # odd
    g = gaussian_window(window, 1.5 * window / 11)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for c in range(x.shape[-1]):
        a, b = x[..., c], ref[..., c]
        mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
        saa = _filter_valid(a * a, g) - mu_a ** 2
        sbb = _filter_valid(b * b, g) - mu_b ** 2
        sab = _filter_valid(a * b, g) - mu_a * mu_b
        m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
        vals.append(m.mean())
    return float(np.mean(vals))
