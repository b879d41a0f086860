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

from dps_jax.models.config_json import JsonConfig

INPUT_CHANNELS = 64          # fixed in the reference
DOWNSAMPLINGS = 5            # fixed in the reference


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


def _conv(params, name, x, stride=1, pad=0, reflect=0):
    if reflect:
        x = jnp.pad(x, ((0, 0), (reflect, reflect), (reflect, reflect), (0, 0)), mode="reflect")
    w = jnp.transpose(params[name + ".weight"], (2, 3, 1, 0))          # OIHW -> HWIO
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + params[name + ".bias"]


def _stem(params, name, x, reflect):
    """The 7 x 7 stem as a sum over its taps of (shifted input) x (weight slice) matrix products, so that its
    gradient in the weights is matrix products too: XLA:CPU runs that gradient as a convolution 7-8x slower
    inside a loop or a conditional than at the top level (1.4 s against 0.19 at 64 x 64 x 64), and BKS's loop
    is mostly that gradient."""
    x = jnp.pad(x, ((0, 0), (reflect, reflect), (reflect, reflect), (0, 0)), mode="reflect")
    w = params[name + ".weight"]                                         # OIHW
    k = w.shape[2]
    h, v = x.shape[1] - k + 1, x.shape[2] - k + 1
    out = params[name + ".bias"]
    for i in range(k):
        for j in range(k):
            out = out + jnp.einsum("nhwc,oc->nhwo", x[:, i:i + h, j:j + v], w[:, :, i, j])
    return out


def forward(params, config: KernelDIPConfig, noise):
    """z = DIP(noise): (N, H, W, 64) -> (N, H / 32, W / 32, kernel_dim)."""
    if noise.shape[-1] != INPUT_CHANNELS:
        raise ValueError(f"the kernel DIP takes {INPUT_CHANNELS}-channel noise, got {noise.shape[-1]} channels")
    x = jax.nn.relu(_stem(params, "model.1", noise, reflect=3))
    for k in range(1, DOWNSAMPLINGS + 1):
        x = jax.nn.relu(_conv(params, f"model.{1 + 3 * k}", x, stride=2, pad=1))
    for b in range(config.n_blocks):
        p = f"model.{19 + b}.conv_block"
        x = x + _conv(params, f"{p}.5", jax.nn.relu(_conv(params, f"{p}.1", x, reflect=1)), reflect=1)
    return x


def init_params(key, config: KernelDIPConfig) -> Dict[str, jnp.ndarray]:
    """Fresh weights as torch's Conv2d draws them (what the reference optimises from): weight and bias both
    U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)), fan_in = in_channels * k * k (kaiming_uniform with a = sqrt(5))."""
    shapes = param_shapes(config)
    params = {}
    for i, name in enumerate(sorted(shapes)):
        if not name.endswith(".weight"):
            continue
        stem = name[:-len(".weight")]
        cout, cin, kh, kw = shapes[name]
        bound = 1.0 / (cin * kh * kw) ** 0.5
        kw_key, kb_key = jax.random.split(jax.random.fold_in(key, i))
        params[name] = jax.random.uniform(kw_key, shapes[name], jnp.float32, -bound, bound)
        params[stem + ".bias"] = jax.random.uniform(kb_key, (cout,), jnp.float32, -bound, bound)
    return params
