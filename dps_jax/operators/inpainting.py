"""Inpainting: A(x) = mask * x, mask 1 where a pixel is observed and 0 in the hole.

Mask generators follow the official ones, drawn from a `jax.random` key:
  box      a hole of side in [lo, hi) (each side drawn separately) at a random position at least
           `margin` pixels from the border (the paper: 128 x 128 on 256 x 256, margin 16)
  random   a fraction p in [lo, hi) of the pixels dropped, all channels alike (the paper: 0.92)
  extreme  the complement of a box: only the box is observed
  both     a box hole and randomly dropped pixels together
Masks have shape (H, W, 1) and broadcast over channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.operators import spectral

MASK_TYPES = ("box", "random", "extreme", "both")


def _range(value, what):
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    return float(lo), float(hi)


def check_mask_options(image_shape, mask_type, box_len_range, margin, drop_fraction):
    h, w, _ = image_shape
    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask_type {mask_type!r}; expected one of {MASK_TYPES}")
    if mask_type in ("box", "extreme", "both"):
        lo, hi = _range(box_len_range, "box_len_range")
        if not (1 <= lo < hi) and not (lo == hi >= 1):
            raise ValueError(f"box_len_range {box_len_range!r} must be (lo, hi) with 1 <= lo < hi")
        mt, ml = (margin, margin) if np.isscalar(margin) else margin
        if mt < 0 or ml < 0:
            raise ValueError(f"margin {margin!r} must be non-negative")
        longest = int(hi) - 1 if hi > lo else int(lo)
        if longest + 2 * mt >= h or longest + 2 * ml >= w:
            raise ValueError(
                f"a box of side up to {longest} with margin {margin} does not fit in a {h} x {w} image "
                f"(need side + 2 * margin < size)")
    if mask_type in ("random", "both"):
        lo, hi = _range(drop_fraction, "drop_fraction")
        if not (0.0 <= lo <= hi < 1.0):
            raise ValueError(f"drop_fraction {drop_fraction!r} must lie in [0, 1)")


def box_mask(key, image_shape, box_len_range=(128, 129), margin=(16, 16)):
    """A (H, W, 1) mask with a zero box of random size and position (`key`: jax PRNG key)."""
    h, w, _ = image_shape
    lo, hi = _range(box_len_range, "box_len_range")
    lo, hi = int(lo), max(int(hi), int(lo) + 1)
    mt, ml = (margin, margin) if np.isscalar(margin) else margin
    k1, k2, k3, k4 = jax.random.split(key, 4)
    bh = jax.random.randint(k1, (), lo, hi)
    bw = jax.random.randint(k2, (), lo, hi)
    top = jax.random.randint(k3, (), mt, h - mt - bh)
    left = jax.random.randint(k4, (), ml, w - ml - bw)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    hole = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    return jnp.where(hole, 0.0, 1.0)[..., None].astype(jnp.float32)


def random_mask(key, image_shape, drop_fraction=(0.92, 0.92)):
    """A (H, W, 1) mask with int(H * W * p) pixels set to 0, p ~ U[lo, hi)."""
    h, w, _ = image_shape
    lo, hi = _range(drop_fraction, "drop_fraction")
    kp, kperm = jax.random.split(key)
    p = jax.random.uniform(kp, (), minval=lo, maxval=hi) if hi > lo else jnp.asarray(lo)
    n_drop = jnp.floor(h * w * p).astype(jnp.int32)
    rank = jnp.argsort(jax.random.permutation(kperm, h * w))   # a random rank for every pixel
    return jnp.where(rank < n_drop, 0.0, 1.0).reshape(h, w, 1).astype(jnp.float32)


def generate_mask(key, image_shape, mask_type="box", box_len_range=(128, 129), margin=(16, 16),
                  drop_fraction=(0.92, 0.92)):
    """A mask of `mask_type` for images of shape (H, W, C); see the module docstring."""
    check_mask_options(image_shape, mask_type, box_len_range, margin, drop_fraction)
    kb, kr = jax.random.split(key)
    if mask_type == "box":
        return box_mask(kb, image_shape, box_len_range, margin)
    if mask_type == "extreme":
        return 1.0 - box_mask(kb, image_shape, box_len_range, margin)
    if mask_type == "random":
        return random_mask(kr, image_shape, drop_fraction)
    return box_mask(kb, image_shape, box_len_range, margin) * random_mask(kr, image_shape, drop_fraction)


def make(image_shape, mask=None, key=None, **mask_options):
    """Data holding a given mask (H, W, 1 or C), or one drawn with `key` and `mask_options`."""
    h, w, c = image_shape
    if mask is None:
        if key is None:
            raise ValueError("inpainting needs a mask, or a key to draw one")
        mask = generate_mask(key, image_shape, **mask_options)
    mask = jnp.asarray(mask, jnp.float32)
    if mask.ndim == 2:
        mask = mask[..., None]
    if mask.shape[:2] != (h, w) or mask.shape[2] not in (1, c):
        raise ValueError(f"inpainting mask has shape {mask.shape}; expected ({h}, {w}, 1) or ({h}, {w}, {c})")
    return {"mask": mask}


def forward(x, data):
    """(H, W, C) -> (H, W, C): the observed pixels, zeros in the hole."""
    return x * data["mask"]


def project(x, y, data):
    """Keep x where the mask is 0 (unobserved); take y where it is 1 (observed)."""
    m = data["mask"]
    return x * (1.0 - m) + y * m


def display(y, data):
    return y * data["mask"]


def svd(data, image_shape, cutoff: float = 0.0):
    """A = diag(mask): U = V = I, the mask as the singular values (`spectral.diagonal`)."""
    return spectral.diagonal(data["mask"], image_shape)
