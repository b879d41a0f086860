"""Read NVlabs/edm's network pickles (`edm-ffhq-64x64-uncond-vp.pkl`, ...) as data, without torch and without
running anything they carry.

An EDM pickle is made by EDM's `torch_utils.persistence`: every network object is pickled as a call to
`_reconstruct_persistent_obj(meta)`, where meta holds the *source code* of the module that defines its class
(`module_src`), the class name and the object's __dict__. Python's unpickler, with EDM on the path, would
compile and run that source. Here the pickle runs on `pickle_vm` (data opcodes only) with a table of the few
names such a file uses, each a stand-in that records data: the persistent objects become `Persistent(class_name,
state)` (module_src is dropped, never compiled), torch.nn containers become plain records, parameters and
buffers become tensor references whose bytes (each storage pickled as a legacy `torch.save` file, read by
`torch_reader`) are checked against their views before anything is read. What a file may cost is bounded by its
size as for every other checkpoint. Any other global is refused by name.

    net = load_network("edm-ffhq-64x64-uncond-vp.pkl")       # key "ema" by default
    net.class_name, net.init_kwargs                          # 'VPPrecond', {'img_resolution': 64, ...}
    net.inner.class_name, net.state_dict                     # 'SongUNet', {'model.enc.64x64_conv.weight': ...}
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, NamedTuple, Optional

import numpy as np

from checkpoints_convert import torch_reader as tr
from checkpoints_convert.pickle_vm import PickleError, load as _unpickle
from checkpoints_convert.torch_reader import CheckpointError

MAX_FILE = 1 << 34          # 16 GiB: larger than any published EDM network pickle


class Persistent:
    """A persistent object of the pickle: its class name and __dict__; the source it carried is dropped."""

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state


class Record:
    """A torch.nn container (ModuleDict, ModuleList, Sequential) or other plain object: its class and state."""

    def __init__(self, name: str):
        self.class_name = name
        self.state: Any = None

    def _pickle_setstate(self, state):
        self.state = state


class _RecordClass:
    """What GLOBAL pushes for an allowed plain class: NEWOBJ makes a Record of it."""

    def __init__(self, name: str):
        self.name = name

    def _pickle_new(self, args):
        return Record(self.name)


class _NumpyDType:
    """numpy.dtype(name, align, copy): only the plain numeric dtypes (the state BUILD sets is ignored: the
    byte order of a scalar's bytes is that of the machine that wrote it, little-endian for every EDM file)."""

    def __init__(self, name):
        if name not in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1"):
            raise PickleError(f"a numpy dtype {str(name)[:20]!r} (a network pickle holds plain numbers)")
        self.dtype = np.dtype("<" + name if name != "b1" else "?")

    def _pickle_setstate(self, state):
        pass


def _dtype(*args):
    if not args or not isinstance(args[0], str):
        raise PickleError("a numpy dtype rebuilt from arguments other than its name")
    return _NumpyDType(args[0])


def _scalar(*args):
    if len(args) != 2 or not isinstance(args[0], _NumpyDType) or not isinstance(args[1], bytes) \
            or len(args[1]) != args[0].dtype.itemsize:
        raise PickleError("a numpy scalar rebuilt from arguments other than (dtype, its bytes)")
    return np.frombuffer(args[1], args[0].dtype)[0].item()


def _reconstruct(*args):
    if len(args) != 1 or not isinstance(args[0], dict):
        raise PickleError("a persistent object rebuilt from arguments other than one dict")
    meta = args[0]
    if meta.get("type") != "class" or not isinstance(meta.get("class_name"), str) \
            or not isinstance(meta.get("state"), dict):
        raise PickleError("a persistent object whose record is not {type: 'class', class_name, state}")
    return Persistent(meta["class_name"], meta["state"])


for _f in (_dtype, _scalar, _reconstruct):
    _f._pickle_callable = True

# torch.nn classes a network pickle may hold as plain objects (EDM's own layers are persistent objects).
PLAIN_CLASSES = [("torch.nn.modules.container", n) for n in ("ModuleDict", "ModuleList", "Sequential")] + \
                [("torch.nn.modules.activation", n) for n in ("SiLU", "ReLU", "Identity")] + \
                [("dnnlib.util", "EasyDict")]


class _Reader:
    """One pickle's objects, and every storage it carried (read from its own legacy file's bytes)."""

    def __init__(self, size: int):
        self.blobs: Dict[str, tuple] = {}
        self.memory, self.declared = tr._Budget(size), tr._Budget(size)
        load_storage = lambda *args: self._storage(*args)
        load_storage._pickle_callable = True
        allowed = dict(tr._ALLOWED)
        allowed.update({("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct,
                        ("numpy", "dtype"): _dtype, ("numpy.core.multiarray", "scalar"): _scalar,
                        ("numpy._core.multiarray", "scalar"): _scalar,
                        ("torch.storage", "_load_from_bytes"): load_storage})
        allowed.update({k: _RecordClass(f"{k[0]}.{k[1]}") for k in PLAIN_CLASSES})
        self.allowed = allowed

    def _storage(self, *args):
        if len(args) != 1 or not isinstance(args[0], bytes):
            raise PickleError("a storage rebuilt from arguments other than its bytes")
        ref, blob, big = tr.storage_from_legacy_bytes(args[0])
        key = f"s{len(self.blobs)}"          # each pickled storage is its own: keys are ours
        ref = ref._replace(key=key)
        self.blobs[key] = (blob, big)
        return ref

    def tensor(self, ref) -> np.ndarray:
        blob, big = self.blobs[ref.storage.key]
        return tr._materialise(ref, blob, big, self.memory, self.declared)



class Network(NamedTuple):
    """A network of an EDM pickle: the outer (preconditioning) object and the model inside it."""
    class_name: str                    # e.g. 'EDMPrecond', 'VPPrecond'
    init_kwargs: dict                  # its constructor's keyword arguments, as recorded
    inner: Optional["Network"]         # its `model` (e.g. SongUNet), or None
    state_dict: Dict[str, np.ndarray]  # every parameter and buffer, by torch key (model.enc....)


def _module_tree(obj, reader: _Reader, prefix: str, out: Dict[str, np.ndarray], depth: int = 0):
    """Collect the parameters and buffers of a module and its submodules, by torch key."""
    if depth > 64:
        raise CheckpointError("network modules nested more than 64 deep")
    state = obj.state if isinstance(obj, (Persistent, Record)) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"module {prefix[:-1] or 'network'!r} has no state (a {type(obj).__name__})")
    for group in ("_parameters", "_buffers"):
        for name, ref in (state.get(group) or {}).items():
            if ref is None:
                continue
            if not isinstance(ref, tr._TensorRef):
                raise CheckpointError(f"{prefix}{name}: a {group[1:-1]} that is not a tensor")
            out[prefix + str(name)] = reader.tensor(ref)
    for name, sub in (state.get("_modules") or {}).items():
        if sub is not None:
            _module_tree(sub, reader, f"{prefix}{name}.", out, depth + 1)


def _network(obj, reader: _Reader, with_weights: bool) -> Network:
    if not isinstance(obj, Persistent):
        raise CheckpointError(f"expected an EDM network object, found a {type(obj).__name__}")
    kwargs = obj.state.get("_init_kwargs")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"the {obj.class_name} object records no constructor arguments (_init_kwargs)")
    model = (obj.state.get("_modules") or {}).get("model")
    inner = _network(model, reader, False) if isinstance(model, Persistent) else None
    weights: Dict[str, np.ndarray] = {}
    if with_weights:
        _module_tree(obj, reader, "", weights)
    return Network(obj.class_name, dict(kwargs), inner, weights)


def load_network(path: str, key: str = "ema") -> Network:
    """The network stored under `key` of an EDM pickle, read as data (see the module docstring)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_FILE:
        raise CheckpointError(f"{path}: {size} bytes is more than an EDM network pickle can be")
    with open(path, "rb") as f:
        data = f.read()
    reader = _Reader(size)
    try:
        obj, end = _unpickle(data, 0, reader.allowed, _no_persistent_ids)
        if not isinstance(obj, dict) or key not in obj:
            found = sorted(k for k in obj if isinstance(k, str)) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"the pickle holds no entry {key!r} (it holds {str(found)[:120]})")
        return _network(obj[key], reader, True)
    except PickleError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _no_persistent_ids(pid):
    raise PickleError("a persistent id (a network pickle references no external storage)")


def parameter_count(net: Network) -> int:
    return sum(math.prod(a.shape) for a in net.state_dict.values())
