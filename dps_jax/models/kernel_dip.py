"""The kernel DIP of BKS (Tran et al. 2021, VinAIResearch/blur-kernel-space-exploring `models/dips.py`): a deep
image prior that maps a fixed noise input to the blur latent z of the KernelWizard; BKS-styleGAN2 and BKS-generic
optimise its weights (not z itself) so that the blur model explains y. Pure JAX over the torch state_dict's keys,
NHWC.

    z = forward(params, config, noise)           # noise (N, H, W, 64) -> z (N, H / 32, W / 32, kernel_dim)

A 7 x 7 convolution (reflection padded) to `nf` channels, five stride-2 3 x 3 convolutions doubling the width
up to `kernel_dim`, each followed by ReLU, then `n_blocks` residual blocks (reflection-padded 3 x 3, ReLU, 3 x 3;
no normalisation: the published option `norm: none`). The reference's noise input is uniform [0, 0.1) with 64
channels at 64 x 64 (`util.get_noise(64, "noise", (64, 64))`), which gives z at 2 x 2: the KernelWizard's z for
256 x 256 images.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.models.config_json import JsonConfig

INPUT_CHANNELS = 64          # fixed in the reference
DOWNSAMPLINGS = 5            # fixed in the reference
IM2COL_MAX = 1 << 24         # values of a convolution's side-by-side taps (64 MB in float32); above, tap by tap


@dataclasses.dataclass(frozen=True)
class KernelDIPConfig(JsonConfig):
    """The published options (options/domain_specific_deblur/stylegan2.yml, KernelDIP)."""
    KIND = "KernelDIP"
    WHAT = "KernelDIPConfig fields"
    nf: int = 64
    n_blocks: int = 6
    kernel_dim: int = 512

    def __post_init__(self):
        for name in ("nf", "n_blocks", "kernel_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 8192 or (v == 0 and name != "n_blocks"):
                raise ValueError(f"{self.KIND}.{name} must be a positive integer, got {v!r:.40}")

    def widths(self):
        """(in, out) channels of the stem and of each downsampling convolution."""
        out = [(INPUT_CHANNELS, self.nf)]
        for i in range(DOWNSAMPLINGS):
            out.append((min(self.nf * 2 ** i, self.kernel_dim), min(self.nf * 2 ** (i + 1), self.kernel_dim)))
        return out


def param_shapes(config: KernelDIPConfig) -> Dict[str, tuple]:
    """{torch key: shape}: `model.N` is the index in the reference's Sequential (its Identity norms count)."""
    shapes = {}
    for k, (cin, cout) in enumerate(config.widths()):
        index, size = (1, 7) if k == 0 else (1 + 3 * k, 3)
        shapes[f"model.{index}.weight"], shapes[f"model.{index}.bias"] = (cout, cin, size, size), (cout,)
    d = config.kernel_dim
    for b in range(config.n_blocks):
        for conv in (1, 5):
            shapes[f"model.{19 + b}.conv_block.{conv}.weight"] = (d, d, 3, 3)
            shapes[f"model.{19 + b}.conv_block.{conv}.bias"] = (d,)
    return shapes


def _conv(params, name, x, stride=1, pad=0, reflect=0, taps=True):
    """taps: as `conv_by_taps` (the stem and the downsamplings, on large inputs); else one convolution (the
    residual blocks at z's few pixels, where the weight gradient is cheap and the taps only cost compile time)."""
    if taps:
        return conv_by_taps(x, params[name + ".weight"], params[name + ".bias"], stride, max(pad, reflect),
                            "reflect" if reflect else "constant")
    if reflect:
        x = jnp.pad(x, ((0, 0), (reflect, reflect), (reflect, reflect), (0, 0)), mode="reflect")
    y = jax.lax.conv_general_dilated(x, jnp.transpose(params[name + ".weight"], (2, 3, 1, 0)), (stride, stride),
                                     [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + params[name + ".bias"]


def conv_by_taps(x, w, b, stride: int = 1, pad: int = 0, mode: str = "constant"):
    """A convolution of x (N, H, W, I) with w (O, I, kh, kw) (torch's layout, cross-correlation) and bias b (O,),
    `pad` pixels each side (zeros, or "reflect"), written as matrix products of its taps (strided, shifted
    inputs): all side by side in one product (im2col) while they hold at most IM2COL_MAX values, else one product
    per tap. Its weight gradient is then matrix products too: XLA:CPU runs a convolution's weight gradient 4-8x
    slower inside a loop or a conditional than at the top level (the DIP stem's: 1.4 s against 0.19 at 64 x 64
    x 64), and the BKS loops are mostly those gradients."""
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    kh, kw = w.shape[2], w.shape[3]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    taps = [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            for i in range(kh) for j in range(kw)]
    if len(taps) * taps[0].size <= IM2COL_MAX:       # the taps side by side: one product (fewer ops to compile)
        patches = jnp.concatenate(taps, -1)
        return b + jnp.einsum("nhwk,ok->nhwo", patches, jnp.transpose(w, (0, 2, 3, 1)).reshape(w.shape[0], -1))
    out = b
    for t, tap in enumerate(taps):
        out = out + jnp.einsum("nhwc,oc->nhwo", tap, w[:, :, t // kw, t % kw])
    return out


def forward(params, config: KernelDIPConfig, noise):
    """z = DIP(noise): (N, H, W, 64) -> (N, H / 32, W / 32, kernel_dim)."""
    if noise.shape[-1] != INPUT_CHANNELS:
        raise ValueError(f"the kernel DIP takes {INPUT_CHANNELS}-channel noise, got {noise.shape[-1]} channels")
    x = jax.nn.relu(_conv(params, "model.1", noise, reflect=3))
    for k in range(1, DOWNSAMPLINGS + 1):
        x = jax.nn.relu(_conv(params, f"model.{1 + 3 * k}", x, stride=2, pad=1))
    for b in range(config.n_blocks):
        p = f"model.{19 + b}.conv_block"
        x = x + _conv(params, f"{p}.5", jax.nn.relu(_conv(params, f"{p}.1", x, reflect=1, taps=False)), reflect=1,
                      taps=False)
    return x


def uniform_conv_init(key, shapes: Dict[str, tuple]) -> Dict[str, jnp.ndarray]:
    """torch's Conv2d init for every `<name>.weight` (O, I, kh, kw) of `shapes` and its `<name>.bias`: both
    U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)), fan_in = I * kh * kw (kaiming_uniform with a = sqrt(5)). One draw
    for all of them, cut up: a draw per tensor compiled for ~20 s."""
    convs = sorted(n[:-len(".weight")] for n, s in shapes.items() if n.endswith(".weight") and len(s) == 4)
    sizes = [int(np.prod(shapes[c + ".weight"])) + shapes[c + ".weight"][0] for c in convs]
    flat = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    params, start = {}, 0
    for c, size in zip(convs, sizes):
        shape = shapes[c + ".weight"]
        bound = 1.0 / float(np.prod(shape[1:])) ** 0.5
        n = int(np.prod(shape))
        params[c + ".weight"] = bound * flat[start:start + n].reshape(shape)
        params[c + ".bias"] = bound * flat[start + n:start + size]
        start += size
    return params


def init_params(key, config: KernelDIPConfig) -> Dict[str, jnp.ndarray]:
    """Fresh weights as torch's Conv2d draws them (what the reference optimises from; `uniform_conv_init`)."""
    return uniform_conv_init(key, param_shapes(config))
