"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"),
version 0.1, in Flax, NHWC: the distance the paper ranks reconstructions by.

    d(x, y) = sum_l mean_{h,w} sum_c w_lc (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2

f_l are the ReLU outputs of five stages of an ImageNet classifier's convolutional trunk (AlexNet:
relu1..relu5; VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) on the images shifted and scaled per
channel; |.| is the channel-wise L2 norm (plus 1e-10); w_l >= 0 are the learned linear heads ("lin" layers,
1 x 1 convolutions without bias). Images are in [-1, 1]; one-channel images are repeated to RGB.

The weights are the torchvision trunk (alexnet-owt-7be5be79.pth, vgg16-397923af.pth) and the heads of the
`lpips` package (weights/v0.1/alex.pth, vgg.pth), imported by
`python -m checkpoints_convert.metrics lpips` into one dps_jax file.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.models.config_json import JsonConfig

FORMAT = "dps_jax.lpips"
# Per-channel shift and scale of v0.1's input (ImageNet statistics on [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

# Each trunk: a list of stages; a stage is layers ("conv", torchvision index, out, kernel, stride, pad) or
# ("pool", kernel, stride); the stage's output after its last ReLU is one LPIPS feature.
_ALEX = [[("conv", 0, 64, 11, 4, 2)],
         [("pool", 3, 2), ("conv", 3, 192, 5, 1, 2)],
         [("pool", 3, 2), ("conv", 6, 384, 3, 1, 1)],
         [("conv", 8, 256, 3, 1, 1)],
         [("conv", 10, 256, 3, 1, 1)]]


def _vgg16():
    stages, index = [], 0
    for level, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        stage = []
        if level:
            stage.append(("pool", 2, 2))
            index += 1
        for _ in range(convs):
            stage.append(("conv", index, width, 3, 1, 1))
            index += 2                            # the conv and its ReLU
        stages.append(stage)
    return stages


TRUNKS = {"alex": _ALEX, "vgg": _vgg16()}


@dataclasses.dataclass(frozen=True)
class LPIPSConfig(JsonConfig):
    KIND = "LPIPS"
    WHAT = "LPIPSConfig fields"
    net: str = "alex"                 # "alex" or "vgg"

    def __post_init__(self):
        if self.net not in TRUNKS:
            raise ValueError(f"LPIPSConfig.net must be one of {sorted(TRUNKS)}, got {self.net!r:.80}")

    @property
    def channels(self) -> Sequence[int]:
        return [[l for l in stage if l[0] == "conv"][-1][2] for stage in TRUNKS[self.net]]


class LPIPS(nn.Module):
    """LPIPS distance of image pairs (N, H, W, C) in [-1, 1] -> (N,)."""
    config: LPIPSConfig

    def features(self, x):
        """The five normalised feature maps of x (N, H, W, 3), already shifted and scaled."""
        out = []
        for stage in TRUNKS[self.config.net]:
            for layer in stage:
                if layer[0] == "pool":
                    x = nn.max_pool(x, (layer[1], layer[1]), (layer[2], layer[2]), "VALID")
                else:
                    _, index, width, k, stride, pad = layer
                    x = nn.Conv(width, (k, k), (stride, stride), [(pad, pad), (pad, pad)],
                                name=f"conv{index}")(x)
                    x = nn.relu(x)
            norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
            out.append(x / (norm + EPS))
        return out

    @nn.compact
    def __call__(self, x, y):
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs images of the same shape, got {x.shape} and {y.shape}")
        if x.shape[-1] == 1:
            x, y = jnp.repeat(x, 3, -1), jnp.repeat(y, 3, -1)
        shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
        n = x.shape[0]
        # One trunk pass for both images: the pair is stacked on the batch axis.
        feats = self.features((jnp.concatenate([x, y]) - shift) / scale)
        total = 0.0
        for l, f in enumerate(feats):
            w = self.param(f"lin{l}", nn.initializers.ones, (f.shape[-1],))
            total = total + jnp.mean(jnp.sum((f[:n] - f[n:]) ** 2 * w, axis=-1), axis=(1, 2))
        return total


def param_shapes(config: LPIPSConfig):
    """The params tree of `config` as ShapeDtypeStructs (no compute)."""
    x = jnp.zeros((1, 64, 64, 3))
    return jax.eval_shape(lambda: LPIPS(config).init(jax.random.PRNGKey(0), x, x))["params"]


def load(path: str):
    """(params, config) of a dps_jax LPIPS file, checked against its config."""
    from dps_jax.models.checkpoint import CheckpointFormatError, read_checkpoint

    params, config, _ = read_checkpoint(path, FORMAT, LPIPSConfig.from_json, param_shapes)
    for name, layer in params.items():        # LPIPS's heads weight squared feature differences: >= 0
        if name.startswith("lin") and any((np.asarray(v) < 0).any() for v in jax.tree_util.tree_leaves(layer)):
            raise CheckpointFormatError(f"{path}: LPIPS head {name} has negative weights; the heads weight squared "
                                        f"differences and are >= 0 (convert with python -m checkpoints_convert.metrics)")
    return params, config
