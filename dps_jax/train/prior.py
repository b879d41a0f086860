"""Train an ADM UNet as a DDPM prior (epsilon prediction, L_simple) with optax and an EMA of the weights.

    python -m dps_jax.train.prior --config=configs/train/fashion_mnist.py --workdir=runs/fmnist

Checkpoints `workdir/state.msgpack` every few minutes (atomic) and resumes from it; exports the EMA
weights as a dps_jax checkpoint `workdir/ema.msgpack` (the format `checkpoints_convert` writes).
"""

from __future__ import annotations

import os
import sys
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dps_jax import io, schedule
from dps_jax.train import common as training
from dps_jax.models.checkpoint import save_checkpoint
from dps_jax.models.unet import UNet, UNetConfig, init_params

def make_optimizer(cfg):
    lr = optax.linear_schedule(0.0, cfg.optim.lr, max(1, cfg.optim.warmup_steps))
    return optax.chain(optax.clip_by_global_norm(cfg.optim.grad_clip),
                       optax.adamw(lr, weight_decay=cfg.optim.weight_decay))


def make_train_step(model: UNet, tx, sqrt_ac, sqrt_1m_ac, ema_decay: float):
    num_t = sqrt_ac.shape[0]

    def loss_fn(params, x0, key):
        kt, kn, kd = jax.random.split(key, 3)
        t = jax.random.randint(kt, (x0.shape[0],), 0, num_t)
        eps = jax.random.normal(kn, x0.shape)
        x_t = sqrt_ac[t][:, None, None, None] * x0 + sqrt_1m_ac[t][:, None, None, None] * eps
        pred = model.apply({"params": params}, x_t, t, train=True, rngs={"dropout": kd})
        return jnp.mean(jnp.square(pred - eps))

    @jax.jit
    def step(state, x0, key):
        params, ema, opt_state, n = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x0, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # EMA with warm-up, so that short runs are not dominated by the random initialisation.
        decay = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        return (params, ema, opt_state, n + 1), loss

    return step


def train(cfg, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    model_config = UNetConfig.from_dict(dict(cfg.model))
    model = UNet(model_config)
    tables = schedule.build_tables(cfg.diffusion.schedule, cfg.diffusion.num_timesteps)
    tx = make_optimizer(cfg)
    key = jax.random.PRNGKey(cfg.seed)
    def fresh_state():
        params = init_params(model_config, jax.random.fold_in(key, 1))
        return params, params, tx.init(params), jnp.zeros((), jnp.int32)

    state_path = os.path.join(workdir, "state.msgpack")
    if os.path.exists(state_path):
        state = training.restore_state(state_path, jax.eval_shape(fresh_state))     # shapes only: no init is compiled
        print(f"resumed from {state_path} at step {int(state[3])}", flush=True)
    else:
        state = fresh_state()
    step_fn = make_train_step(model, tx, jnp.asarray(tables.sqrt_alphas_cumprod, jnp.float32),
                              jnp.asarray(tables.sqrt_one_minus_alphas_cumprod, jnp.float32),
                              cfg.optim.ema_decay)
    data = training.training_images(cfg)
    rng = np.random.default_rng(cfg.seed + int(state[3]))
    print(f"{len(data)} training images of shape {data.shape[1:]}; model {model_config.to_json()}", flush=True)

    def save(state):
        io.atomic_write(state_path, flax.serialization.to_bytes(state))
        # The EMA weights in float16 storage: what ships with the package (a few MB).
        save_checkpoint(os.path.join(workdir, "ema.msgpack"), jax.device_get(state[1]), model_config,
                        extra={"step": int(state[3]), "var_type": "fixed_large",
                               "schedule": cfg.diffusion.schedule, "num_timesteps": cfg.diffusion.num_timesteps},
                        dtype=np.float16)

    def step(state):
        return step_fn(state, training.random_batch(rng, data, cfg.batch_size),
                       jax.random.fold_in(key, int(state[-1])))

    t_start = time.time()
    state, losses = training.loop(state, cfg, step, save, lambda m: f"loss {m[0]:.4f}")
    print(f"done: {int(state[3])} steps, final loss (mean of last {cfg.log_every}) "
          f"{np.mean(losses[-cfg.log_every:]) if losses else float('nan'):.4f}, "
          f"{(time.time() - t_start) / 60:.1f} min this run", flush=True)


cli = training.command(train, __doc__, "dps_jax.train.prior")

if __name__ == "__main__":
    sys.exit(cli(sys.argv))
