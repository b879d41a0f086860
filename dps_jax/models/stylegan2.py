"""The StyleGAN2 generator (Karras et al. 2020, config-f) in the layout of rosinality's stylegan2-pytorch (the
checkpoints BKS-styleGAN2, Tran et al. 2021, loads), as pure JAX functions over a params dict keyed by the
torch state_dict's own keys ("convs.0.conv.weight"), NHWC images.

    w = mapping(params, config, z)                                  # z (N, style_dim) -> w (N, style_dim)
    image = synthesis(params, config, w_plus, noises)              # w_plus (N, n_latent, style_dim) -> (N, S, S, 3)

The mapping network is a pixel norm then `n_mlp` equalised-learning-rate linear layers with a scaled leaky ReLU;
the synthesis network starts from a learned 4 x 4 constant and, per resolution, two modulated 3 x 3 convolutions
(the first upsampling: a transposed convolution then the FIR filter), each followed by noise injection and the
scaled leaky ReLU, and a modulated 1 x 1 to-RGB whose outputs are summed across resolutions (the previous one
upsampled by the filter). A modulated convolution scales the kernel's input channels by the style s = A(w) and,
except to-RGB, divides each output channel by the norm of its modulated kernel (demodulation).

`noises`: one (H, W) map per layer (`noise_shapes`), or None for the network's stored ones (the `noises.noise_i`
buffers; rosinality's `randomize_noise=False`). Weights are stored unscaled, as in torch; the equalised-lr scales
are applied here. Proved against rosinality's forward pass (tests/fixtures/stylegan2_small.*).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.models.config_json import JsonConfig

FORMAT = "dps_jax.stylegan2"
# The generator trained on Fashion-MNIST 32 x 32 that ships (`dps_jax.train.stylegan2`, docs/models.md):
# BKS-styleGAN2's image prior on the shipped nonlinear-deblurring config.
SHIPPED_GENERATOR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                 "stylegan2_fmnist32.msgpack")


def default_channels(size: int, channel_multiplier: int = 2) -> Tuple[Tuple[int, int], ...]:
    """rosinality's channel table: 512 up to 32 x 32, then 256 m, 128 m, 64 m, 32 m, 16 m at 64 .. 1024."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return tuple((r, table[r]) for r in sorted(table) if r <= size)


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config(JsonConfig):
    """The Generator's constructor arguments (rosinality's names) and its channel per resolution."""
    KIND = "StyleGAN2 generator"
    WHAT = "StyleGAN2Config fields"
    size: int = 256
    style_dim: int = 512
    n_mlp: int = 8
    channels: Tuple[Tuple[int, int], ...] = ()     # ((resolution, channels), ...); () = the table of channel_multiplier 2
    blur_kernel: Tuple[int, ...] = (1, 3, 3, 1)
    lr_mlp: float = 0.01
    image_channels: int = 3       # the to-RGB layers' outputs: 3 in rosinality's code, 1 for grey images

    def __post_init__(self):
        if not self.channels:
            object.__setattr__(self, "channels", default_channels(self.size) if _is_pow2(self.size) else ())
        object.__setattr__(self, "channels", tuple((int(r), int(c)) for r, c in self.channels))
        object.__setattr__(self, "blur_kernel", tuple(int(k) for k in self.blur_kernel))
        if not (isinstance(self.size, int) and _is_pow2(self.size) and 8 <= self.size <= 4096):
            raise ValueError(f"{self.KIND}: size {self.size!r:.40} must be a power of two in [8, 4096]")
        want = [2 ** i for i in range(2, int(math.log2(self.size)) + 1)]
        if [r for r, _ in self.channels] != want or any(c < 1 for _, c in self.channels):
            raise ValueError(f"{self.KIND}: channels must give a positive width for each resolution {want}, got "
                             f"{self.channels!r:.120}")
        for name, lo in (("style_dim", 1), ("n_mlp", 1), ("image_channels", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{self.KIND}: {name} must be an integer >= {lo}, got {v!r:.40}")
        if len(self.blur_kernel) != 4 or tuple(self.blur_kernel) != tuple(self.blur_kernel)[::-1]:
            raise ValueError(f"{self.KIND}: blur_kernel must be a symmetric 4-tap filter, got {self.blur_kernel!r:.60}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def num_layers(self) -> int:
        """Noise-injected convolutions: one at 4 x 4, two per resolution above."""
        return (self.log_size - 2) * 2 + 1

    @property
    def n_latent(self) -> int:
        """W+ rows: the convolutions and the to-RGBs each read one (two shared per resolution)."""
        return self.log_size * 2 - 2

    def width(self, res: int) -> int:
        return dict(self.channels)[res]


def _is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


def noise_shapes(config: StyleGAN2Config) -> List[Tuple[int, int]]:
    """(H, W) of each layer's noise map, in layer order."""
    return [(2 ** ((i + 5) // 2),) * 2 for i in range(config.num_layers)]


def _kernel(config: StyleGAN2Config, factor: int) -> np.ndarray:
    k = np.asarray(config.blur_kernel, np.float32)
    k = np.outer(k, k)
    return k / k.sum() * factor ** 2


def param_shapes(config: StyleGAN2Config) -> Dict[str, tuple]:
    """{torch key: shape} of every parameter and buffer of rosinality's Generator under `config`."""
    sd = config.style_dim
    shapes = {}
    for i in range(1, config.n_mlp + 1):
        shapes[f"style.{i}.weight"], shapes[f"style.{i}.bias"] = (sd, sd), (sd,)

    def modconv(name, cin, cout, k, up=False):
        shapes[f"{name}.weight"] = (1, cout, cin, k, k)
        shapes[f"{name}.modulation.weight"], shapes[f"{name}.modulation.bias"] = (cin, sd), (cin,)
        if up:
            shapes[f"{name}.blur.kernel"] = (4, 4)

    def styled(name, cin, cout, up=False):
        modconv(f"{name}.conv", cin, cout, 3, up)
        shapes[f"{name}.noise.weight"] = (1,)
        shapes[f"{name}.activate.bias"] = (cout,)

    def to_rgb(name, cin, up):
        modconv(f"{name}.conv", cin, config.image_channels, 1)
        shapes[f"{name}.bias"] = (1, config.image_channels, 1, 1)
        if up:
            shapes[f"{name}.upsample.kernel"] = (4, 4)

    c4 = config.width(4)
    shapes["input.input"] = (1, c4, 4, 4)
    styled("conv1", c4, c4)
    to_rgb("to_rgb1", c4, False)
    cin = c4
    for n, log in enumerate(range(3, config.log_size + 1)):
        cout = config.width(2 ** log)
        styled(f"convs.{2 * n}", cin, cout, up=True)
        styled(f"convs.{2 * n + 1}", cout, cout)
        to_rgb(f"to_rgbs.{n}", cout, True)
        cin = cout
    for i, (h, w) in enumerate(noise_shapes(config)):
        shapes[f"noises.noise_{i}"] = (1, 1, h, w)
    return shapes


def buffers(config: StyleGAN2Config) -> Dict[str, np.ndarray]:
    """The FIR kernels rosinality's Generator keeps as buffers (its constructor makes them from blur_kernel)."""
    return {k: _kernel(config, 2) for k in param_shapes(config) if k.endswith((".blur.kernel", ".upsample.kernel"))}


def load(path: str):
    """(params, config) of a converted generator (`python -m checkpoints_convert.stylegan2`), checked against
    its config's shapes."""
    from dps_jax.models import checkpoint

    params, config, _ = checkpoint.read_checkpoint(path, FORMAT, StyleGAN2Config.from_json, param_shapes)
    return params, config


def _fused_lrelu(x, bias):
    return jax.nn.leaky_relu(x + bias, 0.2) * np.sqrt(2.0)


def mapping(params, config: StyleGAN2Config, z):
    """w = f(z): (N, style_dim) -> (N, style_dim)."""
    x = z * jax.lax.rsqrt(jnp.mean(z ** 2, axis=1, keepdims=True) + 1e-8)
    scale = config.lr_mlp / np.sqrt(config.style_dim)
    for i in range(1, config.n_mlp + 1):
        x = _fused_lrelu(x @ (params[f"style.{i}.weight"] * scale).T, params[f"style.{i}.bias"] * config.lr_mlp)
    return x


def _upfirdn(x, kernel, up: int, pad: Tuple[int, int]):
    """rosinality's upfirdn2d (no downsampling) on NHWC: zero-insert by `up`, pad (pad0 before, pad1 after),
    convolve each channel with `kernel` (flipped: a convolution, not a correlation)."""
    c = x.shape[-1]
    k = jnp.asarray(kernel)[::-1, ::-1]
    w = jnp.tile(k[:, :, None, None], (1, 1, 1, c))                     # HWIO, depthwise
    # zero insertion by `up` leaves up - 1 zeros after the last sample too: they count as padding after
    p0, p1 = pad
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(p0, p1 + up - 1)] * 2, lhs_dilation=(up, up),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def _modconv(params, name, x, w, demodulate=True, up=False, kernel=None):
    """ModulatedConv2d on x (N, H, W, Cin) with style input w (N, style_dim)."""
    weight = params[f"{name}.weight"][0]                                 # (O, I, k, k)
    cout, cin, k, _ = weight.shape
    style = w @ (params[f"{name}.modulation.weight"] * (1 / np.sqrt(w.shape[-1]))).T + params[f"{name}.modulation.bias"]
    weight = weight * (1 / np.sqrt(cin * k * k))
    x = x * style[:, None, None, :]
    if up:
        # torch's conv_transpose2d (stride 2, no padding): the input dilated by 2, padded k - 1, the kernel flipped
        wt = jnp.transpose(weight[:, :, ::-1, ::-1], (2, 3, 1, 0))       # HWIO
        out = jax.lax.conv_general_dilated(x, wt, (1, 1), [(k - 1, k - 1)] * 2, lhs_dilation=(2, 2),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        p = (kernel.shape[0] - 2) - (k - 1)
        out = _upfirdn(out, kernel, 1, ((p + 1) // 2 + 1, p // 2 + 1))
    else:
        out = jax.lax.conv_general_dilated(x, jnp.transpose(weight, (2, 3, 1, 0)), (1, 1), [(k // 2, k // 2)] * 2,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if demodulate:          # 1 / |the modulated kernel of each output channel|
        d = jax.lax.rsqrt(jnp.einsum("oikl,ni->no", weight ** 2, style ** 2) + 1e-8)
        out = out * d[:, None, None, :]
    return out


def synthesis(params, config: StyleGAN2Config, latent, noises: Optional[List] = None):
    """The image G(w+) (N, size, size, image_channels), roughly in [-1, 1], from latent (N, n_latent, style_dim)
    and per-layer noise maps (each (H, W) or (N, H, W); None: the stored `noises.noise_i`)."""
    n = latent.shape[0]
    if noises is None:
        noises = [params[f"noises.noise_{i}"][0, 0] for i in range(config.num_layers)]
    if len(noises) != config.num_layers:
        raise ValueError(f"{len(noises)} noise maps for {config.num_layers} layers")
    up_kernel = _kernel(config, 2)

    def styled(name, x, w, noise, up=False):
        x = _modconv(params, f"{name}.conv", x, w, up=up, kernel=up_kernel)
        noise = jnp.asarray(noise)
        x = x + params[f"{name}.noise.weight"][0] * (noise[..., None] if noise.ndim == 3 else noise[None, ..., None])
        return _fused_lrelu(x, params[f"{name}.activate.bias"])

    def to_rgb(name, x, w, skip):
        out = _modconv(params, f"{name}.conv", x, w, demodulate=False) + params[f"{name}.bias"].reshape(1, 1, 1, -1)
        if skip is not None:
            p = up_kernel.shape[0] - 2
            out = out + _upfirdn(skip, up_kernel, 2, ((p + 1) // 2 + 1, p // 2))
        return out

    x = jnp.broadcast_to(jnp.transpose(params["input.input"], (0, 2, 3, 1)), (n, 4, 4, config.width(4)))
    x = styled("conv1", x, latent[:, 0], noises[0])
    skip = to_rgb("to_rgb1", x, latent[:, 1], None)
    i = 1
    for level in range(config.log_size - 2):
        x = styled(f"convs.{2 * level}", x, latent[:, i], noises[2 * level + 1], up=True)
        x = styled(f"convs.{2 * level + 1}", x, latent[:, i + 1], noises[2 * level + 2])
        skip = to_rgb(f"to_rgbs.{level}", x, latent[:, i + 2], skip)
        i += 2
    return skip


def generate(params, config: StyleGAN2Config, z, noises=None, truncation: float = 1.0, w_avg=None):
    """G(z): one style for every row of W+ (no mixing), with optional truncation towards `w_avg`."""
    w = mapping(params, config, z)
    if truncation != 1.0:
        w = w_avg + truncation * (w - w_avg)
    return synthesis(params, config, jnp.repeat(w[:, None], config.n_latent, axis=1), noises)
