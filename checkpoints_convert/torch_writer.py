"""Write torch-format checkpoints by hand, without torch: valid ones and crafted hostile ones.

The pickle is assembled from opcodes, so a test can state exactly what a file declares (a stride, an
offset, a storage shared by many tensors, a memo index) whatever torch itself would write.
"""

from __future__ import annotations

import struct
import zipfile
from typing import Dict, Optional, Sequence

import numpy as np

PROTO, STOP = b"\x80\x02", b"."


def s(text: str) -> bytes:
    """BINUNICODE."""
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def i(n: int) -> bytes:
    """The shortest integer opcode for n."""
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -2 ** 31 <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return (b"\x8a" + bytes([len(b)]) if len(b) < 256 else b"\x8b" + struct.pack("<i", len(b))) + b


def tup(items: Sequence[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tensor(key: str, numel: int, size, stride=None, offset: int = 0, storage: str = "FloatStorage") -> bytes:
    """The opcodes of one `_rebuild_tensor_v2` of storage `key` (numel elements)."""
    if stride is None:
        stride = [int(np.prod(size[k + 1:])) for k in range(len(size))]
    pid = tup([s("storage"), glob("torch", storage), s(key), s("cpu"), i(numel)]) + b"Q"
    args = tup([pid, i(offset), tup([i(n) for n in size]), tup([i(n) for n in stride]), b"\x89",
                glob("collections", "OrderedDict") + b")R"])
    return glob("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def ordered_dict(items: Dict[str, bytes]) -> bytes:
    return glob("collections", "OrderedDict") + b")R(" + b"".join(s(k) + v for k, v in items.items()) + b"u"


def plain_dict(items: Dict[str, bytes]) -> bytes:
    return b"}(" + b"".join(s(k) + v for k, v in items.items()) + b"u"


def state_dict_ops(arrays: Dict[str, np.ndarray]) -> bytes:
    """An OrderedDict of float32 tensors, one storage each (keys '0', '1', ...)."""
    return ordered_dict({name: tensor(str(k), a.size, a.shape) for k, (name, a) in enumerate(arrays.items())})


def write(path, obj_ops: bytes, storages: Dict[str, bytes], prefix: str = "archive", byteorder: bytes = b"little",
          compression: int = zipfile.ZIP_STORED, pickle: Optional[bytes] = None) -> str:
    """A zip checkpoint as torch lays it out: prefix/data.pkl, prefix/byteorder, prefix/data/<key>."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr(f"{prefix}/data.pkl", pickle if pickle is not None else PROTO + obj_ops + STOP)
        if byteorder is not None:
            zf.writestr(f"{prefix}/byteorder", byteorder)
        for key, raw in storages.items():
            zf.writestr(f"{prefix}/data/{key}", raw)
    return str(path)


def write_arrays(path, arrays: Dict[str, np.ndarray], wrap=None, **kw) -> str:
    """A valid checkpoint of float32 `arrays`; `wrap(ops) -> ops` puts the state_dict inside something."""
    ops = state_dict_ops(arrays)
    storages = {str(k): np.ascontiguousarray(a, "<f4").tobytes() for k, a in enumerate(arrays.values())}
    return write(path, wrap(ops) if wrap else ops, storages, **kw)
