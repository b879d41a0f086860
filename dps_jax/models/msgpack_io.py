"""Reading a msgpack weight file (or training state) as untrusted input: bounded, typed, finite.

Every msgpack file dps_jax reads goes through `read_tree`: the prior, the KernelWizard, DnCNN, LPIPS, FID's
Inception, the classifier, and the trainers' resume states. msgpack is data only (nothing in a file runs),
and the reader also bounds what a file can cost and what it may hold:
- no declared length can exceed the file: msgpack's buffer is the file's size, so a tiny file that
  declares gigabytes is refused, not allocated;
- nesting deeper than MAX_DEPTH, more than MAX_ENTRIES map and list entries in all, keys that are not
  strings and leaves that are not numbers, strings, lists or arrays (complex numbers, timestamps, other
  extension types) are refused; a caller that expects weights checks that they are float arrays;
- an array is read only from the bytes that back it (its shape times its dtype's size must be exactly
  what the file holds), from a short list of numeric dtypes; non-finite values are refused unless the
  caller allows them.
Each refusal is a WeightFileError of one short line that names the file, the key path and what was expected.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

MAX_DEPTH = 16
MAX_ENTRIES = 1_000_000
MAX_STR = 1 << 20                      # a config or a note, not data
DTYPES = {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint32", "bool"}
ERROR_CHARS = 280


class WeightFileError(ValueError):
    """A weight or state file that is missing, corrupt, hostile or not what was expected."""


def shorten(text: str, limit: int = ERROR_CHARS) -> str:
    """One line of at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _err(where: str, what: str) -> WeightFileError:
    return WeightFileError(shorten(f"{where}: {what}"))


def _ndarray(data: bytes, where: str):
    """flax's array record (shape, dtype name, raw bytes), checked before numpy sees it."""
    import msgpack

    try:
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True, max_bin_len=len(data), max_str_len=64,
                                                    max_array_len=32, max_map_len=0, max_ext_len=0)
    except Exception as e:
        raise _err(where, f"a broken array record ({type(e).__name__})") from None
    name = dtype_name.decode("ascii", "replace") if isinstance(dtype_name, bytes) else str(dtype_name)
    if name not in DTYPES:
        raise _err(where, f"an array of dtype {ascii(name[:20])}; expected one of {sorted(DTYPES)}")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and 0 <= d < 2 ** 40 for d in shape):
        raise _err(where, f"an array record with shape {str(shape)[:40]}")
    if name == "bfloat16":
        import ml_dtypes
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(name)
    if not isinstance(buffer, bytes) or len(buffer) != math.prod(shape) * dtype.itemsize:
        raise _err(where, f"an array of shape {tuple(shape)} {name} backed by {len(buffer) if isinstance(buffer, bytes) else 0} "
                          f"bytes, not {math.prod(shape) * dtype.itemsize}")
    return np.frombuffer(buffer, dtype).reshape(shape)


class _Leaf:
    """An extension record, kept raw until the walk knows its key path."""
    __slots__ = ("code", "data")

    def __init__(self, code, data):
        self.code, self.data = code, data


def _walk(node, where: str, depth: int, count: list, allow_nonfinite: bool):
    if depth > MAX_DEPTH:
        raise _err(where, f"nesting deeper than {MAX_DEPTH}")
    if isinstance(node, dict):
        count[0] += len(node)
        if count[0] > MAX_ENTRIES:
            raise _err(where, f"more than {MAX_ENTRIES} entries")
        out = {}
        for k, v in node.items():
            if not isinstance(k, str):
                raise _err(where, f"a key of type {type(k).__name__} ({str(k)[:20]}); keys are strings")
            out[k] = _walk(v, f"{where}/{k[:40]}", depth + 1, count, allow_nonfinite)
        return out
    if isinstance(node, _Leaf):
        if node.code not in (1, 3):               # flax's ndarray and numpy-scalar records
            raise _err(where, f"msgpack extension type {node.code} (complex numbers and objects are not weights)")
        a = _ndarray(node.data, where)
        if a.dtype.kind == "f" and not allow_nonfinite:
            bad = int(a.size - np.isfinite(a.astype(np.float32)).sum())
            if bad:
                raise _err(where, f"{bad} NaN/Inf values")
        return a[()] if node.code == 3 else a
    if isinstance(node, list):                    # a note's list (a checkpoint's sources); never weights
        count[0] += len(node)
        if count[0] > MAX_ENTRIES:
            raise _err(where, f"more than {MAX_ENTRIES} entries")
        return [_walk(v, f"{where}[{i}]", depth + 1, count, allow_nonfinite) for i, v in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float, str)):
        if isinstance(node, float) and not allow_nonfinite and not math.isfinite(node):
            raise _err(where, f"a non-finite number {node}")
        return node
    raise _err(where, f"a value of type {type(node).__name__}; expected maps, numbers, strings and arrays")


def loads(data: bytes, where: str, allow_nonfinite: bool = False) -> Any:
    """The tree in msgpack bytes `data`, checked as the module docstring says."""
    import msgpack

    if not data:
        raise _err(where, "an empty file")
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1024),
                                    max_str_len=MAX_STR, max_bin_len=len(data), max_ext_len=len(data),
                                    max_array_len=len(data), max_map_len=len(data),
                                    ext_hook=_Leaf, timestamp=0)
        unpacker.feed(data)
        tree = unpacker.unpack()
    except msgpack.exceptions.OutOfData:
        raise _err(where, "a truncated file (it ends inside its data)") from None
    except Exception as e:                        # msgpack's refusals: bad bytes, limits, deep nesting
        raise _err(where, f"not readable msgpack ({type(e).__name__}: {e})") from None
    try:
        unpacker.unpack()
        raise _err(where, "data after the end of the tree")
    except msgpack.exceptions.OutOfData:
        pass
    except WeightFileError:
        raise
    except Exception:
        raise _err(where, "data after the end of the tree") from None
    return _walk(tree, where, 0, [0], allow_nonfinite)


def read_tree(path: str, allow_nonfinite: bool = False) -> Any:
    """The tree of the msgpack file `path` (a regular file), checked as the module docstring says; the
    file is read once, its size bounding everything it declares."""
    if not os.path.isfile(path):
        what = "a folder, not a file" if os.path.isdir(path) else "not found"
        raise WeightFileError(shorten(f"{path}: {what}"))
    with open(path, "rb") as f:
        data = f.read()
    return loads(data, path, allow_nonfinite)


def check_tree(tree, expected, where: str) -> None:
    """`tree` has exactly the keys of `expected` (nested dicts of arrays or ShapeDtypeStructs), each leaf an
    array of the expected shape; the first difference is a WeightFileError naming its key path."""
    if isinstance(expected, dict):
        if not isinstance(tree, dict):
            raise _err(where, f"a {type(tree).__name__} where a map was expected")
        missing, extra = sorted(set(expected) - set(tree)), sorted(set(tree) - set(expected))
        if missing or extra:
            raise _err(where, f"{len(missing)} keys missing {missing[:3]} and {len(extra)} unexpected {extra[:3]}")
        for k in expected:
            check_tree(tree[k], expected[k], f"{where}/{k}")
        return
    if not isinstance(tree, np.ndarray) and not np.isscalar(tree):
        raise _err(where, f"a {type(tree).__name__} where an array of shape {tuple(expected.shape)} was expected")
    if tuple(np.shape(tree)) != tuple(expected.shape):
        raise _err(where, f"shape {tuple(np.shape(tree))}, expected {tuple(expected.shape)}")
