"""What the trainers share (`train.py`, the diffusion prior; `train_denoiser.py`, DnCNN): the training
images of a config, atomic file writes and resuming a saved training state."""

from __future__ import annotations

import os
import tempfile

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import data as data_lib


def training_images(cfg) -> np.ndarray:
    """(N, H, W, C) in [-1, 1]: Fashion-MNIST's training split or an image folder, as the config says."""
    if cfg.data.name == "fashion_mnist":
        return data_lib.fashion_mnist("train", cfg.data.root, cfg.data.image_size)
    return data_lib.image_folder(cfg.data.root, cfg.data.image_size, cfg.data.channels)


def atomic_write(path: str, data: bytes):
    """Write `data` to `path` through a temporary file and a rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)          # the mode a plain open() gives, not mkstemp's 0600
    os.replace(tmp, path)


def restore_state(path: str, template):
    """The training state saved at `path`, checked leaf by leaf against `template` (ShapeDtypeStructs)."""
    with open(path, "rb") as f:
        restored = flax.serialization.from_bytes(template, f.read())
    want, got = jax.tree_util.tree_leaves(template), jax.tree_util.tree_leaves(restored)
    if len(want) != len(got) or any(tuple(w.shape) != np.shape(g) for w, g in zip(want, got)):
        raise ValueError(f"training state {path} does not match the configured model and optimiser")
    return jax.tree_util.tree_map(lambda w, g: jnp.asarray(g, w.dtype), template, restored)
