"""Train a small StyleGAN2 generator (BKS-styleGAN2's image prior for the shipped 32 x 32 setting).

    python -m dps_jax.train.stylegan2 --config=configs/train/stylegan2_fmnist.py --workdir=runs/stylegan2

The generator is `dps_jax.models.stylegan2` (rosinality's layout and initialisation, so the trained file loads
wherever a converted one does); the discriminator lives here, StyleGAN2's residual one (Karras et al. 2020, as
rosinality's `Discriminator` builds it): a 1 x 1 from-RGB, per resolution a residual block (a 3 x 3, then a
blurred stride-2 3 x 3; the skip a blurred stride-2 1 x 1; the sum over sqrt 2), the minibatch standard
deviation (groups of 4, one feature), a 3 x 3 and two linear layers, every weight at equalised learning rate.
Losses: the non-saturating logistic loss for both networks and R1 on the real images every `r1_every` steps
(lazy, weighted by that interval, added to that step's D loss where rosinality takes a second D step); no path-length regulariser and no style mixing (StyleGAN2-ADA's settings
for 32 x 32 images). Adam with betas (0, 0.99), D's corrected for the lazy R1 as rosinality does. What is
exported is G's exponential moving average (half-life `ema_kimg` thousand images).

Checkpoints `workdir/state.msgpack` (atomic) and resumes from it; writes `workdir/stylegan2.msgpack` (the
averaged generator, float16, `models.stylegan2.load`) and at the end `workdir/eval.json`: FID-FMNIST (the
shipped classifier's features) of `eval_images` samples against as many held-out test images.
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

from dps_jax import data as data_lib
from dps_jax import io
from dps_jax.models import checkpoint, stylegan2 as sg
from dps_jax.train import common as training

FIR = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0]) / 64.0       # the blur before each downsampling


# ---- the discriminator ----------------------------------------------------------------------------

def disc_shapes(config: sg.StyleGAN2Config):
    """{name: shape} of the discriminator for `config`'s size and channel table (OIHW / (out, in))."""
    width, c = config.width, config.image_channels
    shapes = {"from_rgb.weight": (width(config.size), c, 1, 1), "from_rgb.bias": (width(config.size),)}
    for i, res in enumerate(range(config.log_size, 2, -1)):
        cin, cout = width(2 ** res), width(2 ** (res - 1))
        shapes.update({f"res.{i}.conv1.weight": (cin, cin, 3, 3), f"res.{i}.conv1.bias": (cin,),
                       f"res.{i}.conv2.weight": (cout, cin, 3, 3), f"res.{i}.conv2.bias": (cout,),
                       f"res.{i}.skip.weight": (cout, cin, 1, 1)})
    c4 = width(4)
    shapes.update({"final_conv.weight": (c4, c4 + 1, 3, 3), "final_conv.bias": (c4,),
                   "final_linear.weight": (c4, c4 * 16), "final_linear.bias": (c4,),
                   "out.weight": (1, c4), "out.bias": (1,)})
    return shapes


def _conv(x, weight, stride: int = 1, pad: int = 0):
    """An equalised-learning-rate convolution: the stored N(0, 1) weight (O, I, k, k) scaled by 1 / sqrt(fan_in)."""
    w = jnp.transpose(weight, (2, 3, 1, 0)) / np.sqrt(np.prod(weight.shape[1:]))
    return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _act(x, bias):
    return jax.nn.leaky_relu(x + bias, 0.2) * np.sqrt(2.0)


def _down(x, weight, pad):
    """Blur (the FIR, padded `pad`) then a stride-2 convolution: the antialiased downsampling."""
    c = x.shape[-1]
    fir = jnp.tile(jnp.asarray(FIR, x.dtype)[:, :, None, None], (1, 1, 1, c))
    x = jax.lax.conv_general_dilated(x, fir, (1, 1), [pad, pad], dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=c)
    return _conv(x, weight, stride=2)


def minibatch_stddev(x, group: int = 4):
    """x (N, H, W, C) with one channel more: the standard deviation of each feature over groups of
    min(N, group) samples (sample n in group n % (N / G)), averaged over features and pixels."""
    n, h, w, c = x.shape
    g = min(n, group)
    if n % g:
        raise ValueError(f"the minibatch standard deviation needs a batch divisible by {g}, got {n}")
    s = jnp.sqrt(jnp.var(x.reshape(g, n // g, h, w, c), axis=0) + 1e-8).mean(axis=(1, 2, 3))   # (N / G,)
    return jnp.concatenate([x, jnp.broadcast_to(jnp.tile(s, g)[:, None, None, None], (n, h, w, 1))], axis=-1)


def discriminate(params, config: sg.StyleGAN2Config, x):
    """The logit of each image (N, size, size, C) in [-1, 1] being real: (N,)."""
    x = _act(_conv(x, params["from_rgb.weight"]), params["from_rgb.bias"])
    for i in range(config.log_size - 2):
        p = f"res.{i}"
        out = _act(_conv(x, params[f"{p}.conv1.weight"], pad=1), params[f"{p}.conv1.bias"])
        out = _act(_down(out, params[f"{p}.conv2.weight"], (2, 2)), params[f"{p}.conv2.bias"])
        x = (out + _down(x, params[f"{p}.skip.weight"], (1, 1))) / np.sqrt(2.0)
    x = _act(_conv(minibatch_stddev(x), params["final_conv.weight"], pad=1), params["final_conv.bias"])
    x = x.reshape(x.shape[0], -1)
    lin = lambda x, name: x @ (params[f"{name}.weight"] / np.sqrt(params[f"{name}.weight"].shape[1])).T
    x = _act(lin(x, "final_linear"), params["final_linear.bias"])
    return (lin(x, "out") + params["out.bias"])[:, 0]


# ---- initialisation (rosinality's) ----------------------------------------------------------------

def init_generator(rng: np.random.Generator, config: sg.StyleGAN2Config):
    """(trainable, fixed) params: weights N(0, 1) (the mapping's divided by lr_mlp), modulation biases 1, other
    biases and the noise strengths 0; fixed: the FIR kernels and the stored noise maps."""
    trainable, fixed = {}, sg.buffers(config)
    for name, shape in sg.param_shapes(config).items():
        if name in fixed:
            continue
        if name.startswith("noises."):
            fixed[name] = rng.standard_normal(shape).astype(np.float32)
        elif name.endswith("modulation.bias"):
            trainable[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias") or name.endswith("noise.weight"):
            trainable[name] = np.zeros(shape, np.float32)
        else:
            scale = 1 / config.lr_mlp if name.startswith("style.") else 1.0
            trainable[name] = (scale * rng.standard_normal(shape)).astype(np.float32)
    return trainable, fixed


def init_discriminator(rng: np.random.Generator, config: sg.StyleGAN2Config):
    return {k: (np.zeros(s, np.float32) if k.endswith(".bias") else rng.standard_normal(s).astype(np.float32))
            for k, s in disc_shapes(config).items()}


# ---- training -------------------------------------------------------------------------------------

class _Optimisers:
    """One optimiser state for {"g", "d", "g_ema"}: Adam on G and D (D's corrected for lazy R1), none on the
    average (what `training.resume_or_start` needs: an `init`)."""

    def __init__(self, cfg):
        c = cfg.r1_every / (cfg.r1_every + 1)
        self.g = optax.adam(cfg.optim.lr, b1=0.0, b2=0.99, eps=1e-8)
        self.d = optax.adam(cfg.optim.lr * c, b1=0.0, b2=0.99 ** c, eps=1e-8)

    def init(self, params):
        return {"g": self.g.init(params["g"]), "d": self.d.init(params["d"])}


def fake_images(g, fixed, config: sg.StyleGAN2Config, key, n: int):
    """n samples of the generator with fresh latents and noise maps: (n, size, size, C)."""
    kz, kn = jax.random.split(key)
    noises = [jax.random.normal(jax.random.fold_in(kn, i), (n,) + s) for i, s in enumerate(sg.noise_shapes(config))]
    w = sg.mapping(g, config, jax.random.normal(kz, (n, config.style_dim)))
    return sg.synthesis({**g, **fixed}, config, jnp.repeat(w[:, None], config.n_latent, axis=1), noises)


def make_train_step(cfg, config: sg.StyleGAN2Config, fixed, tx: _Optimisers):
    """step(params, opt_state, n, real, key, r1) -> (params, opt_state, n + 1, (d_loss, g_loss, r1_penalty)):
    a D step (with the R1 term when r1), then a G step, then the average."""
    beta = 0.5 ** (cfg.batch_size / (cfg.ema_kimg * 1000.0))

    def d_loss(d, g, real, key, r1):
        fake = jax.lax.stop_gradient(fake_images(g, fixed, config, key, real.shape[0]))
        loss = jnp.mean(jax.nn.softplus(discriminate(d, config, fake)) + jax.nn.softplus(-discriminate(d, config, real)))
        if not r1:
            return loss, jnp.zeros(())
        grad_real = jax.grad(lambda x: jnp.sum(discriminate(d, config, x)))(real)
        penalty = jnp.mean(jnp.sum(grad_real ** 2, axis=(1, 2, 3)))
        return loss + cfg.r1_gamma / 2 * penalty * cfg.r1_every, penalty

    def g_loss(g, d, key, n):
        return jnp.mean(jax.nn.softplus(-discriminate(d, config, fake_images(g, fixed, config, key, n))))

    def step(params, opt_state, n, real, key, r1: bool):
        kd, kg = jax.random.split(key)
        g, d = params["g"], params["d"]
        (ld, penalty), gd = jax.value_and_grad(d_loss, has_aux=True)(d, g, real, kd, r1)
        upd, od = tx.d.update(gd, opt_state["d"], d)
        d = optax.apply_updates(d, upd)
        lg, gg = jax.value_and_grad(g_loss)(g, d, kg, real.shape[0])
        upd, og = tx.g.update(gg, opt_state["g"], g)
        g = optax.apply_updates(g, upd)
        ema = jax.tree_util.tree_map(lambda e, p: beta * e + (1 - beta) * p, params["g_ema"], g)
        return {"g": g, "d": d, "g_ema": ema}, {"g": og, "d": od}, n + 1, jnp.stack([ld, lg, penalty])

    return jax.jit(step, static_argnums=5)


def model_config(cfg) -> sg.StyleGAN2Config:
    m = cfg.model
    """StyleGAN2-ADA's channel rule: min(channel_max, channel_base / resolution) at each resolution."""
    widths = tuple((2 ** r, min(m.channel_max, m.channel_base // 2 ** r)) for r in range(2, int(np.log2(m.size)) + 1))
    return sg.StyleGAN2Config(size=m.size, style_dim=m.style_dim, n_mlp=m.n_mlp, image_channels=m.image_channels,
                              channels=widths, lr_mlp=m.lr_mlp)


def evaluate(cfg, config, g_ema, fixed, held_out) -> dict:
    """FID-FMNIST of len(held_out) samples of the averaged generator against the held-out images."""
    from dps_jax.metrics import fid

    features = fid.load_features()
    sample = jax.jit(lambda key: fake_images(g_ema, fixed, config, key, 50))
    fakes = np.concatenate([np.asarray(sample(jax.random.PRNGKey(10_000 + i)))
                            for i in range(-(-len(held_out) // 50))])[:len(held_out)]
    return {"images": int(len(held_out)), "fid_fmnist": fid.fid(features(np.clip(fakes, -1, 1)), features(held_out))}


def train(cfg, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    config = model_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    g0, fixed = init_generator(rng, config)
    d0 = init_discriminator(rng, config)
    fixed = jax.tree_util.tree_map(jnp.asarray, fixed)
    tx = _Optimisers(cfg)
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32),
                                    {"g": g0, "d": d0, "g_ema": g0})
    state_path = os.path.join(workdir, "state.msgpack")
    state = training.resume_or_start(state_path, shapes, lambda: {"g": g0, "d": d0, "g_ema": g0}, tx)
    step_fn = make_train_step(cfg, config, fixed, tx)
    data = training.training_images(cfg)
    batches = np.random.default_rng(cfg.seed + int(state[2]))
    key = jax.random.PRNGKey(cfg.seed)
    count = lambda t: sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(t))
    print(f"{len(data)} training images of shape {data.shape[1:]}; generator {count(state[0]['g']):,} params, "
          f"discriminator {count(state[0]['d']):,}", flush=True)

    def save(state):
        io.atomic_write(state_path, flax.serialization.to_bytes(state))
        params = {**jax.device_get(state[0]["g_ema"]), **jax.device_get(fixed)}
        checkpoint.save_checkpoint(os.path.join(workdir, "stylegan2.msgpack"), params, config,
                                   extra={"step": int(state[2]), "trained_by": "dps_jax.train.stylegan2"},
                                   dtype=np.float16, fmt=sg.FORMAT)

    def step(state):
        params, opt_state, n = state
        real = training.random_batch(batches, data, cfg.batch_size)
        r1 = int(n) % cfg.r1_every == 0
        params, opt_state, n, aux = step_fn(params, opt_state, n, real, jax.random.fold_in(key, int(n)), r1)
        return (params, opt_state, n), aux

    state, _ = training.loop(state, cfg, step, save, lambda m: f"d {m[0]:.3f} g {m[1]:.3f} r1 {m[2]:.3f}")
    if not cfg.eval_images:
        return
    held_out = data_lib.fashion_mnist("test", cfg.data.root, cfg.data.image_size)[:cfg.eval_images] \
        if cfg.data.name == "fashion_mnist" else data[-cfg.eval_images:]
    figures = evaluate(cfg, config, state[0]["g_ema"], fixed, held_out)
    io.atomic_write(os.path.join(workdir, "eval.json"), json.dumps(figures, indent=1).encode())
    print("held-out: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)


cli = training.command(train, __doc__, "dps_jax.train.stylegan2")

if __name__ == "__main__":
    sys.exit(cli(sys.argv))
