"""Training the small prior that ships with dps_jax: a 32 x 32 Fashion-MNIST DDPM.

    python -m dps_jax.train --config=configs/train/fashion_mnist.py --workdir=runs/fmnist
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(name="fashion_mnist", root="/usr/share/datasets/fashion-mnist",
                                            image_size=32, channels=1))
    # A small ADM UNet: 32 -> 16 -> 8 levels, attention at 8 x 8 and in the middle.
    c.model = ml_collections.ConfigDict(dict(
        image_size=32, in_channels=1, model_channels=32, out_channels=1, num_res_blocks=1,
        attention_resolutions=(4,), channel_mult=(1, 2, 2), num_heads=4, num_head_channels=-1,
        use_scale_shift_norm=True, resblock_updown=True, dropout=0.1))
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
