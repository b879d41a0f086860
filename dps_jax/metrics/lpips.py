"""LPIPS distances of image pairs, batched and jit-compiled (the network: `models/lpips_net.py`).

    metric = lpips.load("lpips_alex.msgpack")       # made by `python -m checkpoints_convert.metrics lpips`
    d = metric(x, y)                                # (N, H, W, C) in [-1, 1] each -> (N,) numpy
"""

from __future__ import annotations

import os

import jax
import numpy as np

from dps_jax.metrics.batched import map_batches
from dps_jax.models import lpips_net

MISSING = ("LPIPS weights not found: {path} (import them with `python -m checkpoints_convert.metrics lpips "
           "alexnet-owt-7be5be79.pth alex.pth {path}`)")


class LPIPS:
    """LPIPS with loaded weights; calls take any number of pairs, run `batch` at a time (one compiled
    shape per image size: the last batch is padded)."""

    def __init__(self, params, config: lpips_net.LPIPSConfig, batch: int = 32):
        self.params, self.config, self.batch = jax.device_put(params), config, batch
        module = lpips_net.LPIPS(config)
        self._apply = jax.jit(lambda p, x, y: module.apply({"params": p}, x, y))

    def __call__(self, x, y) -> np.ndarray:
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        if x.ndim == 3:
            x, y = x[None], y[None]
        if x.shape != y.shape or x.ndim != 4:
            raise ValueError(f"LPIPS needs two image batches (N, H, W, C) of one shape, got {x.shape} and {y.shape}")
        return map_batches(lambda a, b: self._apply(self.params, a, b), x, y, batch=self.batch)


def load(path: str, batch: int = 32) -> LPIPS:
    """The LPIPS metric of a converted weight file; a missing file is one clear error."""
    if not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(MISSING.format(path=path))
    params, config = lpips_net.load(os.path.expanduser(path))
    return LPIPS(params, config, batch)
