"""Read a PyTorch state_dict (`torch.save`, zip or legacy format) into numpy arrays without torch.

A checkpoint is untrusted input, and this reader is safe by construction:
- its pickle runs on `pickle_vm`, which executes data opcodes only and resolves the few globals a
  state_dict needs (an ordered dict, the tensor-rebuilding functions, storage types; an argparse.Namespace
  of saved training arguments becomes inert data);
- every tensor view (offset, shape, strides, dtype) is checked in exact integer arithmetic against the
  bytes of its storage before anything is read; negative strides are refused; a storage is read once
  however many tensors view it, and contiguous tensors are views of it, not copies;
- what a file may cost is bounded by its size S: zip members may decompress to at most 2 S + 1 MiB in
  all, the tensors it declares may total at most 2 S + 1 MiB (zero strides and overlapping views
  included), so reading costs about 2 S of memory and time linear in S, or is refused in one line.

Every failure is a `CheckpointError` with one line naming the problem.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np

from checkpoints_convert.pickle_vm import PickleError, load as _unpickle

try:  # bfloat16 storages; ml_dtypes ships with jax.
    from ml_dtypes import bfloat16 as _bf16
except ImportError:  # pragma: no cover
    _bf16 = None

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
SLACK = 1 << 20          # the constant in the 2 S + constant bounds
MAX_NDIM = 32
MAX_DIM = 1 << 40
# Where users' training code puts the weights it saves, in the order a unique match is looked for.
WRAPPERS = ("state_dict", "model", "ema", "ema_model", "model_ema", "params", "net", "module")

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": _bf16, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not match the model."""


def _num(n: int) -> str:
    """An integer for a message; a file can hold integers too long for str() (Python caps the digits)."""
    return str(n) if abs(n) < 10 ** 30 else f"~2^{n.bit_length()}"


def _names(keys, n: int = 5) -> str:
    """The first few of `keys`, shortened, and how many there are: error lines stay short."""
    keys = list(keys)
    shown = ", ".join(repr(k[:60] + "..." if len(k) > 60 else k) if isinstance(k, str) else type(k).__name__
                      for k in keys[:n])
    return shown + (f" and {len(keys) - n} more ({len(keys)} in all)" if len(keys) > n else "")


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

    def _pickle_setstate(self, state):
        pass


def _ints(value, what: str) -> Tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_NDIM or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise PickleError(f"a tensor's {what} is not a tuple of at most {MAX_NDIM} integers")
    return value


def _rebuild_tensor(*args):
    if len(args) < 4:
        raise PickleError(f"a tensor rebuilt from {len(args)} arguments (expected at least 4)")
    storage, offset, size, stride = args[:4]
    if not isinstance(storage, _StorageRef):
        raise PickleError("a tensor that is not backed by a storage")
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise PickleError("a tensor whose storage offset is not an integer")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise PickleError(f"a tensor with {len(size)} sizes and {len(stride)} strides")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(*args):
    if not args or not isinstance(args[0], _TensorRef):
        raise PickleError("a parameter that does not wrap a tensor")
    return args[0]


def _ordered_dict(*args):
    """An empty OrderedDict (filled by SETITEMS), or, as Python 2 era files (the lpips heads) pickle it,
    one built from a list of [key, value] pairs."""
    d = _StateDict()
    if not args:
        return d
    if len(args) != 1 or not isinstance(args[0], (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) for p in args[0]):
        raise PickleError("an OrderedDict rebuilt from arguments other than one list of (name, value) pairs")
    for k, v in args[0]:
        d[k] = v
    return d


for _f in (_rebuild_tensor, _rebuild_parameter, _ordered_dict):
    _f._pickle_callable = True

class Namespace:
    """An argparse.Namespace of a training checkpoint (rosinality's `args`): its attributes, kept as data."""

    def __init__(self):
        self.state = None

    def _pickle_setstate(self, state):
        self.state = state


class _NamespaceClass:
    """What GLOBAL pushes for argparse.Namespace: NEWOBJ makes an inert `Namespace` (nothing of argparse runs)."""

    def _pickle_new(self, args):
        return Namespace()


_ALLOWED = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("argparse", "Namespace"): _NamespaceClass(),      # training scripts save their arguments beside the weights
}
_ALLOWED.update({("torch", n): _StorageType(n, d) for n, d in _STORAGE_DTYPES.items() if d is not None})


class _Pickle:
    """One checkpoint's pickle: its object, and every storage it references (each key once)."""

    def __init__(self, data: bytes, pos: int = 0):
        self.storages: Dict[str, _StorageRef] = {}
        try:
            self.obj, self.end = _unpickle(data, pos, _ALLOWED, self._storage)
        except PickleError as e:
            raise CheckpointError(str(e)) from None

    def _storage(self, pid):
        if not (len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[4], int) and not isinstance(pid[4], bool)):
            raise PickleError("a storage reference that is not ('storage', type, key, location, size)")
        ref = _StorageRef(pid[2], pid[1].dtype, pid[4])
        if ref.numel < 0:
            raise PickleError(f"storage {ref.key[:40]!r} of negative size {_num(ref.numel)}")
        old = self.storages.setdefault(ref.key, ref)
        if old != ref:
            raise PickleError(f"storage {ref.key[:40]!r} is declared twice with different types or sizes")
        return ref


def _select(obj, key: Optional[str], strip_prefix: Optional[str]) -> Dict[str, _TensorRef]:
    """The state_dict inside a checkpoint's object: unwrap a unique wrapper, strip `module.`."""
    def tensors(d):
        return isinstance(d, dict) and d and all(isinstance(v, _TensorRef) for v in d.values())

    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a state_dict (a dict of tensors), found a {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"the checkpoint has no entry {key!r}; its entries: {_names(obj)}")
        obj = obj[key]
    elif not tensors(obj):
        found = [w for w in WRAPPERS if tensors(obj.get(w))]
        if len(found) > 1:
            raise CheckpointError(f"the checkpoint holds several state_dicts ({', '.join(found)}): "
                                  f"choose one with --key {found[0]} (or --key {found[1]}, ...)")
        if found:
            obj = obj[found[0]]
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a state_dict (a dict of tensors), found a {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, _TensorRef)]
    if bad:
        nested = [k for k in bad if tensors(obj[k])]
        hint = f" (the tensors may be under --key {nested[0]})" if nested else ""
        raise CheckpointError(f"entries that are not tensors: {_names(bad)}{hint}")
    if not obj:
        raise CheckpointError("the checkpoint's state_dict is empty")
    odd = [k for k in obj if not isinstance(k, str)]
    if odd:
        raise CheckpointError(f"state_dict keys that are not strings: {_names(odd)}")
    if strip_prefix is None and all(k.startswith("module.") for k in obj):
        strip_prefix = "module."    # saved from a DataParallel / DistributedDataParallel wrapper
    if strip_prefix:
        missing = [k for k in obj if not k.startswith(strip_prefix)]
        if missing:
            raise CheckpointError(f"keys without the prefix {strip_prefix!r}: {_names(missing)}")
        obj = {k[len(strip_prefix):]: v for k, v in obj.items()}
    return obj


class _Budget:
    """What a file of S bytes may still cost, in bytes: 2 S + SLACK (of memory, or of declared tensors)."""

    def __init__(self, size: int):
        self.left = 2 * size + SLACK

    def spend(self, n: int, what: str):
        if n > self.left:
            raise CheckpointError(f"{what} would take {_num(n)} bytes, more than a file of this size can back "
                                  f"(at most 2x its size in all); refusing a crafted or corrupt checkpoint")
        self.left -= n


def _materialise(ref: _TensorRef, raw, big_endian: bool, memory: _Budget, declared: _Budget) -> np.ndarray:
    """The array of one tensor view of `raw` (its storage's bytes), after checking every index."""
    st = ref.storage
    dtype = np.dtype(st.dtype)
    item = dtype.itemsize
    if st.numel * item > len(raw):
        raise CheckpointError(f"storage {st.key[:40]!r} holds {len(raw)} bytes, its tensors declare "
                              f"{_num(st.numel * item)} (truncated file?)")
    if ref.offset < 0 or any(n < 0 for n in ref.size) or any(s < 0 for s in ref.stride):
        raise CheckpointError(f"a tensor of storage {st.key[:40]!r} has a negative offset, size or stride")
    count = math.prod(ref.size)
    declared.spend(count * item, f"a tensor of shape {tuple(_num(n) for n in ref.size)}")
    if any(n > MAX_DIM for n in ref.size):      # numpy refuses such a shape even when another size is 0
        raise CheckpointError(f"a tensor of shape {tuple(_num(n) for n in ref.size)}: a size above 2^40")
    if count == 0:
        return np.zeros(ref.size, dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= st.numel:
        raise CheckpointError(f"a tensor of shape {tuple(_num(n) for n in ref.size)} reaches element "
                              f"{_num(last)} of storage {st.key[:40]!r}, which has {_num(st.numel)}")
    flat = np.frombuffer(raw, dtype=dtype.newbyteorder(">" if big_endian else "<"), count=st.numel)
    # Every index of the view lies in [offset, last] < numel (checked above), so the view is in bounds.
    view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size,
                                           strides=tuple(s * item for s in ref.stride), writeable=False)
    contiguous, step = True, 1
    for n, s in zip(ref.size[::-1], ref.stride[::-1]):
        contiguous &= n == 1 or s == step
        step *= n
    if contiguous and not big_endian:
        return view
    memory.spend(count * item, f"a copy of a tensor of shape {tuple(ref.size)}")
    return np.array(view, dtype=dtype)      # a native-endian, one-to-one copy


def _zip_member(zf, name: str, budget: _Budget) -> bytes:
    info = zf.getinfo(name)
    if info.flag_bits & 1:
        raise CheckpointError(f"zip member {name!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"zip member {name!r} uses compression method {info.compress_type}; "
                              "torch writes uncompressed members")
    budget.spend(info.file_size, f"zip member {name!r}")
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)     # the CRC is checked when the member's end is reached
        if len(data) != info.file_size:
            raise CheckpointError(f"zip member {name!r} holds {len(data)} bytes, its header says {info.file_size}")
    return data


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
               struct.error, OverflowError, UnicodeDecodeError, ValueError)


def _read_zip(path: str, budget: _Budget, select):
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise CheckpointError(f"a zip archive without exactly one data.pkl (found {len(pkl)})")
            prefix = pkl[0][: -len("data.pkl")]
            big_endian = False
            if prefix + "byteorder" in names:
                order = _zip_member(zf, prefix + "byteorder", budget).strip()
                if order not in (b"little", b"big"):
                    raise CheckpointError(f"byteorder member says {order[:20]!r}, expected 'little' or 'big'")
                big_endian = order == b"big"
            unpickled = _Pickle(_zip_member(zf, pkl[0], budget))
            state = select(unpickled.obj)
            blobs = {}
            for ref in state.values():
                k = ref.storage.key
                if k not in blobs:
                    name = f"{prefix}data/{k}"
                    if name not in names:
                        raise CheckpointError(f"storage {k[:40]!r} is missing from the archive (truncated file?)")
                    blobs[k] = _zip_member(zf, name, budget)
    except CheckpointError:
        raise
    except _ZIP_ERRORS as e:
        raise CheckpointError(f"not a readable torch checkpoint: the zip archive is truncated or corrupt "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
    return state, blobs, big_endian


def _legacy_parts(data):
    """(the pickled object, {storage key: its bytes}, little-endian?) of a legacy-format file's bytes."""
    pos = 0
    objs = []
    storages: Dict[str, _StorageRef] = {}
    for i in range(5):      # magic, protocol, system info, the object, the storage keys
        try:
            p = _Pickle(data, pos)
        except CheckpointError:
            if i == 0:
                raise CheckpointError("not a torch checkpoint (neither a zip archive nor the legacy format)")
            raise
        objs.append(p.obj)
        pos = p.end
        storages.update(p.storages)
    magic, protocol, sys_info, obj, keys = objs
    if magic != LEGACY_MAGIC:
        raise CheckpointError("not a torch checkpoint (neither a zip archive nor the legacy format)")
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError("unsupported legacy torch protocol version")
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True) is not False
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError("corrupt legacy checkpoint: the storage key list is missing")
    view = memoryview(data)
    blobs = {}
    for k in keys:
        ref = storages.get(k)
        if ref is None:
            raise CheckpointError(f"storage {k[:40]!r} is listed but no tensor uses it")
        if k in blobs:
            raise CheckpointError(f"storage {k[:40]!r} is listed twice")
        if pos + 8 > len(data):
            raise CheckpointError(f"legacy checkpoint is truncated at storage {k[:40]!r}")
        (numel,) = struct.unpack("<q" if little else ">q", view[pos:pos + 8])
        nbytes = numel * np.dtype(ref.dtype).itemsize
        if numel < 0 or pos + 8 + nbytes > len(data):
            raise CheckpointError(f"legacy checkpoint is truncated in storage {k[:40]!r}")
        blobs[k] = view[pos + 8:pos + 8 + nbytes]      # a view of the file's bytes: read once
        pos += 8 + nbytes
    return obj, blobs, little


def _read_legacy(path: str, size: int, select):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != size:
        raise CheckpointError("the file changed while it was read")
    obj, blobs, little = _legacy_parts(data)
    state = select(obj)
    for ref in state.values():
        if ref.storage.key not in blobs:
            raise CheckpointError(f"storage {ref.storage.key[:40]!r} is missing (truncated file?)")
    return state, blobs, not little


def storage_from_legacy_bytes(data) -> Tuple[_StorageRef, memoryview, bool]:
    """(the storage, its bytes, big-endian?) of `torch.save(storage)` in the legacy format: what a pickled
    torch storage holds (`torch.storage._load_from_bytes`, in plain pickles such as EDM's networks)."""
    obj, blobs, little = _legacy_parts(data)
    if not isinstance(obj, _StorageRef) or obj.key not in blobs:
        raise CheckpointError(f"a pickled storage holds a {type(obj).__name__}, not one storage")
    return obj, blobs[obj.key], not little


def load_state_dict(path: str, key: Optional[str] = None, strip_prefix: Optional[str] = None,
                    ) -> Dict[str, np.ndarray]:
    """A torch state_dict file as {key: numpy array}, dtypes kept (float16 stays float16).

    `key` picks the state_dict inside a checkpoint that holds several (`{'model': ..., 'ema': ...}`);
    one of the usual wrappers (WRAPPERS) is unwrapped when it is the only one. `strip_prefix` removes a
    prefix from every key (`module.` is removed when every key has it). Arrays may be read-only views
    of the file's bytes.
    """
    return load_selected(path, lambda obj: _select(obj, key, strip_prefix))


def is_tensor(obj) -> bool:
    """Whether an object of an unpickled checkpoint (as `load_selected` hands it over) stands for a tensor."""
    return isinstance(obj, _TensorRef)


def tensor_shape(obj) -> Tuple[int, ...]:
    """The shape of a tensor of an unpickled checkpoint, before anything is read."""
    return tuple(obj.size)


def load_selected(path: str, select: Callable[[object], Dict[str, object]]) -> Dict[str, np.ndarray]:
    """The tensors `select` picks from a torch checkpoint: `select(obj)` gets the unpickled object (dicts, lists,
    numbers and strings as saved; tensors as opaque references, see `is_tensor`) and returns {name: tensor};
    only those tensors' storages are read, within the same bounds as `load_state_dict`."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a regular file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
        memory, declared = _Budget(size), _Budget(size)
        def checked(obj):
            state = select(obj)
            bad = [k for k, v in state.items() if not isinstance(v, _TensorRef)]
            if bad:
                raise CheckpointError(f"entries that are not tensors: {_names(bad)}")
            return state

        if head[:2] == b"PK":
            state, blobs, big = _read_zip(path, memory, checked)
        else:
            state, blobs, big = _read_legacy(path, size, checked)
        return {k: _materialise(ref, blobs[ref.storage.key], big, memory, declared) for k, ref in state.items()}
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
