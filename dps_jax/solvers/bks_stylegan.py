"""BKS-styleGAN2 (Tran et al. 2021, "Explore image deblurring via encoded blur kernel space", its domain-specific
deblurring; VinAIResearch/blur-kernel-space-exploring `models/dsd/`): blind deblurring with a StyleGAN2 image
prior and the KernelWizard's blur-kernel space, as an iterative solver of nonlinear deblurring (the DPS paper's
Table 4 row). It is blind: it uses the operator's blur model F (the KernelWizard's weights), never its z.
Images are in [0, 1] inside, as the reference's; y and the result in [-1, 1], as every solver's.

The unknowns: a W+ latent w (1, L, D), kept on its initial sphere row by row, in a Gaussianised space
(the generator reads lrelu_0.2(w * std + mean), `mean` / `std` fitted to LeakyReLU(5) of mapped latents); the
first `trainable_noise` noise maps (also on their spheres); and the weights of a kernel DIP whose output, from
a fixed noise input perturbed by reg_noise_std every iteration, is the blur latent z. The loss at (w, noise, k):

    100 mean((F(G(w), z) - y)^2) + 0.1 geocross(w_in) + 1e-4 |z|           (the reference's `100*L2+0.1*GEOCROSS`)

The schedule (one row of the grid per iteration): the DIP warmed up towards a warm-up z (MSE, Adam); then per
epoch (`steps` epochs) `x_iters` Adam steps on (w, noise) with the one-cycle learning rate `linear1cycledrop` and
the spherical projection, and `k_iters` Adam steps on the DIP (step decay 0.7 five times over the run); the
answer is G(w) at the lowest loss seen at the end of a phase (clamped to [0, 1]). Posterior "samples" are
restarts from independent draws (w, noise maps, DIP weights and input), as for ER / HIO.

What the reference fixes that dps_jax makes options: the generator (`generator`, a converted rosinality
checkpoint: `python -m checkpoints_convert.stylegan2`; "" = the 32 x 32 Fashion-MNIST one that ships), the
warm-up z (`warmup_kernel`: its experiments/pretrained/kernel.pth as `.npy`; "" = zeros, the VAE prior's mean,
for a KernelWizard without one), the Gaussian fit's sample count (its 1,000,000). The DIP's input is
(32 h, 32 w, 64) for a z of h x w (the reference's 64 x 64 gives its 2 x 2).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dps_jax.models import kernel_dip, kernel_wizard, stylegan2
from dps_jax.operators import nonlinear_blur
from dps_jax.solvers import base

WARMUP, X_PHASE, K_PHASE = 0, 1, 2
MAX_WARMUP_KERNEL_BYTES = 1 << 24            # a warm-up z file: (h, w, kernel_dim) floats, a few KB in practice


@flax.struct.dataclass
class Options:
    """The reference's options/domain_specific_deblur/stylegan2.yml (and the weights its loss hard-codes)."""
    x_lr: float = 0.2
    k_lr: float = 5e-4
    reg_noise_std: float = 1e-3
    l2_weight: float = 100.0
    geocross_weight: float = 0.1
    kernel_norm_weight: float = 1e-4          # hard-coded in the reference's loss
    eps: float = 1e-15
    steps: int = base.static_field(25)        # epochs (num_epochs)
    warmup_iters: int = base.static_field(150)
    x_iters: int = base.static_field(300)
    k_iters: int = base.static_field(200)
    trainable_noise: int = base.static_field(5)
    generator: str = base.static_field("")     # a converted StyleGAN2 generator (.msgpack); "" = the shipped one
    warmup_kernel: str = base.static_field("")  # the DIP's warm-up z (.npy, (h, w, kernel_dim) or NCHW); "" = zeros
    fit_samples: int = base.static_field(1_000_000)   # mapped latents of the Gaussian fit
    dip_nf: int = base.static_field(64)
    dip_blocks: int = base.static_field(6)

    def check(self) -> None:
        base.check_int("steps", self.steps, 1)
        for name in ("warmup_iters", "x_iters", "k_iters", "trainable_noise"):
            base.check_int(name, getattr(self, name), 0)
        base.check_int("fit_samples", self.fit_samples, 2)
        base.check_int("dip_nf", self.dip_nf, 1)
        base.check_int("dip_blocks", self.dip_blocks, 0)
        if self.x_iters + self.k_iters < 1:
            raise ValueError(f"x_iters + k_iters must be >= 1, got {self.x_iters} + {self.k_iters}")
        for name in ("x_lr", "k_lr", "reg_noise_std", "l2_weight", "geocross_weight", "kernel_norm_weight", "eps"):
            base.check_finite_number(name, getattr(self, name))


@flax.struct.dataclass
class Network:
    """The solver's own networks: the generator's weights and its Gaussian fit (mean, std: (D,)), the warm-up z
    (h, w, kernel_dim) or None (zeros); the configs are part of the program."""
    generator: Any
    fit_mean: Any
    fit_std: Any
    warmup_z: Any = None
    config: stylegan2.StyleGAN2Config = flax.struct.field(pytree_node=False, default=None)
    dip_config_fields: tuple = flax.struct.field(pytree_node=False, default=(64, 6))     # (nf, n_blocks)


def geocross(latent):
    """The reference's GEOCROSS on a W+ latent (N, L, D): the mean squared geodesic angle between every pair of
    rows, times D, over (L - 2) / 2 (its constants 512 and 6.0 for StyleGAN2's 14 x 512), summed over N."""
    n, rows, dim = latent.shape
    x, y = latent[:, None, :, :], latent[:, :, None, :]
    a = jnp.sqrt(jnp.sum((x - y) ** 2, -1) + 1e-9)
    b = jnp.sqrt(jnp.sum((x + y) ** 2, -1) + 1e-9)
    d = 2 * jnp.arctan2(a, b)
    return jnp.sum(jnp.mean(d ** 2 * dim, axis=(1, 2)) / ((rows - 2) / 2))


def one_cycle_drop(step, steps):
    """The reference's `linear1cycledrop` learning-rate factor at `step` of `steps`: up from 0.1 to 1 and back
    over the first 90%, then down to 0.001."""
    step, top = np.float64(step), 0.9 * steps
    if step < top:
        return (9 * (1 - abs(step / top - 0.5) * 2) + 1) / 10
    return 0.1 + (step - top) / (0.1 * steps) * (0.001 - 0.1)


def radius(p):
    """The norm the reference's spherical optimiser keeps: of each row of a latent (N, L, D), of a noise map (H, W)."""
    axes = (-1,) if p.ndim == 3 else tuple(range(p.ndim))
    return jnp.sqrt(jnp.sum(p ** 2, axis=axes, keepdims=True) + 1e-9)


ADAM = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)      # torch.optim.Adam's defaults, as the reference's


def adam(params, grads, state, lr):
    """One torch.optim.Adam step (bias-corrected, eps outside the root) at learning rate lr: (params, state)."""
    updates, state = ADAM.update(grads, state)
    return jax.tree_util.tree_map(lambda p, u: p - lr * u, params, updates), state


def gen_image(net: Network, w, noises):
    """G(w) in [0, 1] for the Gaussianised latent w (1, L, D) and the generator's noise maps: (image, w_in)."""
    w_in = jax.nn.leaky_relu(w * net.fit_std + net.fit_mean, 0.2)
    g = stylegan2.synthesis(net.generator, net.config, w_in, list(noises))
    return (g + 1) / 2, w_in


def dip_config(net: Network, kernel_dim: int) -> kernel_dip.KernelDIPConfig:
    nf, blocks = net.dip_config_fields
    return kernel_dip.KernelDIPConfig(nf=nf, n_blocks=blocks, kernel_dim=kernel_dim)


def loss(net: Network, options: Options, w, noises, kdip, dip_input, y01, kw_params, kw_config):
    """The reference's loss at (w, noise maps, DIP weights) for y01 (1, H, W, C) in [0, 1]: (loss, (image, z))."""
    image, w_in = gen_image(net, w, noises)
    z = kernel_dip.forward(kdip, dip_config(net, kw_config.kernel_dim), dip_input)
    blurred = kernel_wizard.KernelWizard(kw_config).apply({"params": kw_params}, image, z,
                                                          method=kernel_wizard.KernelWizard.adapt_kernel)
    l2 = jnp.sum(jnp.maximum(jnp.mean((blurred - y01) ** 2, axis=(1, 2, 3)), options.eps))
    total = (options.l2_weight * l2 + options.geocross_weight * geocross(w_in)
             + options.kernel_norm_weight * jnp.sqrt(jnp.sum(z ** 2)))
    return total, (image, z)


# ---- the solver ------------------------------------------------------------------------------------

def blind_blur_only(solver: str, problem) -> None:
    """The BKS solvers' refusal of any operator but the KernelWizard's blur."""
    if problem.op.name != "nonlinear_blur":
        raise ValueError(f"solver {solver!r} deblurs blindly in the KernelWizard's blur space: it takes the "
                         f"nonlinear_blur operator (task nonlinear_deblur) only; the operator is {problem.op.name!r}")


def check(problem, options) -> None:
    blind_blur_only("bks_stylegan", problem)


def initial_state(w, noises, kdip, dip_zk, trainable: int, image_shape, z_shape):
    """The state from given unknowns (what `init` draws; a test passes the reference's): w (1, L, D), one noise
    map (H, W) per layer, DIP weights and its fixed input dip_zk (1, 32 h, 32 w, 64); the best image (1, H, W, C)
    and z (1, h, w, kernel_dim) zeros until a phase ends."""
    x_vars = {"w": w, "noise": list(noises[:trainable])}
    return {"x": x_vars, "fixed_noise": list(noises[trainable:]), "radii": jax.tree_util.tree_map(radius, x_vars),
            "kdip": kdip, "x_adam": ADAM.init(x_vars), "k_adam": ADAM.init(kdip), "dip_zk": dip_zk,
            "best_loss": jnp.asarray(jnp.inf, jnp.float32), "best_image": jnp.zeros((1,) + tuple(image_shape)),
            "best_z": jnp.zeros((1,) + tuple(z_shape))}


def init(key, problem, net: Network, options: Options, image_shape):
    """Fresh unknowns as the reference draws them: w and the noise maps N(0, I), the DIP as torch initialises
    it, its input U(0, 0.1)."""
    _, kw_config = nonlinear_blur.blur_model(problem.op.data)
    config = net.config
    if tuple(image_shape) != (config.size, config.size, config.image_channels):
        raise ValueError(f"solver 'bks_stylegan': the generator makes {config.size} x {config.size} x "
                         f"{config.image_channels} images; the problem's are {tuple(image_shape)}")
    h, w_, kdim = kw_config.latent_shape(tuple(image_shape))
    k_w, k_noise, k_dip, k_in = jax.random.split(key, 4)
    w = jax.random.normal(k_w, (1, config.n_latent, config.style_dim), jnp.float32)
    noises = [jax.random.normal(jax.random.fold_in(k_noise, i), s, jnp.float32)
              for i, s in enumerate(stylegan2.noise_shapes(config))]
    kdip = kernel_dip.init_params(k_dip, dip_config(net, kdim))
    dip_zk = jax.random.uniform(k_in, (1, 32 * h, 32 * w_, kernel_dip.INPUT_CHANNELS), jnp.float32) * 0.1
    return initial_state(w, noises, kdip, dip_zk, options.trainable_noise, image_shape, (h, w_, kdim))


def draw(key, state, problem, options):
    """The perturbation of the DIP's input, N(0, I) of its shape."""
    return {"dip": jax.random.normal(key, state["dip_zk"].shape, jnp.float32)}


def warmup_target(net: Network, shape):
    return jnp.zeros(shape, jnp.float32) if net.warmup_z is None else jnp.reshape(net.warmup_z, shape)


def update(state, c, noise, problem, net: Network, options: Options):
    """One iteration of row c = {"phase", "lr" (the schedule's factor), "log"}: Adam on the DIP towards the
    warm-up z (warm-up: the MSE of z to it), on (w, noise) with the spherical projection (x phase), or on the
    DIP (k phase), each differentiating only what it moves; at the end of a phase the best (loss, image, z)
    so far. The record's "loss" is the phase's loss."""
    kw_params, kw_config = nonlinear_blur.blur_model(problem.op.data)
    dip_input = state["dip_zk"] + options.reg_noise_std * noise["dip"]
    y01 = (problem.y[None] + 1) / 2

    def objective(xv, k):
        return loss(net, options, xv["w"], xv["noise"] + state["fixed_noise"], k, dip_input, y01, kw_params,
                    kw_config)

    def keep_best(state, value, image, z):
        better = c["log"] & (value < state["best_loss"])
        return {**state, "best_loss": jnp.where(better, value, state["best_loss"]),
                "best_image": jnp.where(better, image, state["best_image"]),
                "best_z": jnp.where(better, z, state["best_z"])}

    def warm(state):
        target = warmup_target(net, state["best_z"].shape)
        dconfig = dip_config(net, kw_config.kernel_dim)
        value, g = jax.value_and_grad(
            lambda k: jnp.mean((kernel_dip.forward(k, dconfig, dip_input) - target) ** 2))(state["kdip"])
        kdip, k_adam = adam(state["kdip"], g, state["k_adam"], options.k_lr * c["lr"])
        return {**state, "kdip": kdip, "k_adam": k_adam}, value

    def x_step(state):
        (value, (image, z)), g = jax.value_and_grad(objective, has_aux=True)(state["x"], state["kdip"])
        x, x_adam = adam(state["x"], g, state["x_adam"], options.x_lr * c["lr"])
        x = jax.tree_util.tree_map(lambda p, r: p / radius(p) * r, x, state["radii"])    # back onto the spheres
        return keep_best({**state, "x": x, "x_adam": x_adam}, value, image, z), value

    def k_step(state):
        (value, (image, z)), g = jax.value_and_grad(objective, argnums=1, has_aux=True)(state["x"], state["kdip"])
        kdip, k_adam = adam(state["kdip"], g, state["k_adam"], options.k_lr * c["lr"])
        return keep_best({**state, "kdip": kdip, "k_adam": k_adam}, value, image, z), value

    # A switch: each phase differentiates only what it moves (one program with selects took every gradient at
    # every iteration, the DIP's among them).
    # Only the phases the grid has are compiled.
    present = [f for f, n in ((warm, options.warmup_iters), (x_step, options.x_iters), (k_step, options.k_iters)) if n]
    if len(present) == 1:
        state, value = present[0](state)
    else:
        state, value = jax.lax.switch(c["phase"], (warm, x_step, k_step), state)
    return state, {"loss": value}


def result(state):
    """The best G(w), clamped to [0, 1], as an image (H, W, C) in [-1, 1]."""
    return 2 * jnp.clip(state["best_image"][0], 0, 1) - 1


def grid(options: Options, schedule) -> base.Grid:
    """One row per iteration: the warm-up, then per epoch the x phase and the k phase; "lr" is the learning
    rate's factor (one-cycle for x over all x steps; 0.7 every fifth of the k steps), "log" marks a phase's last
    iteration. One generator evaluation per iteration after the warm-up."""
    x_total = options.steps * options.x_iters
    decay_every = max(options.steps * options.k_iters // 5, 1)
    phase, lr, log = [WARMUP] * options.warmup_iters, [1.0] * options.warmup_iters, [False] * options.warmup_iters
    n_x = n_k = 0
    for _ in range(options.steps):
        for j in range(options.x_iters):
            phase.append(X_PHASE), lr.append(one_cycle_drop(n_x, x_total)), log.append(j == options.x_iters - 1)
            n_x += 1
        for j in range(options.k_iters):
            phase.append(K_PHASE), lr.append(0.7 ** (n_k // decay_every)), log.append(j == options.k_iters - 1)
            n_k += 1
    xs = {"phase": jnp.asarray(phase, jnp.int32), "lr": jnp.asarray(np.float32(lr)), "log": jnp.asarray(log)}
    return base.Grid(xs, options.steps * (options.x_iters + options.k_iters))


def gaussian_fit(params, config: stylegan2.StyleGAN2Config, samples: int, chunk: int = 10_000):
    """(mean, std) over `samples` latents z ~ N(0, I) of LeakyReLU(5)(mapping(z)), each (D,): the reference's fit
    (std unbiased), from jax.random.PRNGKey(0) in chunks."""
    run = jax.jit(lambda z: jax.nn.leaky_relu(stylegan2.mapping(params, config, z), 5.0))
    total, total_sq, done, key = 0.0, 0.0, 0, jax.random.PRNGKey(0)
    while done < samples:
        n = min(chunk, samples - done)
        out = np.asarray(run(jax.random.normal(jax.random.fold_in(key, done), (n, config.style_dim))), np.float64)
        total, total_sq, done = total + out.sum(0), total_sq + (out ** 2).sum(0), done + n
    mean = total / samples
    var = np.maximum(total_sq - samples * mean ** 2, 0.0) / (samples - 1)
    return np.float32(mean), np.float32(np.sqrt(var))


def read_warmup_kernel(path: str):
    """The warm-up z of a `.npy` file (no pickles; at most MAX_WARMUP_KERNEL_BYTES): (h, w, kernel_dim), or the
    reference's NCHW (1, kernel_dim, h, w)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ValueError(f"bks_stylegan warmup_kernel: no file {path}")
    if os.path.getsize(path) > MAX_WARMUP_KERNEL_BYTES:
        raise ValueError(f"bks_stylegan warmup_kernel: {path} is {os.path.getsize(path)} bytes; a warm-up z is at "
                         f"most {MAX_WARMUP_KERNEL_BYTES}")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"bks_stylegan warmup_kernel: {path} is not a .npy array ({e})") from None
    if z.ndim == 4 and z.shape[0] == 1:
        z = z[0].transpose(1, 2, 0)
    if z.ndim != 3 or not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
        raise ValueError(f"bks_stylegan warmup_kernel: {path} holds {z.dtype} {z.shape}; expected finite floats "
                         f"(h, w, kernel_dim) or (1, kernel_dim, h, w)")
    return np.float32(z)


@functools.lru_cache(maxsize=2)
def _network(path: str, stamp, warmup: str, fit_samples: int, dip: tuple) -> Network:
    del stamp                              # part of the cache key only: a rewritten file is read again
    params, config = stylegan2.load(path)
    mean, std = gaussian_fit(params, config, fit_samples)
    return Network(generator=params, fit_mean=jnp.asarray(mean), fit_std=jnp.asarray(std),
                   warmup_z=None if not warmup else jnp.asarray(read_warmup_kernel(warmup)), config=config,
                   dip_config_fields=dip)


def load_network(options: Options) -> Network:
    """The generator of `options.generator` ("" = the shipped 32 x 32 Fashion-MNIST one) with its Gaussian fit,
    and the warm-up z."""
    path = os.path.abspath(os.path.expanduser(options.generator or stylegan2.SHIPPED_GENERATOR))
    if not os.path.isfile(path):
        raise ValueError(f"solver 'bks_stylegan': no generator file {path}")
    stat = os.stat(path)
    return _network(path, (stat.st_mtime_ns, stat.st_size), options.warmup_kernel, options.fit_samples,
                    (options.dip_nf, options.dip_blocks))


SOLVER = base.Solver("bks_stylegan", Options, init=init, update=update, draw=draw, result=result, kind="iterative",
                     grid=grid, check=check, network=load_network)
