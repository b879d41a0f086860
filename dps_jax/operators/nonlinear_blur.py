"""Nonlinear deblurring, the DPS paper's fifth task: A(x) = the KernelWizard's blur of x with a blur latent z.

A is a neural network (`dps_jax.models.kernel_wizard`): x in [-1, 1] is mapped to [0, 1], blurred by the
model's `adapt_kernel(x, z)`, mapped back and clipped to [-1, 1]. z (h, w, kernel_dim) is drawn once per
measurement, z = kernel_scale N(0, I) (the paper: 1.2), from the operator's key, and carried in the
operator's arrays with the model's weights, so A is one fixed function for the measurement, every step and
every posterior sample. (The official code draws a new z inside every call of A, so its measurement and
each guidance step use different blurs.)

The default model is the small one dps_jax ships for the 32 x 32 prior (trained by `dps_jax.train.kernel`);
`checkpoint=` takes another, such as the published GOPRO_wVAE.pth after `python -m checkpoints_convert
GOPRO_wVAE.pth kernel.msgpack --model gopro_wvae`.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

from dps_jax.models import kernel_wizard


@functools.lru_cache(maxsize=2)
def _load(path: str, stamp):
    del stamp                      # part of the cache key only: a rewritten file is read again
    return kernel_wizard.load(path)


@functools.lru_cache(maxsize=8)
def _config(text: str) -> kernel_wizard.KernelWizardConfig:
    return kernel_wizard.KernelWizardConfig.from_json(text)


def make(image_shape, key=None, checkpoint: str = "", kernel_scale: float = 1.2, z=None):
    """Data for images (H, W, C): the model's weights and config and z, drawn from `key` unless given."""
    path = os.path.abspath(os.path.expanduser(checkpoint)) if checkpoint else kernel_wizard.SHIPPED_KERNEL_MODEL
    stat = os.stat(path) if os.path.isfile(path) else None
    params, config = _load(path, (stat.st_mtime_ns, stat.st_size) if stat else None)
    try:
        shape = config.latent_shape(image_shape)
    except ValueError as e:
        hint = ("; the shipped kernel model is for the 32 x 32 prior: set operator.checkpoint to a converted "
                "KernelWizard (python -m checkpoints_convert GOPRO_wVAE.pth kernel.msgpack --model gopro_wvae)"
                if not checkpoint else f" ({path})")
        raise ValueError(f"nonlinear blur: {e}{hint}") from None
    if z is None:
        if not (isinstance(kernel_scale, (int, float)) and not isinstance(kernel_scale, bool) and kernel_scale >= 0):
            raise ValueError(f"nonlinear blur kernel_scale must be a number >= 0, got {kernel_scale!r}")
        if key is None:
            raise ValueError("nonlinear blur draws its blur latent z: give a key (or z=)")
        z = float(kernel_scale) * np.asarray(jax.random.normal(key, shape), np.float32)
    z = np.asarray(z, np.float32)
    if z.shape != shape:
        raise ValueError(f"nonlinear blur z must have shape {shape} for {tuple(image_shape)} images, got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError(f"nonlinear blur z holds {int(np.size(z) - np.isfinite(z).sum())} non-finite values")
    return {"params": params, "z": z, "config": config.to_json()}


def blur_model(data):
    """(params, KernelWizardConfig) of the operator's blur network (what a blind method such as BKS uses)."""
    return data["params"], _config(data["config"])


def forward(x, data):
    """(H, W, C) -> (H, W, C): the blurred image, in [-1, 1]."""
    return kernel_wizard.blur(data["params"], _config(data["config"]), x, data["z"])


def correct(x, y, data):
    """x + y - A(x): the official code's "projection" for a nonlinear operator (MCG's data consistency)."""
    return x + y - forward(x, data)


def display(y, data):
    return y
