"""The KernelWizard of Tran et al. 2021 ("Explore image deblurring via encoded blur kernel space"): the
neural blur model of the paper's nonlinear deblurring, in Flax, NHWC.

It blurs a sharp image x in [0, 1] with a blur encoded as a latent z:

    blurred = x + R(U(E(x), z))        adapt_kernel: the forward model A of nonlinear deblurring
    mu, sigma = K(E(x), E(blurred))    encode: the blur of a sharp/blurry pair, as a Gaussian over z

E (features) is a convolution, `feature_downsamples` stride-2 convolutions and `front_blocks` residual
blocks (conv-relu-conv, no norm), at H / 2^d. U (the adapter) is a U-Net of `adapter_levels` levels with
4 x 4 stride-2 convolutions whose innermost level concatenates z, so z has shape
(H / 2^(d + L), W / 2^(d + L), kernel_dim) and kernel_dim is the innermost width. R (reconstruction) is
`back_blocks` residual blocks and d pixel-shuffle upsamplings back to the image. K (the extractor) reads
both images' features, downsamples L times to z's grid and gives the mean and the standard deviation of z
(use_vae); with a VAE the prior of z is N(0, I), and the DPS paper draws z ~ 1.2 N(0, I).

The published model (GOPRO_wVAE.pth, `PRESETS["gopro_wvae"]`) has 64 features, 10 + 20 residual blocks,
4 extractor blocks, z 512 x 2 x 2 on 256 x 256 images, norm "none", reflect padding in the extractor; its
code fixes d = 2, L = 5 and the 64 features of the last two convolutions (`tail_features`), which are
fields here so that a small model can run on small images (the shipped 32 x 32 one,
`dps_jax/assets/kernel_wizard_fmnist32.msgpack`). `checkpoints_convert` maps the published weights.

    model = KernelWizard(config)
    y = model.apply({"params": params}, x, z, method=KernelWizard.adapt_kernel)   # x (N, H, W, C), z (N, h, w, k)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dps_jax.models.config_json import JsonConfig

FORMAT = "dps_jax.kernel_wizard"
SHIPPED_KERNEL_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                    "kernel_wizard_fmnist32.msgpack")


@dataclasses.dataclass(frozen=True)
class KernelWizardConfig(JsonConfig):
    """The published options (options/generate_blur/default.yml) and the sizes its code fixes."""
    KIND = "KernelWizard"
    WHAT = "KernelWizardConfig fields"
    in_channels: int = 3             # input_nc
    features: int = 64               # nf
    front_blocks: int = 10           # front_RBs
    back_blocks: int = 20            # back_RBs
    extractor_blocks: int = 4        # KernelExtractor.n_blocks
    kernel_dim: int = 512            # z's channels: the adapter's innermost width, min(2^(L-1), 8) * nf
    use_vae: bool = True             # the extractor gives (mu, sigma), else only mu
    feature_downsamples: int = 2     # fixed in the published code
    adapter_levels: int = 5          # fixed in the published code
    tail_features: int = 64          # fixed in the published code

    def __post_init__(self):
        def fail(name, want):
            raise ValueError(f"KernelWizardConfig.{name} must be {want}, got {getattr(self, name)!r:.80}")

        for name, lo, hi in (("in_channels", 1, 64), ("features", 1, 1024), ("front_blocks", 0, 64),
                             ("back_blocks", 0, 64), ("extractor_blocks", 0, 64), ("kernel_dim", 1, 8192),
                             ("feature_downsamples", 0, 6), ("adapter_levels", 1, 8), ("tail_features", 1, 1024)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                fail(name, f"an integer in [{lo}, {hi}]")
        if not isinstance(self.use_vae, bool):
            fail("use_vae", "true or false")
        if self.kernel_dim != self.inner_channels(self.adapter_levels - 1):
            fail("kernel_dim", f"the adapter's innermost width {self.inner_channels(self.adapter_levels - 1)} "
                               f"(features {self.features}, {self.adapter_levels} levels)")

    def inner_channels(self, level: int) -> int:
        """The width inside adapter level `level` (0 = outermost): nf, 2 nf, 4 nf, 8 nf, 8 nf, ..."""
        return self.features * min(2 ** level, 8)

    def outer_channels(self, level: int) -> int:
        return self.features if level == 0 else self.inner_channels(level - 1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.feature_downsamples + self.adapter_levels)

    def latent_shape(self, image_shape) -> Tuple[int, int, int]:
        """z's shape (h, w, kernel_dim) for images (H, W, C); H and W must be multiples of the downsampling."""
        h, w, c = (int(d) for d in image_shape)
        f = self.downsample_factor
        if c != self.in_channels:
            raise ValueError(f"the kernel model takes {self.in_channels}-channel images, got {c} channels")
        if h % f or w % f:
            raise ValueError(f"the kernel model takes images whose sides are multiples of {f}, got {h} x {w}")
        return h // f, w // f, self.kernel_dim


PRESETS = {
    "gopro_wvae": KernelWizardConfig(),     # GOPRO_wVAE.pth, the DPS paper's nonlinear blur
}


def _conv(features, size=3, stride=1, pad=1, bias=True, name=None):
    return nn.Conv(features, (size, size), strides=stride, padding=((pad, pad), (pad, pad)), use_bias=bias, name=name)


def pixel_shuffle(x, r: int = 2):
    """(N, H, W, C r^2) -> (N, H r, W r, C), torch's channel order (c, i, j) -> pixel (h r + i, w r + j)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(n, h * r, w * r, c // (r * r))


class ConvTranspose(nn.Module):
    """torch's ConvTranspose2d(kernel 4, stride 2, padding 1): doubles H and W.

    `kernel` (4, 4, C_in, C_out) is torch's weight (C_in, C_out, 4, 4) in HWIO order; the transposed
    convolution is a correlation of the zero-interleaved input, padded by 2, with the flipped kernel."""
    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features))
        y = lax.conv_general_dilated(x, kernel[::-1, ::-1].astype(x.dtype), (1, 1), ((2, 2), (2, 2)),
                                     lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))), zero padding, with biases (the feature and reconstruction trunks)."""
    features: int

    @nn.compact
    def __call__(self, x):
        h = nn.relu(_conv(self.features, name="conv1")(x))
        return x + _conv(self.features, name="conv2")(h)


class ReflectResidualBlock(nn.Module):
    """x + conv(relu(conv(x))), reflect padding, no biases, no norm (the extractor's blocks)."""
    features: int

    @nn.compact
    def __call__(self, x):
        pad = lambda v: jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        h = nn.relu(_conv(self.features, pad=0, bias=False, name="conv1")(pad(x)))
        return x + _conv(self.features, pad=0, bias=False, name="conv2")(pad(h))


class KernelWizard(nn.Module):
    config: KernelWizardConfig

    def setup(self):
        c = self.config
        nf, d, L = c.features, c.feature_downsamples, c.adapter_levels
        self.feat_in = _conv(nf)
        self.feat_down = [_conv(nf, stride=2) for _ in range(d)]
        self.feat_blocks = [ResidualBlock(nf) for _ in range(c.front_blocks)]
        out = 2 * c.kernel_dim if c.use_vae else c.kernel_dim
        self.ext_in = _conv(nf, size=7, pad=0, bias=False)
        self.ext_down = [_conv(min(nf * 2 ** (i + 1), out), stride=2, bias=False) for i in range(L)]
        self.ext_blocks = [ReflectResidualBlock(out) for _ in range(c.extractor_blocks)]
        self.adapt_down = [_conv(c.inner_channels(i), size=4, stride=2, bias=False) for i in range(L)]
        self.adapt_up = [ConvTranspose(c.outer_channels(i), use_bias=i == 0) for i in range(L)]
        self.recon_blocks = [ResidualBlock(nf) for _ in range(c.back_blocks)]
        self.recon_up = [_conv(4 * (nf if i < d - 1 else c.tail_features)) for i in range(d)]
        self.recon_tail = _conv(c.tail_features)
        self.recon_out = _conv(c.in_channels)

    def features(self, x):
        """E: (N, H, W, C) -> (N, H / 2^d, W / 2^d, nf)."""
        h = nn.leaky_relu(self.feat_in(x), 0.1)
        for conv in self.feat_down:
            h = nn.leaky_relu(conv(h), 0.1)
        for block in self.feat_blocks:
            h = block(h)
        return h

    def _adapter(self, level: int, x, z):
        """U-Net level `level` (0 = outermost) with skip connections; z joins at the innermost level."""
        last = level == self.config.adapter_levels - 1
        h = self.adapt_down[level](x if level == 0 else nn.leaky_relu(x, 0.2))
        h = jnp.concatenate([h, z], -1) if last else self._adapter(level + 1, h, z)
        h = self.adapt_up[level](nn.relu(h))
        return jnp.tanh(h) if level == 0 else jnp.concatenate([h, x], -1)

    def adapt_kernel(self, x, z):
        """Blur x (N, H, W, C) in [0, 1] with the encoded blur z (N, h, w, kernel_dim): (N, H, W, C)."""
        h = self._adapter(0, self.features(x), z.astype(x.dtype))
        for block in self.recon_blocks:
            h = block(h)
        for conv in self.recon_up:
            h = nn.leaky_relu(pixel_shuffle(conv(h)), 0.1)
        return x + self.recon_out(nn.leaky_relu(self.recon_tail(h), 0.1))

    def encode(self, sharp, blurred):
        """The blur of a pair, both (N, H, W, C) in [0, 1]: (mu, sigma), each (N, h, w, kernel_dim)
        (sigma zeros without a VAE)."""
        h = jnp.concatenate([self.features(sharp), self.features(blurred)], -1)
        h = nn.relu(self.ext_in(jnp.pad(h, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")))
        for conv in self.ext_down:
            h = nn.relu(conv(h))
        for block in self.ext_blocks:
            h = block(h)
        k = self.config.kernel_dim
        return (h[..., :k], h[..., k:]) if self.config.use_vae else (h, jnp.zeros_like(h))

    def __call__(self, sharp, blurred, z_noise):
        """One training pass: encode the pair, draw z = mu + sigma z_noise, blur the sharp image with it.
        Returns (re-blurred image, mu, sigma)."""
        mu, sigma = self.encode(sharp, blurred)
        return self.adapt_kernel(sharp, mu + sigma * z_noise), mu, sigma


def param_shapes(config: KernelWizardConfig):
    """The params tree of `config` as ShapeDtypeStructs (no compute); shapes do not depend on the image. A fresh
    tree."""
    return jax.tree_util.tree_map(lambda s: s, _param_shapes(config))


@functools.lru_cache(maxsize=8)
def _param_shapes(config: KernelWizardConfig):
    # Tracing the init takes about a second, and every read of a kernel model checks against it.
    f = config.downsample_factor
    x = jnp.zeros((1, f, f, config.in_channels))
    z = jnp.zeros((1,) + config.latent_shape(x.shape[1:]))
    return jax.eval_shape(lambda: KernelWizard(config).init(jax.random.PRNGKey(0), x, x, z))["params"]


def init_params(key, config: KernelWizardConfig):
    """Random params for training: He-normal kernels, x 0.1 in the residual blocks and the output
    convolution (so a new model starts near "no blur" rather than adding noise to x), zero biases.

    Drawn with numpy from the key's bits: Flax's own `init` compiles a program of ~20 s even for a tiny
    model, most of it the random initialisers."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def leaf(path, shape):
        names = [p.key for p in path]
        if names[-1] == "bias":
            return np.zeros(shape.shape, np.float32)
        small = names[0].startswith(("feat_blocks", "recon_blocks")) or names[0] == "recon_out"
        fan_in = int(np.prod(shape.shape[:-1]))
        return (rng.standard_normal(shape.shape) * (0.1 if small else 1.0) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, param_shapes(config))


def blur(params, config: KernelWizardConfig, x, z):
    """A(x) of the DPS paper for one image x (H, W, C) in [-1, 1] and z (h, w, kernel_dim): the image
    mapped to [0, 1], blurred by the model, mapped back and clipped to [-1, 1] as the paper's code does."""
    out = KernelWizard(config).apply({"params": params}, ((x + 1) / 2)[None], z[None],
                                     method=KernelWizard.adapt_kernel)[0]
    return jnp.clip(2 * out - 1, -1, 1)


def load(path: str = ""):
    """(params, config) of a KernelWizard file ("" = the shipped 32 x 32 one), checked against its config."""
    from dps_jax.models.checkpoint import read_checkpoint

    params, config, _ = read_checkpoint(path or SHIPPED_KERNEL_MODEL, FORMAT, KernelWizardConfig.from_json,
                                        param_shapes)
    return params, config


def num_params(params) -> int:
    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(params)))
