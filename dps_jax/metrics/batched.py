"""Running a jitted network over many images a batch at a time (what LPIPS and the FID features share)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def map_batches(fn, *arrays, batch: int) -> np.ndarray:
    """fn(*chunks) over `batch` rows of the arrays at a time, concatenated (numpy). The last chunk is padded
    to `batch` rows when there are several, so a jitted fn compiles once per image size."""
    n, out = len(arrays[0]), []
    for i in range(0, n, batch):
        chunks = [a[i:i + batch] for a in arrays]
        k = len(chunks[0])
        if k < batch and n > batch:
            chunks = [np.pad(c, ((0, batch - k),) + ((0, 0),) * (c.ndim - 1)) for c in chunks]
        out.append(np.asarray(fn(*(jnp.asarray(c) for c in chunks)))[:k])
    return np.concatenate(out)
