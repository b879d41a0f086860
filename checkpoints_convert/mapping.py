"""Map a torch state_dict onto a Flax params tree, given each expected key's place and layout: the checks
and the conversion every model's converter shares (the ADM UNet in adm.py, the KernelWizard in
kernel_wizard.py)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from checkpoints_convert.torch_reader import CheckpointError


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


def convert_mapped(state_dict: Dict[str, np.ndarray], expected: Dict[str, Tuple[Tuple[str, ...], tuple]],
                   torch_shape: Callable, to_flax: Callable, dtype=np.float32, consume: bool = False,
                   allow_nonfinite: bool = False, drop_unexpected: Sequence[str] = ()):
    """The Flax params tree from `state_dict`.

    `expected` maps each torch key to (the Flax path of its leaf, anything); `torch_shape(key, path, got)`
    is the shape the model wants for that key (`got` the file's shape, for layouts that depend on it) and
    `to_flax(key, path, w)` converts the weight's layout. Every mismatch is found before any weight is
    converted and reported in one short message (the first few keys of each kind and their count).
    `consume=True` removes each entry from `state_dict` as it is converted, so the file's bytes are freed
    while the params are made (peak ~ one copy of the weights). Non-finite weights are refused (count and
    first key) unless `allow_nonfinite`; a weight too large for `dtype` is refused by name.
    `drop_unexpected`: glob patterns (fnmatch, case-sensitive) of keys the model does not take that are left
    out instead of refused (deepinv's DiffUNet carries its schedule as two buffers); a pattern that matches
    no unexpected key is refused, so a typo cannot pass unnoticed.
    """
    dtype = np.dtype(dtype)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    unused = [p for p in drop_unexpected if not any(fnmatchcase(k, p) for k in unexpected)]
    if unused:
        raise CheckpointError(f"--drop-unexpected {unused[0]!r} matches none of the checkpoint's "
                              f"{len(unexpected)} keys the model does not take" +
                              (": " + ", ".join(unexpected[:4]) if unexpected else ""))
    unexpected = [k for k in unexpected if not any(fnmatchcase(k, p) for p in drop_unexpected)]
    wrong = []
    for key in sorted(set(expected) & set(state_dict)):
        got = tuple(np.shape(state_dict[key]))
        want = tuple(torch_shape(key, expected[key][0], got))
        if got != want:
            wrong.append(f"{key} is {got}, the model expects {want}")
    if missing or unexpected or wrong:
        parts = [_listed("missing keys", missing) if missing else "",
                 _listed("unexpected keys", unexpected) + (_prefix_hint(unexpected, expected) or
                                                           " (to leave them out: --drop-unexpected PATTERN)")
                 if unexpected else "",
                 _listed("shapes differ", wrong) if wrong else ""]
        raise CheckpointError("the checkpoint does not match the model config: " + "; ".join(p for p in parts if p))
    params, nonfinite = {}, []
    limit = np.finfo(dtype).max if np.issubdtype(dtype, np.floating) else None
    for key in sorted(expected):
        names = expected[key][0]
        w = state_dict.pop(key) if consume else state_dict[key]
        w = np.asarray(to_flax(key, names, np.asarray(w)), np.float32)
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


def random_state_dict(shapes: Dict[str, tuple], seed: int) -> Dict[str, np.ndarray]:
    """Deterministic random weights in a torch layout, to check a port against its reference code with
    weights nobody has to download (the fixture scripts load these into the reference; the tests make
    the same ones from the converter's key table).

    For each key in sorted order, standard normals z of its shape from numpy's default_rng(seed):
    batch-norm running variances exp(0.3 z), running means 0.1 z, other 1-D weights (norm scales)
    1 + 0.1 z, biases 0.1 z, kernels z * sqrt(2 / fan_in) (He, so deep ReLU stacks stay in range).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        z = rng.standard_normal(shape)
        if key.endswith("running_var"):
            w = np.exp(0.3 * z)
        elif key.endswith(("running_mean", "bias")):
            w = 0.1 * z
        elif len(shape) <= 1:
            w = 1.0 + 0.1 * z
        else:
            w = z * np.sqrt(2.0 / np.prod(shape[1:]))
        out[key] = w.astype(np.float32)
    return out
