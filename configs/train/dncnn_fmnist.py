"""Training the DnCNN that ships with dps_jax (PnP-ADMM's denoiser for the 32 x 32 prior).

    python -m dps_jax.train.denoiser --config=configs/train/dncnn_fmnist.py --workdir=runs/dncnn
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(name="fashion_mnist", root="",
                                            image_size=32, channels=1))
    # Smaller than the published 17 x 64 DnCNN: the images are 32 x 32 and one channel.
    c.model = ml_collections.ConfigDict(dict(depth=8, features=32))
    c.sigma_max = 0.2                    # noise std on [0, 1] images, drawn uniformly from [0, sigma_max]
    c.optim = ml_collections.ConfigDict(dict(lr=1e-3))
    c.batch_size = 32
    c.num_steps = 1200                   # about 40 min on 2 CPU cores
    c.log_every = 100
    c.checkpoint_minutes = 5.0
    return c
