"""Map a guided-diffusion UNetModel state_dict onto the params tree of dps_jax's Flax UNet.

Flax module names are the torch module paths with '.' -> '_', so the key of a Flax leaf is found
by putting the dots back: ("input_blocks_3_0_op", "kernel") <-> "input_blocks.3.0.op.weight".
Layouts: conv OIHW -> HWIO; linear (out, in) -> (in, out); the 1x1 Conv1d of attention (O, I, 1)
-> a Dense kernel (I, O); GroupNorm weight -> scale; Embedding weight -> embedding.
"""

from __future__ import annotations

import re
from typing import Dict

import jax
import numpy as np

from checkpoints_convert.mapping import convert_mapped
from checkpoints_convert.torch_reader import CheckpointError
from dps_jax.models.unet import UNetConfig, param_shapes

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def torch_key(path) -> str:
    """The torch state_dict key of a Flax params path (a tuple of names)."""
    *modules, leaf = path
    parts = [re.sub(r"(\d)_", r"\1.", re.sub(r"_(\d+)(?=_|$)", r".\1", m)) for m in modules]
    return ".".join(parts + [_LEAF[leaf]])


def _to_flax(name: str, leaf: str, w: np.ndarray) -> np.ndarray:
    if leaf != "kernel":
        return w
    if w.ndim == 4:
        return w.transpose(2, 3, 1, 0)
    if w.ndim == 3 and w.shape[-1] == 1:
        return w[..., 0].T
    if w.ndim == 2:
        return w.T
    raise CheckpointError(f"{name}: a weight of shape {w.shape} cannot be a conv or linear kernel")


def _torch_shape(leaf: str, flax_shape, torch_ndim: int):
    if leaf != "kernel":
        return tuple(flax_shape)
    if len(flax_shape) == 4:
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    i, o = flax_shape
    return (o, i, 1) if torch_ndim == 3 else (o, i)


def convert_state_dict(state_dict: Dict[str, np.ndarray], config: UNetConfig, dtype=np.float32,
                       consume: bool = False, allow_nonfinite: bool = False, drop_unexpected=()):
    """The Flax params tree for `config` from a torch state_dict (see `mapping.convert_mapped` for the
    checks, `consume` and `allow_nonfinite`)."""
    expected = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(config))[0]:
        names = tuple(p.key for p in path)
        expected[torch_key(names)] = (names, leaf.shape)
    return convert_mapped(state_dict, expected, lambda key, names, got: _torch_shape(names[-1], expected[key][1], len(got)),
                          lambda key, names, w: _to_flax(key, names[-1], w), dtype, consume, allow_nonfinite, drop_unexpected)
