"""DnCNN (Zhang, Zuo, Chen, Meng, Zhang 2017), the denoiser PnP-ADMM uses as its proximal map, and its files.

The network: a 3 x 3 convolution to `features` channels and ReLU, depth - 2 blocks of convolution, batch
norm and ReLU, a 3 x 3 convolution back to the image channels; it predicts the noise, so the output is
x - net(x). Convolutions have no bias and wrap around the borders (circular padding). Images are
single-channel in [0, 1]; `denoise` takes dps_jax's (H, W, C) images in [-1, 1] and denoises each channel
on its own.

Weight files are Flax msgpack variables {"params", "batch_stats"} with the module names below (conv_start,
ConvBNBlock_i/{Conv_0, BatchNorm_0}, conv_end): the layout of the trained DnCNNs that SCICO publishes
(`scico/data/flax/dncnn{6,17}{L,M,H}.mpk`, blind denoisers trained at noise std 0.06, 0.1, 0.2 on [0, 1]
images) and of the one dps_jax trains and ships (`dps_jax/assets/dncnn_fmnist32.msgpack`). A file is read as
data (msgpack has no code to run), its size is bounded and its tree is checked before use.

    den = dncnn.load()                         # the shipped one; dncnn.load("dncnn17M.mpk")
    x_clean = dncnn.denoise(den, x_noisy)      # (H, W, C) in [-1, 1]
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import flax.serialization
import flax.struct
import jax.numpy as jnp
import numpy as np

from dps_jax.models import msgpack_io

SHIPPED_DENOISER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                "dncnn_fmnist32.msgpack")
MAX_FILE_BYTES = 64 * 2 ** 20            # the published 17-layer files are 2.2 MB


def _conv(features: int, name=None):
    return nn.Conv(features, (3, 3), use_bias=False, padding="CIRCULAR", name=name)


class ConvBNBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = _conv(self.features)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5)(x)
        return nn.relu(x)


class DnCNN(nn.Module):
    """x (B, H, W, channels) in [0, 1] -> the denoised x."""
    depth: int = 17
    channels: int = 1
    features: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(_conv(self.features, name="conv_start")(x))
        for _ in range(self.depth - 2):
            h = ConvBNBlock(self.features)(h, train)
        return x - _conv(self.channels, name="conv_end")(h)


@flax.struct.dataclass
class Denoiser:
    """A DnCNN and its variables (a pytree: the variables are the arrays)."""
    variables: Any
    depth: int = flax.struct.field(pytree_node=False, default=17)
    features: int = flax.struct.field(pytree_node=False, default=64)

    @property
    def module(self) -> DnCNN:
        return DnCNN(depth=self.depth, channels=1, features=self.features)

    def __call__(self, x):
        """`denoise(self, x)`: what PnP-ADMM calls (any pytree with this call can stand in for it)."""
        return denoise(self, x)


def denoise(den: Denoiser, x):
    """The denoised x: (H, W, C) in [-1, 1] -> (H, W, C); channels are denoised separately, as in [0, 1]."""
    batch = jnp.moveaxis((x + 1.0) / 2.0, -1, 0)[..., None]          # (C, H, W, 1) in [0, 1]
    out = den.module.apply(den.variables, batch, train=False)
    return jnp.moveaxis(out[..., 0], 0, -1) * 2.0 - 1.0


def init_variables(key, depth: int = 17, features: int = 64, size: int = 32):
    """Fresh variables {"params", "batch_stats"} (for training)."""
    return dict(DnCNN(depth=depth, features=features).init(key, jnp.zeros((1, size, size, 1)), train=False))


def to_bytes(variables, dtype=np.float32) -> bytes:
    """The msgpack bytes of {"params", "batch_stats"} stored as `dtype` (float16 halves a shipped file)."""
    def host(node):
        return {k: host(v) for k, v in node.items()} if isinstance(node, dict) else np.asarray(node, dtype)
    return flax.serialization.msgpack_serialize({k: host(variables[k]) for k in ("params", "batch_stats")})


class DenoiserFormatError(msgpack_io.WeightFileError):
    """A file that is not a DnCNN weight file; the message says what is wrong."""


def _bad(path, why):
    return DenoiserFormatError(f"{path}: not a DnCNN weight file ({why})")


def parse(data: bytes, path: str = "<bytes>") -> Denoiser:
    """The Denoiser in msgpack `data`, every array checked against the DnCNN layout; float32 in memory."""
    try:
        tree = msgpack_io.loads(data, "")
    except msgpack_io.WeightFileError as e:   # bounded, typed, finite (msgpack_io); truncated or hostile
        raise _bad(path, str(e).lstrip(": /")) from None
    if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
        raise _bad(path, f"expected the keys ['batch_stats', 'params'], got "
                         f"{sorted(tree) if isinstance(tree, dict) else type(tree).__name__}")
    params = tree["params"]
    blocks = sorted((k for k in params if k.startswith("ConvBNBlock_")), key=lambda k: int(k.split("_")[1]))
    if not isinstance(params.get("conv_start"), dict) or not isinstance(params.get("conv_end"), dict):
        raise _bad(path, "conv_start / conv_end missing")
    try:
        start = np.asarray(params["conv_start"]["kernel"])
        features = start.shape[-1]
        want = {("params", "conv_start", "kernel"): (3, 3, 1, features),
                ("params", "conv_end", "kernel"): (3, 3, features, 1)}
        if blocks != [f"ConvBNBlock_{i}" for i in range(len(blocks))]:
            raise _bad(path, f"blocks {blocks} are not ConvBNBlock_0 .. ConvBNBlock_{len(blocks) - 1}")
        for b in blocks:
            want[("params", b, "Conv_0", "kernel")] = (3, 3, features, features)
            for leaf in ("scale", "bias"):
                want[("params", b, "BatchNorm_0", leaf)] = (features,)
            for leaf in ("mean", "var"):
                want[("batch_stats", b, "BatchNorm_0", leaf)] = (features,)
        got = {}

        def walk(node, prefix):
            for k, v in node.items():
                if isinstance(v, dict):
                    walk(v, prefix + (k,))
                else:
                    got[prefix + (k,)] = v
        walk(tree, ())
    except DenoiserFormatError:
        raise
    except Exception as e:
        raise _bad(path, f"unexpected structure: {type(e).__name__}: {e}") from None
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise _bad(path, f"missing {['/'.join(k) for k in missing][:5]}, unexpected {['/'.join(k) for k in extra][:5]}")
    for k, shape in want.items():
        v = got[k]
        if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or v.shape != shape:
            raise _bad(path, f"{'/'.join(k)} is {getattr(v, 'dtype', type(v).__name__)} "
                             f"{getattr(v, 'shape', '')}, expected float {shape}")
        if not np.isfinite(v).all():
            raise _bad(path, f"{'/'.join(k)} has NaN or Inf values")
    as_f32 = lambda node: {k: as_f32(v) if isinstance(v, dict) else jnp.asarray(v, jnp.float32) for k, v in node.items()}
    return Denoiser(variables=as_f32(tree), depth=len(blocks) + 2, features=features)


@functools.lru_cache(maxsize=8)
def load(path: str = "") -> Denoiser:
    """The DnCNN in a weight file (the shipped one by default); a DenoiserFormatError names what is wrong."""
    path = path or SHIPPED_DENOISER
    if not os.path.isfile(path):
        raise FileNotFoundError(f"denoiser file not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise _bad(path, f"{size} bytes, more than the {MAX_FILE_BYTES} a DnCNN file may have")
    with open(path, "rb") as f:
        return parse(f.read(), path)
