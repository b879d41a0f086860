"""BKS-styleGAN2 (Tran et al. 2021, "Explore image deblurring via encoded blur kernel space", its domain-specific
deblurring; VinAIResearch/blur-kernel-space-exploring `models/dsd/`): blind deblurring with a StyleGAN2 image
prior and the KernelWizard's blur-kernel space. The loop as pure functions (the solver interface comes with
issue 43's table rows); the images are in [0, 1], as the reference's.

The unknowns: a W+ latent w (1, L, D), kept on its initial sphere row by row, in a Gaussianised space
(the generator reads lrelu_0.2(w * std + mean), `mean` / `std` fitted to LeakyReLU(5) of mapped latents); the
first `trainable_noise` noise maps (also on their spheres); and the weights of a kernel DIP whose output, from
a fixed noise input perturbed by reg_noise_std every iteration, is the blur latent z. The loss at (w, noise, k):

    100 mean((F(G(w), z) - y)^2) + 0.1 geocross(w_in) + 1e-4 |z|           (the reference's `100*L2+0.1*GEOCROSS`)

with F the KernelWizard's blur. The schedule: the DIP warmed up towards a given z (MSE, Adam); then per epoch
`x_iters` Adam steps on (w, noise) with the one-cycle learning rate `linear1cycledrop` and the spherical
projection, and `k_iters` Adam steps on the DIP (step decay 0.7 five times over the run); the answer is G(w)
at the lowest loss seen at the end of a phase (clamped to [0, 1]).
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.models import kernel_dip, kernel_wizard, stylegan2


class Options(NamedTuple):
    """The reference's options/domain_specific_deblur/stylegan2.yml."""
    num_epochs: int = 25
    warmup_iters: int = 150
    x_iters: int = 300
    k_iters: int = 200
    x_lr: float = 0.2
    k_lr: float = 5e-4
    reg_noise_std: float = 1e-3
    l2_weight: float = 100.0
    geocross_weight: float = 0.1
    kernel_norm_weight: float = 1e-4          # hard-coded in the reference's loss
    eps: float = 1e-15
    trainable_noise: int = 5


class Networks(NamedTuple):
    generator: dict
    generator_config: stylegan2.StyleGAN2Config
    kernel_wizard: dict
    kernel_wizard_config: kernel_wizard.KernelWizardConfig
    kernel_dip_config: kernel_dip.KernelDIPConfig


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


def adam(params, grads, state, lr, b1=0.9, b2=0.999, eps=1e-8):
    """One torch.optim.Adam step (bias-corrected, eps outside the root): (params, state)."""
    t = state["t"] + 1
    m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    step = lambda p, m, v: p - lr * (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + eps)
    return jax.tree_util.tree_map(step, params, m, v), {"t": t, "m": m, "v": v}


def adam_state(params):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {"t": jnp.asarray(0, jnp.int32), "m": zeros, "v": zeros}


def gen_image(nets: Networks, w, noises, fit_mean, fit_std):
    """G(w) in [0, 1] for the Gaussianised latent w (1, L, D) and the generator's noise maps."""
    w_in = jax.nn.leaky_relu(w * fit_std + fit_mean, 0.2)
    g = stylegan2.synthesis(nets.generator, nets.generator_config, w_in, noises[:nets.generator_config.num_layers])
    return (g + 1) / 2, w_in


def loss(nets: Networks, options: Options, w, noises, kdip, dip_input, y, fit_mean, fit_std):
    """The reference's loss and what it logs: (loss, (image, z))."""
    image, w_in = gen_image(nets, w, noises, fit_mean, fit_std)
    z = kernel_dip.forward(kdip, nets.kernel_dip_config, dip_input)
    blurred = kernel_wizard.KernelWizard(nets.kernel_wizard_config).apply(
        {"params": nets.kernel_wizard}, image, z, method=kernel_wizard.KernelWizard.adapt_kernel)
    l2 = jnp.sum(jnp.maximum(jnp.mean((blurred - y) ** 2, axis=(1, 2, 3)), options.eps))
    total = (options.l2_weight * l2 + options.geocross_weight * geocross(w_in)
             + options.kernel_norm_weight * jnp.sqrt(jnp.sum(z ** 2)))
    return total, (image, z)


def run(nets: Networks, options: Options, y, w, noises: List, kdip: Dict, dip_zk, warmup_z, fit_mean, fit_std,
        draw: Callable[[int], jnp.ndarray], on_epoch: Callable = None):
    """The reference's loop on the blurred image y (1, H, W, C) in [0, 1] from the initial latent w, noise maps,
    DIP weights and input dip_zk (1, 64, 64, 64); `draw(i)` is the i-th standard normal perturbation of the DIP's
    input (1, 64, 64, 64). Returns {"losses": every iteration's loss, "best_image", "best_z"}."""
    n_train = options.trainable_noise
    x_vars = {"w": w, "noise": list(noises[:n_train])}
    fixed_noise = list(noises[n_train:])
    radii = jax.tree_util.tree_map(radius, x_vars)
    x_state, k_state = adam_state(x_vars), adam_state(kdip)
    k_decay_every = max(options.num_epochs * options.k_iters // 5, 1)

    def full(xv):
        return xv["noise"] + fixed_noise

    @jax.jit
    def warmup_step(kdip, k_state, dip_input):
        g = jax.grad(lambda k: jnp.mean((kernel_dip.forward(k, nets.kernel_dip_config, dip_input) - warmup_z) ** 2))(kdip)
        return adam(kdip, g, k_state, options.k_lr)

    @jax.jit
    def step(xv, x_state, kdip, k_state, dip_input, lr, on_x):
        """One iteration: the loss and its gradient in every unknown (one program for both phases), Adam on
        (w, noise) and the spherical projection if on_x, else Adam on the DIP; the other side is unchanged."""
        f = lambda xv, k: loss(nets, options, xv["w"], full(xv), k, dip_input, y, fit_mean, fit_std)
        (value, aux), (gx, gk) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(xv, kdip)
        new_x, new_x_state = adam(xv, gx, x_state, lr)
        new_x = jax.tree_util.tree_map(lambda p, r: p / radius(p) * r, new_x, radii)   # back onto the spheres
        new_k, new_k_state = adam(kdip, gk, k_state, lr)
        pick = lambda a, b: jax.tree_util.tree_map(lambda u, v: jnp.where(on_x, u, v), a, b)
        return (pick(new_x, xv), pick(new_x_state, x_state), pick(kdip, new_k), pick(k_state, new_k_state),
                value, aux)

    i = 0
    for _ in range(options.warmup_iters):
        kdip, k_state = warmup_step(kdip, k_state, dip_zk + options.reg_noise_std * draw(i))
        i += 1
    losses, best = [], {"loss": np.inf, "image": None, "z": None}
    x_steps, k_steps = options.num_epochs * options.x_iters, 0

    def log(value, aux):
        if float(value) < best["loss"]:
            best.update(loss=float(value), image=aux[0], z=aux[1])

    n_x = 0
    for epoch in range(options.num_epochs):
        for _ in range(options.x_iters):
            lr = options.x_lr * one_cycle_drop(n_x, x_steps)
            x_vars, x_state, kdip, k_state, value, aux = step(
                x_vars, x_state, kdip, k_state, dip_zk + options.reg_noise_std * draw(i), jnp.float32(lr), True)
            losses.append(float(value))
            i, n_x = i + 1, n_x + 1
        log(value, aux)
        for _ in range(options.k_iters):
            lr = options.k_lr * 0.7 ** (k_steps // k_decay_every)
            x_vars, x_state, kdip, k_state, value, aux = step(
                x_vars, x_state, kdip, k_state, dip_zk + options.reg_noise_std * draw(i), jnp.float32(lr), False)
            losses.append(float(value))
            i, k_steps = i + 1, k_steps + 1
        log(value, aux)
        if on_epoch is not None:
            on_epoch(epoch, jnp.clip(best["image"], 0, 1), best["z"])
    return {"losses": np.asarray(losses), "best_image": jnp.clip(best["image"], 0, 1), "best_z": best["z"]}
