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


def _prefix_hint(unexpected, expected) -> str:
    """' (... pass --strip-prefix P)' when removing a leading prefix of the first unexpected key makes it, and
    every other unexpected key with that prefix, an expected key."""
    parts = unexpected[0].split(".")
    for n in range(1, len(parts)):
        prefix = ".".join(parts[:n]) + "."
        if all(k[len(prefix):] in expected for k in unexpected if k.startswith(prefix)):
            return f" (the checkpoint's keys carry the prefix {prefix!r}: pass --strip-prefix {prefix})"
    return ""


def _listed(what: str, keys) -> str:
    return f"{len(keys)} {what}: " + ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")


def convert_state_dict(state_dict: Dict[str, np.ndarray], config: UNetConfig, dtype=np.float32,
                       consume: bool = False, allow_nonfinite: bool = False):
    """The Flax params tree for `config` from a torch state_dict.

    Every mismatch is found before any weight is converted and reported in one short message (the first
    few keys of each kind and their count). `consume=True` removes each entry from `state_dict` as it is
    converted, so the file's bytes are freed while the params are made (peak ~ one copy of the weights).
    Non-finite weights are refused (count and first key) unless `allow_nonfinite`; a weight too large for
    float16 storage is refused by name.
    """
    dtype = np.dtype(dtype)
    flat = jax.tree_util.tree_flatten_with_path(param_shapes(config))[0]
    expected = {}
    for path, leaf in flat:
        names = tuple(p.key for p in path)
        expected[torch_key(names)] = (names, leaf.shape)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = []
    for key in sorted(set(expected) & set(state_dict)):
        names, shape = expected[key]
        got = tuple(np.shape(state_dict[key]))
        want = _torch_shape(names[-1], shape, len(got))
        if got != want:
            wrong.append(f"{key} is {got}, the model expects {want}")
    if missing or unexpected or wrong:
        parts = [_listed("missing keys", missing) if missing else "",
                 _listed("unexpected keys", unexpected) + _prefix_hint(unexpected, expected) if unexpected else "",
                 _listed("shapes differ", wrong) if wrong else ""]
        raise CheckpointError("the checkpoint does not match the model config: " + "; ".join(p for p in parts if p))
    params, nonfinite = {}, []
    limit = np.finfo(dtype).max if np.issubdtype(dtype, np.floating) else None
    for key in sorted(expected):
        names, _ = expected[key]
        w = state_dict.pop(key) if consume else state_dict[key]
        w = np.asarray(_to_flax(key, names[-1], np.asarray(w)), np.float32)
        bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
        if bad:
            nonfinite.append((key, bad))
        elif limit is not None and w.size and np.abs(w).max() > limit:
            raise CheckpointError(f"{key} holds values up to {np.abs(w).max():.4g}, beyond {dtype.name}'s "
                                  f"{limit:.4g}: convert with --dtype float32")
        node = params
        for n in names[:-1]:
            node = node.setdefault(n, {})
        node[names[-1]] = np.ascontiguousarray(w, dtype=dtype)
    if nonfinite and not allow_nonfinite:
        raise CheckpointError(f"{sum(n for _, n in nonfinite)} non-finite values (NaN or inf) in "
                              f"{len(nonfinite)} weights, first {nonfinite[0][0]}; pass --allow-nonfinite "
                              "to convert them anyway")
    return params
