"""Training the small prior that ships with dps_jax: a 32 x 32 Fashion-MNIST DDPM.

    python -m dps_jax.train.prior --config=configs/train/fashion_mnist.py --workdir=runs/fmnist
"""

import dataclasses

import ml_collections

from dps_jax.models.unet import preset


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(name="fashion_mnist", root="",
                                            image_size=32, channels=1))
    # The model preset `fmnist32`, a small ADM UNet: 32 -> 16 -> 8 levels, attention at 8 x 8 and in the
    # middle, dropout 0.1 (UNetConfig fields; any can be overridden, e.g. --config.model.model_channels=64).
    c.model = ml_collections.ConfigDict(dataclasses.asdict(preset("fmnist32")))
    # Epsilon prediction on the linear schedule with a fixed variance (Ho et al.'s L_simple);
    # sampling uses the fixed-large variance.
    c.diffusion = ml_collections.ConfigDict(dict(schedule="linear", num_timesteps=1000))
    c.optim = ml_collections.ConfigDict(dict(lr=2e-4, warmup_steps=200, weight_decay=0.0, grad_clip=1.0,
                                             ema_decay=0.999))
    c.batch_size = 32
    # About 2.6 h on 2 CPU cores (0.62-0.66 steps/s). The shipped prior ran longer:
    # --config.num_steps=10000 (about 4.3 h).
    c.num_steps = 6000
    c.log_every = 50
    c.checkpoint_minutes = 5.0
    return c
