"""Train a KernelWizard (the blur model of nonlinear deblurring) on synthetic camera-shake blur.

    python -m dps_jax.train.kernel --config=configs/train/kernel_wizard_fmnist.py --workdir=runs/kernel

The published model (GOPRO_wVAE.pth) learnt GOPRO's pairs: sharp frames and the average of the frames a
moving camera saw around them. Here each training pair is made the same way from one sharp image: the
image seen along a random camera path (a translation along a curved line, a rotation about the centre
and a zoom, so the blur varies across the image) averaged over `frames` poses. Training as Tran et al.
2021: the extractor encodes the pair as mu, sigma; z = mu + sigma eps; the adapter re-blurs the sharp
image with z; loss = Charbonnier distance to the blurry image (summed over pixels) + kl_weight x the KL
divergence of N(mu, sigma^2) from N(0, I) (summed over z), so that z ~ N(0, I) draws plausible blurs.

Checkpoints `workdir/state.msgpack` (atomic) and resumes from it; writes `workdir/kernel_wizard.msgpack`
(float16, readable by `models.kernel_wizard.load`) and, at the end, `workdir/eval.json`: on `eval_images`
held-out test images and fresh blurs, how well the model re-blurs from the encoded z (PSNR to the true blurry image,
against the PSNR of the sharp image itself), and how far blurs drawn from z ~ 1.2 N(0, I) are from the sharp
image and from each other (two draws for the same image).
"""

from __future__ import annotations

import json
import os
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.ndimage import map_coordinates

from dps_jax import data as data_lib
from dps_jax import io
from dps_jax.train import common as training
from dps_jax.models import checkpoint
from dps_jax.models import kernel_wizard as kw

def camera_shake(key, x, frames: int = 16, max_shift: float = 6.0, max_angle: float = 0.15,
                 max_zoom: float = 0.1):
    """x (H, W, C) averaged over `frames` poses of a random camera path: (H, W, C).

    The path: a translation of length U(0, max_shift) pixels in a random direction, bent sideways by a
    quadratic term of up to half its length, a rotation about the centre growing to U(-a, a) radians and a
    zoom to 1 + U(-z, z) over the exposure (both centred on the middle frame). Borders repeat the edge.
    """
    h, w, c = x.shape
    k = jax.random.split(key, 5)
    theta = jax.random.uniform(k[0], (), maxval=2 * jnp.pi)
    length = jax.random.uniform(k[1], (), maxval=max_shift)
    bend = 0.5 * length * jax.random.uniform(k[2], (), minval=-1.0, maxval=1.0)
    angle, zoom = jax.random.uniform(k[3], (2,), minval=-1.0, maxval=1.0) * jnp.array([max_angle, max_zoom])
    t = jnp.linspace(-0.5, 0.5, frames)
    u, v = jnp.array([jnp.cos(theta), jnp.sin(theta)]), jnp.array([-jnp.sin(theta), jnp.cos(theta)])
    shift = length * t[:, None] * u + bend * (t[:, None] ** 2 - 1.0 / 12) * v        # (frames, 2)
    rows, cols = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")

    def frame(ti, si):
        a, s = angle * ti, 1.0 + zoom * ti
        r = (jnp.cos(a) * rows - jnp.sin(a) * cols) / s + (h - 1) / 2 + si[0]
        q = (jnp.sin(a) * rows + jnp.cos(a) * cols) / s + (w - 1) / 2 + si[1]
        return jnp.stack([map_coordinates(x[..., ch], [r, q], order=1, mode="nearest") for ch in range(c)], -1)

    return jnp.mean(jax.vmap(frame)(t, shift), 0)


def make_pairs(key, sharp, cfg):
    """(sharp, blurred) batches in [0, 1] for sharp (N, H, W, C)."""
    keys = jax.random.split(key, sharp.shape[0])
    blur = lambda k, x: camera_shake(k, x, cfg.blur.frames, cfg.blur.max_shift, cfg.blur.max_angle, cfg.blur.max_zoom)
    return sharp, jax.vmap(blur)(keys, sharp)


def loss_terms(model, params, sharp, blurred, eps, charbonnier_eps: float = 1e-6):
    """Per-batch mean of the Charbonnier sum and of the KL sum."""
    fake, mu, sigma = model.apply({"params": params}, sharp, blurred, eps)
    pixel = jnp.sum(jnp.sqrt((fake - blurred) ** 2 + charbonnier_eps)) / sharp.shape[0]
    kl = jnp.sum(mu ** 2 + sigma ** 2 - jnp.log(1e-8 + sigma ** 2) - 1) / sharp.shape[0]
    return pixel, kl


def make_train_step(model, tx, cfg):
    def loss_fn(params, sharp, key, ramp):
        k_blur, k_eps = jax.random.split(key)
        sharp, blurred = make_pairs(k_blur, sharp, cfg)
        eps = ramp * jax.random.normal(k_eps, (sharp.shape[0],) + model.config.latent_shape(sharp.shape[1:]))
        pixel, kl = loss_terms(model, params, sharp, blurred, eps)
        return pixel + ramp * cfg.kl_weight * kl, (pixel, kl)

    @jax.jit
    def step(state, sharp, key):
        params, opt_state, n = state
        # The VAE is switched on late and gradually: for kl_start steps z = mu and no KL (a deterministic
        # code of the blur, as the reference fine-tunes a model trained without the VAE), then the sampling
        # noise and the KL weight grow from 0 over kl_warmup steps. With even a small KL weight from the
        # start the code collapsed (mu -> 0, z ignored: one average blur for every pair).
        ramp = jnp.clip((n - cfg.kl_start) / max(cfg.kl_warmup, 1), 0.0, 1.0)
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, sharp, key, ramp)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, n + 1), aux

    return step


def psnr(a, b):
    """PSNR of [0, 1] images, per image: (N,)."""
    mse = jnp.mean((a - b) ** 2, axis=(1, 2, 3))
    return 10 * jnp.log10(1.0 / jnp.maximum(mse, 1e-12))


def evaluate(model, params, cfg, images) -> dict:
    """Figures on `images` (N, H, W, C) in [0, 1] with fresh blurs: re-blurring from the encoded z, and
    blurs drawn from the prior of z."""
    @jax.jit
    def psnrs(params, images):
        key = jax.random.PRNGKey(cfg.seed + 10_000)
        sharp, blurred = make_pairs(key, images, cfg)
        mu, _ = model.apply({"params": params}, sharp, blurred, method=kw.KernelWizard.encode)
        blur = lambda z: model.apply({"params": params}, sharp, z, method=kw.KernelWizard.adapt_kernel)
        drawn = [blur(1.2 * jax.random.normal(jax.random.fold_in(key, i), mu.shape)) for i in (1, 2)]
        return [jnp.mean(psnr(a, b)) for a, b in
                ((blur(mu), blurred), (sharp, blurred), (drawn[0], sharp), (drawn[0], drawn[1]))]

    names = ("psnr_reblurred_vs_blurred", "psnr_sharp_vs_blurred", "psnr_drawn_vs_sharp", "psnr_drawn_vs_drawn")
    return {"images": int(len(images)), **{k: float(v) for k, v in zip(names, psnrs(params, jnp.asarray(images)))}}


def train(cfg, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    config = kw.KernelWizardConfig(**cfg.model.to_dict())
    model = kw.KernelWizard(config)
    tx = optax.adam(optax.cosine_decay_schedule(cfg.optim.lr, cfg.num_steps, alpha=0.05), b2=0.99)
    key = jax.random.PRNGKey(cfg.seed)

    state_path = os.path.join(workdir, "state.msgpack")
    state = training.resume_or_start(state_path, kw.param_shapes(config),
                                     lambda: kw.init_params(jax.random.fold_in(key, 1), config), tx)
    step_fn = make_train_step(model, tx, cfg)
    data = (training.training_images(cfg) + 1.0) / 2.0
    rng = np.random.default_rng(cfg.seed + int(state[2]))
    print(f"{len(data)} training images of shape {data.shape[1:]}; KernelWizard {kw.num_params(state[0]):,} "
          f"params, z {config.latent_shape(data.shape[1:])}", flush=True)

    def save(state):
        io.atomic_write(state_path, flax.serialization.to_bytes(state))
        checkpoint.save_checkpoint(os.path.join(workdir, "kernel_wizard.msgpack"), jax.device_get(state[0]),
                                   config, extra={"step": int(state[2]), "trained_by": "dps_jax.train_kernel"},
                                   dtype=np.float16, fmt=kw.FORMAT)

    def step(state):
        return step_fn(state, training.random_batch(rng, data, cfg.batch_size),
                       jax.random.fold_in(key, int(state[-1])))

    state, _ = training.loop(state, cfg, step, save, lambda m: f"charbonnier {m[0]:.2f} kl {m[1]:.2f}")
    # Held out: Fashion-MNIST's test split; for an image folder, its last images (seen in training).
    held_out = (data_lib.fashion_mnist("test", cfg.data.root, cfg.data.image_size)[:cfg.eval_images] + 1.0) / 2.0 \
        if cfg.data.name == "fashion_mnist" else data[-cfg.eval_images:]
    figures = evaluate(model, state[0], cfg, held_out)
    io.atomic_write(os.path.join(workdir, "eval.json"), json.dumps(figures, indent=1).encode())
    print("held-out: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)


cli = training.command(train, __doc__, "dps_jax.train.kernel")

if __name__ == "__main__":
    sys.exit(cli(sys.argv))
