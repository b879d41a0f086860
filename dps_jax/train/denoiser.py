"""Train a DnCNN denoiser (the prior of PnP-ADMM) on the same data as the diffusion prior.

    python -m dps_jax.train.denoiser --config=configs/train/dncnn_fmnist.py --workdir=runs/dncnn

Blind Gaussian denoising as in Zhang et al. 2017 (DnCNN-B): each training image in [0, 1] gets noise of a
std drawn uniformly from [0, sigma_max], the loss is the mean squared error of the denoised image. Batch
norm statistics are kept as running averages. Checkpoints `workdir/state.msgpack` (atomic) and resumes from
it; writes the denoiser as `workdir/dncnn.msgpack` (float16, the layout `models/dncnn.py` reads).
"""

from __future__ import annotations

import os
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dps_jax.models import dncnn
from dps_jax import io
from dps_jax.train import common as training

def make_train_step(model: dncnn.DnCNN, tx, sigma_max: float):
    def loss_fn(params, batch_stats, x, key):
        k_s, k_n = jax.random.split(key)
        sigma = jax.random.uniform(k_s, (x.shape[0], 1, 1, 1), maxval=sigma_max)
        noisy = x + sigma * jax.random.normal(k_n, x.shape)
        out, new = model.apply({"params": params, "batch_stats": batch_stats}, noisy, train=True,
                               mutable=["batch_stats"])
        return jnp.mean((out - x) ** 2), new["batch_stats"]

    @jax.jit
    def step(state, x, key):
        params, batch_stats, opt_state, n = state
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state, n + 1), loss

    return step


def train(cfg, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    model = dncnn.DnCNN(depth=cfg.model.depth, channels=1, features=cfg.model.features)
    tx = optax.adam(optax.cosine_decay_schedule(cfg.optim.lr, cfg.num_steps, alpha=0.01))
    key = jax.random.PRNGKey(cfg.seed)

    def fresh_state():
        v = dncnn.init_variables(jax.random.fold_in(key, 1), cfg.model.depth, cfg.model.features, cfg.data.image_size)
        return v["params"], v["batch_stats"], tx.init(v["params"]), jnp.zeros((), jnp.int32)

    state_path = os.path.join(workdir, "state.msgpack")
    if os.path.exists(state_path):
        state = training.restore_state(state_path, jax.eval_shape(fresh_state))
        print(f"resumed from {state_path} at step {int(state[3])}", flush=True)
    else:
        state = fresh_state()
    step_fn = make_train_step(model, tx, cfg.sigma_max)
    data = (training.training_images(cfg) + 1.0) / 2.0                 # the denoiser works on [0, 1] images
    rng = np.random.default_rng(cfg.seed + int(state[3]))
    print(f"{len(data)} training images of shape {data.shape[1:]}; DnCNN depth {cfg.model.depth}, "
          f"{cfg.model.features} features", flush=True)

    def save(state):
        io.atomic_write(state_path, flax.serialization.to_bytes(state))
        variables = {"params": jax.device_get(state[0]), "batch_stats": jax.device_get(state[1])}
        io.atomic_write(os.path.join(workdir, "dncnn.msgpack"), dncnn.to_bytes(variables, np.float16))

    def step(state):
        return step_fn(state, training.random_batch(rng, data, cfg.batch_size),
                       jax.random.fold_in(key, int(state[-1])))

    state, losses = training.loop(state, cfg, step, save, lambda m: f"mse {m[0]:.5f}")
    print(f"done: {int(state[3])} steps, mse (mean of last {cfg.log_every}) "
          f"{np.mean(losses[-cfg.log_every:]) if losses else float('nan'):.5f}", flush=True)


cli = training.command(train, __doc__, "dps_jax.train.denoiser")

if __name__ == "__main__":
    sys.exit(cli(sys.argv))
