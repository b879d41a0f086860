"""The convolutional trunk of torchvision's VGG19 up to relu5_1, NHWC: the features of the perceptual loss
BKS-generic fits its blur with (Johnson et al. 2016; VinAIResearch/blur-kernel-space-exploring
`models/losses/perceptual_loss.py`).

    feats = features(params, x)       # x (N, H, W, 3), as the caller scales it -> [relu1_1, ..., relu5_1]

Weights: torchvision's ImageNet `vgg19-dcbb9e9d.pth`, imported by
`python -m checkpoints_convert.metrics vgg19 vgg19-dcbb9e9d.pth vgg19.msgpack` (not shipped: 80 MB for the
layers used). Parameters are {"conv<torchvision index>": {"kernel": HWIO, "bias"}}.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dps_jax.models.config_json import JsonConfig

FORMAT = "dps_jax.vgg19"
# (torchvision index of each convolution, its width); a 2 x 2 max pool before each block but the first.
BLOCKS = (((0, 64), (2, 64)), ((5, 128), (7, 128)), ((10, 256), (12, 256), (14, 256), (16, 256)),
          ((19, 512), (21, 512), (23, 512), (25, 512)), ((28, 512),))
FEATURES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")     # the first ReLU of each block


@dataclasses.dataclass(frozen=True)
class VGG19Config(JsonConfig):
    KIND = "VGG19"
    WHAT = "VGG19Config fields"
    input_channels: int = 3
    width_divisor: int = 1            # > 1: a narrowed trunk for fixtures (torchvision's widths // divisor)

    def __post_init__(self):
        for name in ("input_channels", "width_divisor"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 64:
                raise ValueError(f"{self.KIND}.{name} must be an integer in [1, 64], got {v!r:.40}")


def param_shapes(config: VGG19Config = VGG19Config()):
    shapes, cin = {}, config.input_channels
    for block in BLOCKS:
        for index, width in block:
            width = max(width // config.width_divisor, 1)
            shapes[f"conv{index}"] = {"kernel": jax.ShapeDtypeStruct((3, 3, cin, width), jnp.float32),
                                      "bias": jax.ShapeDtypeStruct((width,), jnp.float32)}
            cin = width
    return shapes


def features(params, x):
    """The five feature maps relu1_1 .. relu5_1 of x (N, H, W, 3) (H, W multiples of 16)."""
    out = []
    for b, block in enumerate(BLOCKS):
        if b:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        for k, (index, _) in enumerate(block):
            p = params[f"conv{index}"]
            x = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), [(1, 1), (1, 1)],
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
            x = jax.nn.relu(x)
            if k == 0:
                out.append(x)
    return out


def load(path: str):
    """(params, config) of a dps_jax VGG19 file, checked against its config."""
    from dps_jax.models.checkpoint import read_checkpoint

    params, config, _ = read_checkpoint(path, FORMAT, VGG19Config.from_json, param_shapes)
    return params, config
