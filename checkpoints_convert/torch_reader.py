"""Read a PyTorch state_dict (`torch.save`, zip or legacy format) into numpy arrays without torch.

A checkpoint is untrusted input. The pickle inside is read by an unpickler that resolves only the
few globals a state_dict needs (an ordered dict, the tensor-rebuilding functions, storage types);
any other global is refused with an error naming it, so nothing in the file is ever executed.
Tensors are placeholders while unpickling and are materialised from the raw storage bytes after.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from typing import Dict, NamedTuple, Tuple

import numpy as np

try:  # bfloat16 storages; ml_dtypes ships with jax.
    from ml_dtypes import bfloat16 as _bf16
except ImportError:  # pragma: no cover
    _bf16 = None

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": _bf16, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not match the model."""


class _StorageType(NamedTuple):
    name: str
    dtype: object


class _StorageRef(NamedTuple):
    key: str
    dtype: object
    numel: int


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    size: Tuple[int, ...]
    stride: Tuple[int, ...]


class _StateDict(dict):
    """Stands in for collections.OrderedDict; drops the `_metadata` attribute torch attaches."""

    def __setstate__(self, state):
        pass


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _StorageRef):
        raise CheckpointError("malformed checkpoint: a tensor is not backed by a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES and _STORAGE_DTYPES[name] is not None:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise CheckpointError(
            f"refusing to load global '{module}.{name}': a state_dict needs only tensors and dicts, "
            "and this file asks to run other code")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unsupported storage reference in checkpoint: {pid!r:.80}")
        return _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4]))


def _unpickle(data: bytes):
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as e:  # malformed pickle streams raise all sorts of errors
        raise CheckpointError(f"corrupt checkpoint pickle: {type(e).__name__}: {e}") from None


def _materialise(obj, blobs: Dict[str, bytes], big_endian: bool = False):
    """Replace _TensorRefs in a (nested) dict by numpy arrays read from the storage blobs."""
    if isinstance(obj, dict):
        return {k: _materialise(v, blobs, big_endian) for k, v in obj.items()}
    if not isinstance(obj, _TensorRef):
        return obj
    st = obj.storage
    if st.key not in blobs:
        raise CheckpointError(f"checkpoint storage {st.key!r} is missing (truncated file?)")
    dtype = np.dtype(st.dtype).newbyteorder(">" if big_endian else "<")
    raw = blobs[st.key]
    if len(raw) < st.numel * dtype.itemsize:
        raise CheckpointError(
            f"checkpoint storage {st.key!r} holds {len(raw)} bytes, expected {st.numel * dtype.itemsize} "
            "(truncated file?)")
    flat = np.frombuffer(raw, dtype=dtype, count=st.numel)
    need = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) + 1 if obj.size else obj.offset + 1
    if all(obj.size) and need > st.numel:
        raise CheckpointError(f"a tensor of size {obj.size} reaches past the end of storage {st.key!r}")
    item = dtype.itemsize
    arr = np.lib.stride_tricks.as_strided(flat[obj.offset:], shape=obj.size,
                                          strides=tuple(s * item for s in obj.stride))
    return np.array(arr, dtype=np.dtype(st.dtype))   # a native-endian copy


def _read_zip(path: str):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint: the zip archive is truncated or corrupt ({e})") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: zip archive without exactly one data.pkl (found {len(pkl)})")
        prefix = pkl[0][: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in names:
            big_endian = zf.read(prefix + "byteorder").strip() == b"big"
        try:
            obj = _unpickle(zf.read(pkl[0]))
            keys = _storage_keys(obj)
            blobs = {}
            for k in keys:
                name = f"{prefix}data/{k}"
                if name not in names:
                    raise CheckpointError(f"{path}: storage {k!r} is missing from the archive (truncated file?)")
                blobs[k] = zf.read(name)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: corrupt zip member: {e}") from None
    return obj, blobs, big_endian


def _storage_keys(obj):
    out = set()
    if isinstance(obj, dict):
        for v in obj.values():
            out |= _storage_keys(v)
    elif isinstance(obj, _TensorRef):
        out.add(obj.storage.key)
    return out


def _read_legacy(path: str):
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)

    def next_pickle():
        try:
            return _RestrictedUnpickler(stream).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{path}: corrupt legacy torch checkpoint: {type(e).__name__}: {e}") from None

    if next_pickle() != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a zip archive nor the legacy format)")
    if next_pickle() != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: unsupported legacy torch protocol version")
    sys_info = next_pickle()
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    obj = next_pickle()
    keys = next_pickle()
    if not isinstance(keys, list):
        raise CheckpointError(f"{path}: corrupt legacy checkpoint: storage key list missing")
    refs = {}
    _collect_refs(obj, refs)
    blobs = {}
    for k in keys:
        header = stream.read(8)
        if len(header) < 8:
            raise CheckpointError(f"{path}: legacy checkpoint is truncated at storage {k!r}")
        (numel,) = struct.unpack("<q" if little else ">q", header)
        ref = refs.get(str(k))
        if ref is None:
            raise CheckpointError(f"{path}: storage {k!r} is listed but no tensor uses it")
        nbytes = numel * np.dtype(ref.dtype).itemsize
        raw = stream.read(nbytes)
        if len(raw) < nbytes:
            raise CheckpointError(f"{path}: legacy checkpoint is truncated in storage {k!r}")
        blobs[str(k)] = raw
    return obj, blobs, not little


def _collect_refs(obj, refs):
    if isinstance(obj, dict):
        for v in obj.values():
            _collect_refs(v, refs)
    elif isinstance(obj, _TensorRef):
        refs[obj.storage.key] = obj.storage


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
    """A torch state_dict file as {key: numpy array}, dtypes kept (float16 stays float16)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if zipfile.is_zipfile(path):
        obj, blobs, big = _read_zip(path)
    else:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK":
            _read_zip(path)     # raises the truncated/corrupt zip error
        obj, blobs, big = _read_legacy(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    out = _materialise(obj, blobs, big)
    bad = [k for k, v in out.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:10]}")
    return out
