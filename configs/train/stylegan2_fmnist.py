"""Training the StyleGAN2 generator for the shipped 32 x 32 setting (BKS-styleGAN2's image prior on
`configs/nonlinear_deblur.py`): `python -m dps_jax.train.stylegan2 --config=configs/train/stylegan2_fmnist.py
--workdir=runs/stylegan2`.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(name="fashion_mnist", root="", image_size=32, channels=1))
    # Small enough for a 2-core CPU: 64 channels at 4 x 4 and 8 x 8, 32 at 16 x 16, 16 at 32 x 32 (channels
    # min(channel_max, channel_base / resolution)); StyleGAN2-ADA's CIFAR layout has 512 everywhere and costs
    # about 100x more a step (128 everywhere: 4.5 s a step of batch 32 here). A 2-layer mapping network (ADA's
    # CIFAR value) of 128-wide styles; grey images.
    c.model = ml_collections.ConfigDict(dict(size=32, style_dim=128, n_mlp=2, channel_base=512, channel_max=64,
                                             image_channels=1, lr_mlp=0.01))
    c.optim = ml_collections.ConfigDict(dict(lr=0.0025))
    c.r1_gamma = 0.01                    # StyleGAN2-ADA's CIFAR value
    c.r1_every = 16
    c.ema_kimg = 10.0                    # half-life of the generator's average, in thousands of images
    c.batch_size = 32
    c.num_steps = 5000                   # 160k images; 1.3 s a step on 2 CPU cores (1.8 h)
    c.log_every = 100
    c.eval_images = 2000                 # samples and held-out test images of the FID-FMNIST in eval.json (0: none)
    c.checkpoint_minutes = 5.0
    return c
