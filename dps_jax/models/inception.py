"""The InceptionV3 of FID (Heusel et al. 2017) as `pytorch-fid` runs it, in Flax, NHWC: the network whose
2048-d pool features the FID and KID of the paper are computed on.

It is Szegedy et al.'s InceptionV3 with the TensorFlow FID graph's quirks: the average pools inside the
mixed blocks do not count padding, and the last block pools by max instead of average. Images in [-1, 1]
(one channel is repeated to RGB) are resized to 299 x 299 bilinearly (half-pixel centres, no antialiasing,
as torch's `interpolate(..., align_corners=False)`); `pytorch-fid` resizes [0, 1] images and then maps
them to [-1, 1], which is the same since bilinear weights sum to one.

Every convolution is followed by batch normalisation (eps 1e-3, running statistics) and a ReLU. Module
names are those of torchvision's Inception3, so the weights (`pt_inception-2015-12-05-6726825d.pth`) map
by name: `python -m checkpoints_convert.metrics fid`.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dps_jax.models.config_json import JsonConfig

FORMAT = "dps_jax.fid_inception"
SIZE = 299
FEATURES = 2048


@dataclasses.dataclass(frozen=True)
class InceptionConfig(JsonConfig):
    KIND = "FID Inception"
    WHAT = "InceptionConfig fields"
    resize: int = SIZE               # the input size the images are resized to (0: not resized)

    def __post_init__(self):
        if not isinstance(self.resize, int) or isinstance(self.resize, bool) or not (
                self.resize == 0 or 75 <= self.resize <= 1024):
            raise ValueError(f"InceptionConfig.resize must be 0 or an integer in [75, 1024], got {self.resize!r:.80}")


class BatchNorm(nn.Module):
    """Inference batch normalisation with the running statistics as params (these weights are never trained)."""
    eps: float = 1e-3

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class BasicConv(nn.Module):
    """Convolution (no bias), batch norm, ReLU."""
    features: int
    kernel: Tuple[int, int] = (1, 1)
    stride: int = 1
    pad: Tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, (self.stride, self.stride),
                    [(self.pad[0], self.pad[0]), (self.pad[1], self.pad[1])], use_bias=False, name="conv")(x)
        return nn.relu(BatchNorm(name="bn")(x))


def _avg3(x):
    return nn.avg_pool(x, (3, 3), (1, 1), [(1, 1), (1, 1)], count_include_pad=False)


def _max3(x, stride=2, pad=0):
    return nn.max_pool(x, (3, 3), (stride, stride), [(pad, pad), (pad, pad)])


class MixedA(nn.Module):          # 35 x 35: 1x1, 5x5, double 3x3, pool
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(64, (5, 5), pad=(2, 2), name="branch5x5_2")(BasicConv(48, name="branch5x5_1")(x))
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), pad=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), pad=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg3(x))
        return jnp.concatenate([b1, b5, b3, bp], -1)


class MixedB(nn.Module):          # 35 -> 17
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), pad=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max3(x)], -1)


class MixedC(nn.Module):          # 17 x 17: factorised 7x7
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c, name="branch7x7_1")(x)
        b7 = BasicConv(c, (1, 7), pad=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), pad=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c, name="branch7x7dbl_1")(x)
        for i, (k, p, w) in enumerate((((7, 1), (3, 0), c), ((1, 7), (0, 3), c), ((7, 1), (3, 0), c),
                                       ((1, 7), (0, 3), 192))):
            bd = BasicConv(w, k, pad=p, name=f"branch7x7dbl_{i + 2}")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg3(x))
        return jnp.concatenate([b1, b7, bd, bp], -1)


class MixedD(nn.Module):          # 17 -> 8
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(BasicConv(192, name="branch3x3_1")(x))
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), pad=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), pad=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max3(x)], -1)


class MixedE(nn.Module):          # 8 x 8: expanded 3x3 branches; the last block pools by max
    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), pad=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), pad=(1, 0), name="branch3x3_2b")(b3)], -1)
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), pad=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), pad=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), pad=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
        pooled = _max3(x, stride=1, pad=1) if self.max_pool else _avg3(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], -1)


class FIDInception(nn.Module):
    """Images (N, H, W, C) in [-1, 1] -> pool features (N, 2048)."""
    config: InceptionConfig = InceptionConfig()

    @nn.compact
    def __call__(self, x):
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, -1)
        if x.shape[-1] != 3:
            raise ValueError(f"the FID Inception takes 1- or 3-channel images, got {x.shape[-1]} channels")
        if self.config.resize:
            x = jax.image.resize(x, (x.shape[0], self.config.resize, self.config.resize, 3), "bilinear",
                                 antialias=False)
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = _max3(BasicConv(64, (3, 3), pad=(1, 1), name="Conv2d_2b_3x3")(x))
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = _max3(BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x))
        for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = MixedA(pool, name=name)(x)
        x = MixedB(name="Mixed_6a")(x)
        for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = MixedC(c, name=name)(x)
        x = MixedD(name="Mixed_7a")(x)
        x = MixedE(name="Mixed_7b")(x)
        x = MixedE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def param_shapes(config: InceptionConfig = InceptionConfig()):
    """The params tree as ShapeDtypeStructs (no compute); shapes do not depend on the input size."""
    x = jnp.zeros((1, 75, 75, 3))
    return jax.eval_shape(lambda: FIDInception(InceptionConfig(resize=0)).init(jax.random.PRNGKey(0), x))["params"]


def load(path: str):
    """(params, config) of a dps_jax FID Inception file, checked against its config."""
    from dps_jax.models.checkpoint import read_checkpoint

    params, config, _ = read_checkpoint(path, FORMAT, InceptionConfig.from_json, param_shapes)
    return params, config
