"""The dps_jax checkpoint format: one msgpack file holding a model's config and its params.

    save_checkpoint("ffhq256.msgpack", params, config)      # atomic: temp file, then rename
    model, params, config, extra = load_checkpoint("ffhq256.msgpack")

`checkpoints_convert` writes this format from the published PyTorch checkpoints; the shipped prior
uses it too. The KernelWizard of nonlinear deblurring (`models/kernel_wizard.py`) is stored the same way
under its own format name.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.io import atomic_writer
from dps_jax.models import msgpack_io
from dps_jax.models.msgpack_io import shorten
from dps_jax.models.unet import UNet, UNetConfig, param_shapes

FORMAT = "dps_jax.adm_unet"
VERSION = 1
# The 32 x 32 Fashion-MNIST prior that ships inside the package (README, "The shipped prior").
SHIPPED_PRIOR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                             "fmnist32.msgpack")


class CheckpointFormatError(msgpack_io.WeightFileError):
    """A dps_jax checkpoint that is missing, corrupt or does not match its config."""


def _map_header(n: int) -> bytes:
    """The msgpack header of a map of n entries."""
    if n < 16:
        return bytes([0x80 | n])
    return (b"\xde" + n.to_bytes(2, "big")) if n < 2 ** 16 else (b"\xdf" + n.to_bytes(4, "big"))


def _write_tree(f, tree, cast) -> None:
    """Write `tree` as flax.serialization.msgpack_serialize would (sorted keys), one leaf at a time, so
    writing costs one leaf's bytes of memory on top of the tree, not a second copy of all of it."""
    if isinstance(tree, dict):
        f.write(_map_header(len(tree)))
        for k in sorted(tree):
            f.write(flax.serialization.msgpack_serialize(k))
            _write_tree(f, tree[k], cast)
    else:
        f.write(flax.serialization.msgpack_serialize(cast(tree)))


def save_checkpoint(path: str, params, config, extra: dict | None = None, dtype=None, fmt: str = FORMAT) -> None:
    """Write params and config to `path` atomically (a failure or a signal leaves no partial file).

    `dtype` (e.g. np.float16) sets the storage dtype; loading always gives float32 params. The file gets
    the mode a new file gets (the umask's), not the temporary file's 0600. `config` is any model config
    with `to_json()`; `fmt` names the model kind (a UNet by default).
    """
    cast = (lambda a: np.asarray(a, dtype) if isinstance(a, (np.ndarray, jax.Array)) else a) \
        if dtype is not None else (lambda a: np.asarray(a) if isinstance(a, jax.Array) else a)
    payload = {"format": fmt, "version": VERSION, "config": config.to_json(),
               "extra": dict(extra or {}), "params": flax.core.unfreeze(params)}
    with atomic_writer(path) as f:
        _write_tree(f, payload, cast)


def _is_shape(leaf) -> bool:
    return isinstance(leaf, tuple) and all(isinstance(d, int) for d in leaf)


def _shape_of(leaf) -> tuple:
    return leaf if _is_shape(leaf) else tuple(leaf.shape)


def check_params(params, config: UNetConfig, where: str = "params", shapes_fn=param_shapes) -> None:
    """Raise, listing every problem at once, if `params` does not have the tree and shapes of `config`
    (`shapes_fn(config)`, the expected tree: ShapeDtypeStructs, or shape tuples as leaves)."""
    expected = {jax.tree_util.keystr(p): _shape_of(l) for p, l in
                jax.tree_util.tree_flatten_with_path(shapes_fn(config), is_leaf=_is_shape)[0]}
    got = {jax.tree_util.keystr(p): np.shape(l) for p, l in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))
    if missing or unexpected or wrong:        # the counts, and the first of each kind: one short line
        parts = ([f"{len(missing)} missing ({', '.join(missing[:2])})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected ({', '.join(unexpected[:2])})"] if unexpected else []) + \
                ([f"{len(wrong)} of another shape ({'; '.join(f'{k}: shape {got[k]}, expected {expected[k]}' for k in wrong[:2])})"]
                 if wrong else [])
        raise CheckpointFormatError(shorten(f"{where} do not match the model config: {'; '.join(parts)}", 400))


class Checkpoint(NamedTuple):
    """A loaded dps_jax checkpoint."""
    model: UNet                  # the Flax module (its compute dtype as asked)
    params: Any                  # float32 numpy arrays
    config: UNetConfig
    extra: dict                  # metadata: training step, variance type, source file


def file_format(path: str) -> str:
    """The model kind (`format`) a dps_jax file declares, read without loading its params (they come last:
    the file's keys are sorted); "" if the file is not a dps_jax checkpoint."""
    import msgpack

    try:
        with open(path, "rb") as f:
            unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=1 << 20)
            for _ in range(unpacker.read_map_header()):
                key = unpacker.unpack()
                if key == "format":
                    value = unpacker.unpack()
                    return value if isinstance(value, str) else ""
                if key == "params":
                    return ""
                unpacker.skip()
    except (OSError, ValueError, msgpack.exceptions.UnpackException, msgpack.exceptions.ExtraData):
        pass
    return ""


def read_checkpoint(path: str, fmt: str, config_from_json, shapes_fn):
    """(params as float32 numpy, config, extra) of the dps_jax file `path` holding a model of kind `fmt`.

    msgpack is data only (nothing in the file runs); the config is parsed by `config_from_json` and the
    params are checked against `shapes_fn(config)` before anything uses them."""
    if not os.path.isfile(path):
        raise CheckpointFormatError(shorten(f"checkpoint file not found: {path}"))
    try:
        payload = msgpack_io.read_tree(path)
    except msgpack_io.WeightFileError as e:
        raise CheckpointFormatError(shorten(f"not a readable dps_jax checkpoint: {e}")) from None
    kind = fmt.split(".")[-1]
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        got = payload.get("format") if isinstance(payload, dict) else None
        raise CheckpointFormatError(shorten(
            f"{path}: not a dps_jax {kind} checkpoint (format {str(got)[:40]!r}; convert PyTorch files with "
            "`python -m checkpoints_convert`)"))
    if payload.get("version") != VERSION:
        raise CheckpointFormatError(shorten(f"{path}: checkpoint format version {str(payload.get('version'))[:20]}, "
                                            f"expected {VERSION}"))
    unknown = sorted(set(payload) - {"format", "version", "config", "extra", "params"})
    if unknown or not isinstance(payload.get("params"), dict) or not isinstance(payload.get("config"), str):
        raise CheckpointFormatError(shorten(f"{path}: a {kind} checkpoint holds format, version, config (a JSON "
                                            f"string), extra and params (a map); got keys {sorted(payload)[:8]}"))
    try:
        config = config_from_json(payload["config"])
    except Exception as e:
        raise CheckpointFormatError(shorten(f"{path}: bad model config in checkpoint: {e}")) from None
    params = payload["params"]
    check_params(params, config, where=f"{path}: params", shapes_fn=shapes_fn)
    for key, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not (isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f"):
            raise CheckpointFormatError(shorten(f"{path}: params{jax.tree_util.keystr(key)}: a "
                                                f"{getattr(leaf, 'dtype', type(leaf).__name__)} leaf; weights are float arrays"))
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    extra = payload.get("extra", {})
    return params, config, dict(extra) if isinstance(extra, dict) else {}


def load_checkpoint(path: str, dtype=None) -> Checkpoint:
    """A dps_jax checkpoint, read once: module, params, config and metadata; `dtype` sets the compute dtype."""
    params, config, extra = read_checkpoint(path, FORMAT, UNetConfig.from_json, param_shapes)
    return Checkpoint(UNet(config, dtype or jnp.float32), params, config, extra)
