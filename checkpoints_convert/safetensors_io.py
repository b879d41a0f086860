"""The safetensors format, read as untrusted input: an 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the tensors' bytes.

A bounded reader of our own rather than the `safetensors` package (not among the project's dependencies, and
the format is a page long): the header may not exceed the file or 100 MB, every tensor must lie inside the
data section, hold exactly shape x itemsize bytes and overlap no other, and only the bytes of a tensor are read
for it. Nothing in the file is executed; JSON is data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Dict

import numpy as np

from checkpoints_convert.torch_reader import CheckpointError

MAX_HEADER = 100 * 1024 * 1024
# safetensors dtype -> (numpy dtype of the stored bytes, itemsize); BF16 is widened to float32 when read.
DTYPES = {"F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "I64": ("<i8", 8),
          "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1), "U8": ("u1", 1), "BOOL": ("?", 1)}
NAMES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64",
         np.dtype("<i4"): "I32", np.dtype("<i2"): "I16", np.dtype("i1"): "I8", np.dtype("u1"): "U8"}


def _header(path: str, f, size: int) -> dict:
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(size - 8, MAX_HEADER):
        raise CheckpointError(f"{path}: safetensors header of {n} bytes does not fit the file's {size} bytes "
                              f"(or the {MAX_HEADER // 2 ** 20} MB limit): not a safetensors file, or a truncated one")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: the safetensors header is not JSON ({str(e)[:80]})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header must be a JSON object, got a {type(header).__name__}")
    return header


def _entries(path: str, header: dict, data_size: int):
    """[(name, numpy dtype, shape, begin, end)] in file order, every entry checked."""
    out = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise CheckpointError(f"{path}: tensor {name[:80]!r}: an entry holds dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name[:80]!r} has dtype {str(dtype)[:20]!r}; expected one of "
                                  f"{sorted(DTYPES)}")
        if not (isinstance(shape, list) and len(shape) <= 8 and
                all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise CheckpointError(f"{path}: tensor {name[:80]!r} has shape {str(shape)[:60]}; expected up to 8 "
                                  "non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and
                all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise CheckpointError(f"{path}: tensor {name[:80]!r} has data_offsets {str(offsets)[:60]}; expected "
                                  "[begin, end]")
        begin, end = offsets
        nbytes = math.prod(shape) * DTYPES[dtype][1]
        if not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise CheckpointError(f"{path}: tensor {name[:80]!r} of shape {shape} and dtype {dtype} needs {nbytes} "
                                  f"bytes; its data_offsets {offsets} give {end - begin} bytes in a data section of "
                                  f"{data_size}")
        out.append((name, dtype, tuple(shape), begin, end))
    out.sort(key=lambda e: e[3])
    for a, b in zip(out, out[1:]):
        if b[3] < a[4]:
            raise CheckpointError(f"{path}: tensors {a[0][:60]!r} and {b[0][:60]!r} share bytes")
    return out


def load_safetensors(path: str) -> Dict[str, np.ndarray]:
    """{name: numpy array} of a safetensors file (BF16 widened to float32), each tensor read from its own bytes."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    size = os.path.getsize(path)
    out = {}
    with open(path, "rb") as f:
        header = _header(path, f, size)
        start = f.tell()
        for name, dtype, shape, begin, end in _entries(path, header, size - start):
            f.seek(start + begin)
            buf = f.read(end - begin)
            if len(buf) != end - begin:
                raise CheckpointError(f"{path}: tensor {name[:80]!r} is cut short: the file ends early")
            a = np.frombuffer(buf, DTYPES[dtype][0]).reshape(shape)
            if dtype == "BF16":
                a = (a.astype(np.uint32) << 16).view(np.float32)
            out[name] = a
    return out


def save_safetensors(path: str, tensors: Dict[str, np.ndarray]) -> None:
    """Write `tensors` (float64/32/16 and integer arrays) as a safetensors file, in sorted order (tests and
    fixtures: the files diffusers writes)."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        a = a.astype(a.dtype.newbyteorder("<"))
        blob = a.tobytes()
        header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)                 # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)
