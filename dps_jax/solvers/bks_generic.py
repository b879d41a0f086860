"""BKS-generic (Tran et al. 2021, "Explore image deblurring via encoded blur kernel space", its generic
deblurring; VinAIResearch/blur-kernel-space-exploring `models/deblurring/joint_deblur.py`): blind deblurring
with two deep image priors and the KernelWizard's blur-kernel space, as an iterative solver of nonlinear
deblurring (the DPS paper's Table 4 row). It is blind: it uses the operator's blur model F (the KernelWizard's
weights), never its z. Images are in [0, 1] inside, as the reference's; y and the result in [-1, 1].

The unknowns are the weights of an image DIP (x = DIPx(zx), `models/image_dip.py`) and of a kernel DIP
(z = DIPk(zk), `models/kernel_dip.py`), each fed its fixed noise input perturbed by reg_noise_std N(0, I) every
iteration. The schedule (one grid row per iteration): `warmup_iters` Adam steps of the image DIP towards y
(MSE), then as many of the kernel DIP towards the warm-up z (MSE); then `steps` joint iterations, both DIPs
stepped by Adam on

    first half:   0.6 P(F(x, z), y) + (1 - SSIM(F(x, z), y)) + 5e-5 |z| + 2e-2 HL(x)
    second half:      P(F(x, z), y)                          + 5e-4 |z| + 5e-2 HL(x)

with the learning rates decayed x0.7 every fifth of the joint iterations. P is the perceptual loss (L1
distances of VGG19 relu1_1 .. relu5_1 features weighted 0.2, 0.4, 0.8, 1, 3), SSIM the reference's (11 x 11
Gaussian window, sigma 1.5, zero padded), HL the hyper-Laplacian prior: the mean over pixels of
|Sobel gradient of the channel sum|^0.66 (eps 1e-6 inside the root). The answer is the last iteration's x.
Posterior "samples" are restarts from independent draws (DIP weights and inputs, perturbations), as for ER / HIO.

What dps_jax makes options: the VGG19 weights (`vgg19`, converted by `python -m checkpoints_convert.metrics
vgg19`): ImageNet's VGG19 does not ship, and without it P is the mean absolute pixel difference (a deliberate
difference, docs/faithfulness.md); the warm-up z (`warmup_kernel`, as bks_stylegan's); the image DIP's depth
(`dip_levels`: the reference's 5 needs sizes that are multiples of 64; 32 x 32 takes 4) and widths.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.metrics import pixel
from dps_jax.models import image_dip, kernel_dip, kernel_wizard, vgg19
from dps_jax.operators import nonlinear_blur
from dps_jax.solvers import base
from dps_jax.solvers.bks_stylegan import ADAM, adam, blind_blur_only, read_warmup_kernel, warmup_target

X_WARMUP, K_WARMUP, JOINT = 0, 1, 2
PERCEPTUAL_WEIGHTS = (0.2, 0.4, 0.8, 1.0, 3.0)
SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))      # cross-correlation taps, as torch's conv2d
DIP_X_CHANNELS = 8
WEIGHTS_FIRST = ("perceptual_first", "ssim_first", "kernel_norm_first", "hl_first")
WEIGHTS_SECOND = ("perceptual_second", "ssim_second", "kernel_norm_second", "hl_second")


@flax.struct.dataclass
class Options:
    """The reference's options/generic_deblur/default.yml and the weights its loss hard-codes."""
    x_lr: float = 5e-4
    k_lr: float = 5e-4
    reg_noise_std: float = 1e-3
    perceptual_first: float = 0.6              # the loss's weights in the first half of the joint iterations
    ssim_first: float = 1.0
    kernel_norm_first: float = 5e-5
    hl_first: float = 2e-2
    perceptual_second: float = 1.0             # ... and in the second half
    ssim_second: float = 0.0
    kernel_norm_second: float = 5e-4
    hl_second: float = 5e-2
    hl_alpha: float = 0.66
    hl_eps: float = 1e-6
    decay: float = 0.7                         # the learning rates' factor every fifth of the joint iterations
    steps: int = base.static_field(5000)       # joint iterations (num_iters)
    warmup_iters: int = base.static_field(300)
    vgg19: str = base.static_field("")         # converted VGG19 weights; "" = pixel L1 in place of P
    warmup_kernel: str = base.static_field("")  # the kernel DIP's warm-up z (.npy), as bks_stylegan's; "" = zeros
    dip_levels: int = base.static_field(5)
    dip_channels: int = base.static_field(128)
    dip_skip: int = base.static_field(16)
    kdip_nf: int = base.static_field(64)
    kdip_blocks: int = base.static_field(6)

    def check(self) -> None:
        base.check_int("steps", self.steps, 1)
        base.check_int("warmup_iters", self.warmup_iters, 0)
        for name in ("dip_levels", "dip_channels", "dip_skip", "kdip_nf"):
            base.check_int(name, getattr(self, name), 1)
        base.check_int("kdip_blocks", self.kdip_blocks, 0)
        for name in ("x_lr", "k_lr", "reg_noise_std", "hl_alpha", "hl_eps", "decay") + WEIGHTS_FIRST + WEIGHTS_SECOND:
            base.check_finite_number(name, getattr(self, name))


@flax.struct.dataclass
class Network:
    """The solver's own inputs: VGG19 weights (or None: pixel L1), the warm-up z (h, w, kernel_dim) or None
    (zeros); the DIPs' configs are part of the program."""
    vgg: Any = None
    warmup_z: Any = None
    xdip_fields: tuple = flax.struct.field(pytree_node=False, default=(128, 16, 5))  # (channels, skip, levels)
    kdip_fields: tuple = flax.struct.field(pytree_node=False, default=(64, 6))      # (nf, n_blocks)


# ---- the loss terms --------------------------------------------------------------------------------

def perceptual(vgg, a, b):
    """sum_l w_l mean |phi_l(a) - phi_l(b)| over VGG19's relu1_1 .. relu5_1 on images (N, H, W, C) in [0, 1]
    (grey repeated to RGB; no ImageNet normalisation, as the reference); vgg None: mean |a - b|."""
    if vgg is None:
        return jnp.mean(jnp.abs(a - b))
    if a.shape[-1] == 1:
        a, b = jnp.repeat(a, 3, -1), jnp.repeat(b, 3, -1)
    n = a.shape[0]
    feats = vgg19.features(vgg, jnp.concatenate([a, b]))
    return sum(w * jnp.mean(jnp.abs(f[:n] - f[n:])) for w, f in zip(PERCEPTUAL_WEIGHTS, feats))


def ssim(a, b):
    """The reference's SSIM of images (N, H, W, C) in [0, 1]: a Gaussian window (11, sigma 1.5) per channel with
    zero padding, C1 = 0.01^2, C2 = 0.03^2, the map's mean."""
    n, h, w_, c = a.shape
    g = pixel.gaussian_window(11, 1.5)                                      # the SSIM metric's window
    w = jnp.asarray(np.float32(np.outer(g, g))[:, :, None, None]).astype(a.dtype)     # float32 taps, as its

    def blur(t):              # each channel alone: channels into the batch (a grouped convolution is slow on CPU)
        t = jnp.moveaxis(t, -1, 1).reshape(n * c, h, w_, 1)
        t = jax.lax.conv_general_dilated(t, w, (1, 1), [(5, 5), (5, 5)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.moveaxis(t.reshape(n, c, h, w_), 1, -1)

    mu1, mu2 = blur(a), blur(b)
    s11, s22, s12 = blur(a * a) - mu1 ** 2, blur(b * b) - mu2 ** 2, blur(a * b) - mu1 * mu2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return jnp.mean((2 * mu1 * mu2 + c1) * (2 * s12 + c2) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2)))


def hyper_laplacian(x, alpha: float, eps: float):
    """mean over pixels of (|G(x)|^2 + eps)^(alpha / 2), G the Sobel gradient of the channel sum of x (N, H, W, C)
    with zero padding (the reference convolves all channels into one)."""
    kx = np.asarray(SOBEL_X, np.float32)
    k = jnp.asarray(np.stack([kx, kx.T], -1)[:, :, None, :]).astype(x.dtype)   # (3, 3, 1, 2): d/dx, d/dy
    g = jax.lax.conv_general_dilated(jnp.sum(x, -1, keepdims=True), k, (1, 1), [(1, 1), (1, 1)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean((jnp.sum(g ** 2, -1) + eps) ** (alpha / 2))


def weights_at(options: Options, second):
    """(perceptual, ssim, |z|, HL) weights of the first or the second half (`second` a traced bool)."""
    return tuple(jnp.where(second, getattr(options, b), getattr(options, a))
                 for a, b in zip(WEIGHTS_FIRST, WEIGHTS_SECOND))


def joint_loss(net: Network, options: Options, x, z, y01, kw_params, kw_config, second):
    """The joint loss at image x (1, H, W, C) in [0, 1] and blur latent z (F(x, z) the KernelWizard's blur)."""
    fake = kernel_wizard.KernelWizard(kw_config).apply({"params": kw_params}, x, z,
                                                       method=kernel_wizard.KernelWizard.adapt_kernel)
    wp, ws, wk, wh = weights_at(options, second)
    total = (wp * perceptual(net.vgg, fake, y01) + ws * (1 - ssim(fake, y01)) + wk * jnp.sqrt(jnp.sum(z ** 2))
             + wh * hyper_laplacian(x, options.hl_alpha, options.hl_eps))
    return total


# ---- the solver ------------------------------------------------------------------------------------

def check(problem, options) -> None:
    blind_blur_only("bks_generic", problem)


def xdip_config(net: Network, image_channels: int) -> image_dip.ImageDIPConfig:
    channels, skip, levels = net.xdip_fields
    return image_dip.ImageDIPConfig(input_channels=DIP_X_CHANNELS, output_channels=image_channels,
                                    channels=channels, skip=skip, levels=levels)


def kdip_config(net: Network, kernel_dim: int) -> kernel_dip.KernelDIPConfig:
    nf, blocks = net.kdip_fields
    return kernel_dip.KernelDIPConfig(nf=nf, n_blocks=blocks, kernel_dim=kernel_dim)


def initial_state(xdip, kdip, dip_zx, dip_zk, image_shape):
    """The state from given unknowns (what `init` draws; a test passes the reference's): the DIPs' weights,
    their fixed inputs dip_zx (1, H, W, 8) and dip_zk (1, 32 h, 32 w, 64), one Adam state each (the reference
    keeps them from the warm-up into the joint iterations), and the last image (1, H, W, C)."""
    return {"xdip": xdip, "kdip": kdip, "x_adam": ADAM.init(xdip), "k_adam": ADAM.init(kdip), "dip_zx": dip_zx,
            "dip_zk": dip_zk, "image": jnp.zeros((1,) + tuple(image_shape), dip_zx.dtype)}


def init(key, problem, net: Network, options: Options, image_shape):
    """Fresh unknowns as the reference draws them: both DIPs as torch initialises them, their inputs
    U(0, 0.1)."""
    _, kw_config = nonlinear_blur.blur_model(problem.op.data)
    xconf = xdip_config(net, image_shape[-1])
    xconf.check_size(image_shape[0], image_shape[1])
    h, w, kdim = kw_config.latent_shape(tuple(image_shape))
    kx, kk, kzx, kzk = jax.random.split(key, 4)
    xdip = image_dip.init_params(kx, xconf)
    kdip = kernel_dip.init_params(kk, kdip_config(net, kdim))
    dip_zx = jax.random.uniform(kzx, (1,) + tuple(image_shape[:2]) + (DIP_X_CHANNELS,), jnp.float32) * 0.1
    dip_zk = jax.random.uniform(kzk, (1, 32 * h, 32 * w, kernel_dip.INPUT_CHANNELS), jnp.float32) * 0.1
    return initial_state(xdip, kdip, dip_zx, dip_zk, image_shape)


def draw(key, state, problem, options):
    """The perturbations of both DIPs' inputs, N(0, I) of their shapes."""
    kx, kk = jax.random.split(key)
    return {"x": jax.random.normal(kx, state["dip_zx"].shape, jnp.float32),
            "k": jax.random.normal(kk, state["dip_zk"].shape, jnp.float32)}


def update(state, c, noise, problem, net: Network, options: Options):
    """One iteration of row c = {"phase", "lr" (the decay factor), "second" (the loss's second half)}: the
    image DIP towards y, the kernel DIP towards the warm-up z, or both on the joint loss. The record's "loss" is
    the phase's loss."""
    kw_params, kw_config = nonlinear_blur.blur_model(problem.op.data)
    zx = state["dip_zx"] + options.reg_noise_std * noise["x"]
    zk = state["dip_zk"] + options.reg_noise_std * noise["k"]
    y01 = (problem.y[None] + 1) / 2
    kconf, xconf = kdip_config(net, kw_config.kernel_dim), xdip_config(net, problem.y.shape[-1])

    def x_warm(state):
        value, g = jax.value_and_grad(
            lambda p: jnp.mean((image_dip.forward(p, xconf, zx) - y01) ** 2))(state["xdip"])
        xdip, x_adam = adam(state["xdip"], g, state["x_adam"], options.x_lr * c["lr"])
        return {**state, "xdip": xdip, "x_adam": x_adam}, value

    def k_warm(state):
        target = warmup_target(net, (1,) + kw_config.latent_shape(problem.y.shape))
        value, g = jax.value_and_grad(
            lambda p: jnp.mean((kernel_dip.forward(p, kconf, zk) - target) ** 2))(state["kdip"])
        kdip, k_adam = adam(state["kdip"], g, state["k_adam"], options.k_lr * c["lr"])
        return {**state, "kdip": kdip, "k_adam": k_adam}, value

    def joint(state):
        def objective(xp, kp):
            x = image_dip.forward(xp, xconf, zx)
            value = joint_loss(net, options, x, kernel_dip.forward(kp, kconf, zk), y01, kw_params, kw_config,
                               c["second"])
            return value, x

        (value, x), (gx, gk) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(state["xdip"],
                                                                                          state["kdip"])
        xdip, x_adam = adam(state["xdip"], gx, state["x_adam"], options.x_lr * c["lr"])
        kdip, k_adam = adam(state["kdip"], gk, state["k_adam"], options.k_lr * c["lr"])
        return {**state, "xdip": xdip, "x_adam": x_adam, "kdip": kdip, "k_adam": k_adam, "image": x}, value

    if options.warmup_iters == 0:            # no warm-up rows in the grid: only the joint step is compiled
        state, value = joint(state)
    else:
        state, value = jax.lax.switch(c["phase"], (x_warm, k_warm, joint), state)
    return state, {"loss": value}


def result(state):
    """The last iteration's x, clamped to [0, 1], as an image (H, W, C) in [-1, 1]."""
    return 2 * jnp.clip(state["image"][0], 0, 1) - 1


def schedule_rows(options: Options):
    """(phase, lr factor, second half) per iteration: the two warm-ups at the full rate, then the joint
    iterations; torch's StepLR is stepped before each joint step, so iteration s (from 0) runs at
    decay^((s + 1) // (steps // 5))."""
    every = max(options.steps // 5, 1)
    w = options.warmup_iters
    phase = [X_WARMUP] * w + [K_WARMUP] * w + [JOINT] * options.steps
    lr = [1.0] * (2 * w) + [options.decay ** ((s + 1) // every) for s in range(options.steps)]
    second = [False] * (2 * w) + [s >= options.steps // 2 for s in range(options.steps)]
    return phase, lr, second


def grid(options: Options, schedule) -> base.Grid:
    """One row per iteration (see `schedule_rows`); no diffusion network is evaluated."""
    phase, lr, second = schedule_rows(options)
    xs = {"phase": jnp.asarray(phase, jnp.int32), "lr": jnp.asarray(np.float32(lr)), "second": jnp.asarray(second)}
    return base.Grid(xs, 0)


@functools.lru_cache(maxsize=2)
def _network(vgg_path: str, stamp, warmup: str, xdip: tuple, kdip: tuple) -> Network:
    del stamp                               # part of the cache key only: a rewritten file is read again
    vgg = None
    if vgg_path:
        params, _ = vgg19.load(vgg_path)
        vgg = jax.tree_util.tree_map(jnp.asarray, params)
    return Network(vgg=vgg, warmup_z=None if not warmup else jnp.asarray(read_warmup_kernel(warmup)),
                   xdip_fields=xdip, kdip_fields=kdip)


def load_network(options: Options) -> Network:
    """The VGG19 weights (if any), the warm-up z and the DIPs' configs."""
    path, stamp = "", None
    if options.vgg19:
        path = os.path.abspath(os.path.expanduser(options.vgg19))
        if not os.path.isfile(path):
            raise ValueError(f"solver 'bks_generic': no VGG19 file {path} (convert torchvision's with python -m "
                             f"checkpoints_convert.metrics vgg19 vgg19-dcbb9e9d.pth vgg19.msgpack)")
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
    return _network(path, stamp, options.warmup_kernel, (options.dip_channels, options.dip_skip, options.dip_levels),
                    (options.kdip_nf, options.kdip_blocks))


SOLVER = base.Solver("bks_generic", Options, init=init, update=update, draw=draw, result=result, kind="iterative",
                     grid=grid, check=check, network=load_network)
