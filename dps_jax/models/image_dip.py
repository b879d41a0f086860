"""The image DIP of BKS-generic (Tran et al. 2021, VinAIResearch/blur-kernel-space-exploring `models/dips.py`,
`ImageDIP`): Ulyanov et al.'s "skip" encoder-decoder, which maps a fixed noise input to the sharp image. Pure
JAX over the torch state_dict's keys, NHWC.

    x = forward(params, config, noise)          # noise (N, H, W, input_channels) -> x (N, H, W, out) in (0, 1)

Level i (of `levels`) halves the size: a stride-2 3 x 3 convolution, batch norm, LeakyReLU(0.2), a non-local
block (embedded dot product, sub-sampled by 2 x 2 max pooling) at levels >= 2, a 3 x 3 convolution, batch norm,
LeakyReLU, the next level, and a bilinear x2 upsampling; beside it a 1 x 1 skip branch of `skip` channels. The
two are concatenated, batch-normed, then a 3 x 3 and a 1 x 1 convolution (each batch norm, LeakyReLU) give the
level's output; a last 1 x 1 convolution and a sigmoid give the image. The reference never switches the network
to evaluation mode, so every batch norm normalises by the statistics of the batch it sees (biased variance, eps
1e-5), as here. Its padding is zeros: the option file says `reflect`, but the skip builder only reflects for
`reflection`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import jax
import jax.numpy as jnp

from dps_jax.models import kernel_dip
from dps_jax.models.config_json import JsonConfig

BN_EPS = 1e-5
SLOPE = 0.2
NONLOCAL_FROM = 2            # the reference adds a non-local block at levels i > 1


@dataclasses.dataclass(frozen=True)
class ImageDIPConfig(JsonConfig):
    """The reference's ImageDIP: 5 levels of 128 channels, skips of 16, 8-channel noise in, RGB out."""
    KIND = "ImageDIP"
    WHAT = "ImageDIPConfig fields"
    input_channels: int = 8
    output_channels: int = 3
    channels: int = 128
    skip: int = 16
    levels: int = 5

    def __post_init__(self):
        for name in ("input_channels", "output_channels", "channels", "skip", "levels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
                raise ValueError(f"{self.KIND}.{name} must be a positive integer, got {v!r:.40}")

    def check_size(self, height: int, width: int) -> None:
        """The deepest level's non-local block pools 2 x 2 and its batch norms need more than one value: sizes
        must be multiples of 2^(levels + 1) (the reference's 256 with 5 levels; 32 takes at most 4)."""
        unit = 2 ** (self.levels + (1 if self.levels > NONLOCAL_FROM else 0))
        if height % unit or width % unit:
            raise ValueError(f"the image DIP with {self.levels} levels needs sizes that are multiples of {unit}, "
                             f"got {height} x {width}; lower its levels")


def level_prefixes(config: ImageDIPConfig):
    """The torch key prefix of each level's Sequential: the next level sits in the deeper branch (`1.1`) at
    index 7, or 8 after a non-local block."""
    out, prefix = [], ""
    for i in range(config.levels):
        out.append(prefix)
        prefix = prefix + "1.1." + ("8." if i >= NONLOCAL_FROM else "7.")
    return out


def _deeper_indices(i: int):
    """(conv, bn) indices of the deeper branch's second convolution, and the non-local block's (or None)."""
    return (5, 6, 4) if i >= NONLOCAL_FROM else (4, 5, None)


def param_shapes(config: ImageDIPConfig) -> Dict[str, tuple]:
    """{torch key: shape} of the learnable tensors (batch norms' running statistics are never read)."""
    c, s = config.channels, config.skip
    shapes = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.0.weight"], shapes[f"{name}.0.bias"] = (cout, cin, k, k), (cout,)

    def bn(name, n):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n,), (n,)

    cin = config.input_channels
    for i, p in enumerate(level_prefixes(config)):
        conv(f"{p}1.0.1", cin, s, 1)
        bn(f"{p}1.0.2", s)
        conv(f"{p}1.1.1", cin, c, 3)
        bn(f"{p}1.1.2", c)
        conv_i, bn_i, nl = _deeper_indices(i)
        if nl is not None:
            q, half = f"{p}1.1.{nl}", c // 2
            for branch in ("g.0", "theta", "phi.0"):
                shapes[f"{q}.{branch}.weight"], shapes[f"{q}.{branch}.bias"] = (half, c, 1, 1), (half,)
            shapes[f"{q}.W.0.weight"], shapes[f"{q}.W.0.bias"] = (c, half, 1, 1), (c,)
            bn(f"{q}.W.1", c)
        conv(f"{p}1.1.{conv_i}", c, c, 3)
        bn(f"{p}1.1.{bn_i}", c)
        bn(f"{p}2", s + c)
        conv(f"{p}3", s + c, c, 3)
        bn(f"{p}4", c)
        conv(f"{p}6", c, c, 1)
        bn(f"{p}7", c)
        cin = c
    conv("9", c, config.output_channels, 1)
    return shapes


def _conv(params, name, x, stride=1):
    """Zero-padded to keep the size (or halve it at stride 2); by taps, as the kernel DIP's (see there)."""
    w = params[name + ".weight"]
    return kernel_dip.conv_by_taps(x, w, params[name + ".bias"], stride, (w.shape[2] - 1) // 2)


def _bn(params, name, x):
    """Batch norm in training mode: the batch's own statistics over (N, H, W)."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean((x - mean) ** 2, axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * params[name + ".weight"] + params[name + ".bias"]


def _act(x):
    return jax.nn.leaky_relu(x, SLOPE)


def _pool2(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _nonlocal(params, q, x):
    """x + BN(W (softmax-free attention)): theta(x) against the 2 x 2 pooled phi(x), averaged over the pooled
    positions, weighting the pooled g(x)."""
    n, h, w, c = x.shape
    theta = _conv(params, f"{q}.theta", x).reshape(n, h * w, -1)
    phi = _pool2(_conv(params, f"{q}.phi.0", x)).reshape(n, -1, theta.shape[-1])
    g = _pool2(_conv(params, f"{q}.g.0", x)).reshape(n, -1, theta.shape[-1])
    f = jnp.einsum("npc,nqc->npq", theta, phi) / phi.shape[1]
    y = jnp.einsum("npq,nqc->npc", f, g).reshape(n, h, w, -1)
    return x + _bn(params, f"{q}.W.1", _conv(params, f"{q}.W.0", y))


def _upsample2(x):
    """Bilinear x2 with half-pixel centres and edges clamped (torch's Upsample, align_corners False)."""
    def along(x, axis):
        n = x.shape[axis]
        prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis),
                                jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
        nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis),
                               jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        out = jnp.stack([even, odd], axis + 1)
        return out.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])
    return along(along(x, 1), 2)


def forward(params, config: ImageDIPConfig, noise):
    """x = DIP(noise): (N, H, W, input_channels) -> (N, H, W, output_channels) in (0, 1)."""
    if noise.shape[-1] != config.input_channels:
        raise ValueError(f"the image DIP takes {config.input_channels}-channel noise, got {noise.shape[-1]}")
    config.check_size(noise.shape[1], noise.shape[2])
    prefixes = level_prefixes(config)

    def level(i, x):
        p = prefixes[i]
        skip = _act(_bn(params, f"{p}1.0.2", _conv(params, f"{p}1.0.1.0", x)))
        d = _act(_bn(params, f"{p}1.1.2", _conv(params, f"{p}1.1.1.0", x, stride=2)))
        conv_i, bn_i, nl = _deeper_indices(i)
        if nl is not None:
            d = _nonlocal(params, f"{p}1.1.{nl}", d)
        d = _act(_bn(params, f"{p}1.1.{bn_i}", _conv(params, f"{p}1.1.{conv_i}.0", d)))
        if i + 1 < config.levels:
            d = level(i + 1, d)
        out = _bn(params, f"{p}2", jnp.concatenate([skip, _upsample2(d)], -1))
        out = _act(_bn(params, f"{p}4", _conv(params, f"{p}3.0", out)))
        return _act(_bn(params, f"{p}7", _conv(params, f"{p}6.0", out)))

    return jax.nn.sigmoid(_conv(params, "9.0", level(0, noise)))


def init_params(key, config: ImageDIPConfig) -> Dict[str, jnp.ndarray]:
    """Fresh weights as torch draws them: convolutions U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)) (weight and bias),
    batch norms weight 1 and bias 0, except the non-local blocks' last batch norm, zeros (the block starts as
    the identity)."""
    shapes = param_shapes(config)
    params = kernel_dip.uniform_conv_init(key, shapes)
    for name, shape in shapes.items():
        if len(shape) == 1 and name not in params:                        # a batch norm
            zero = ".W.1." in name or name.endswith(".bias")
            params[name] = jnp.full(shape, 0.0 if zero else 1.0, jnp.float32)
    return params
