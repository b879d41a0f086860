"""Training the KernelWizard that ships with dps_jax (the blur model of nonlinear deblurring on the 32 x 32
prior): `dps_jax/assets/kernel_wizard_fmnist32.msgpack`.

    python -m dps_jax.train.kernel --config=configs/train/kernel_wizard_fmnist.py --workdir=runs/kernel
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(name="fashion_mnist", root="",
                                            image_size=32, channels=1))
    # The published layout at a quarter of its width and fewer blocks, with no feature downsampling and four
    # adapter levels (instead of 2 and 5) so that 32 x 32 images give z of 2 x 2 as 256 x 256 ones do. (With
    # one downsampling and three levels the adapter's finest skip is 8 x 8 and training stalled at "no blur".)
    c.model = ml_collections.ConfigDict(dict(
        in_channels=1, features=16, front_blocks=2, back_blocks=4, extractor_blocks=1, kernel_dim=128,
        use_vae=True, feature_downsamples=0, adapter_levels=4, tail_features=16))
    # Camera paths up to 6 pixels long on 32 x 32 (the paper's 61 x 61 motion kernels on 256 x 256 images span
    # at most 7.6 pixels at this scale), rotation to 0.15 rad and zoom to 10 % over the exposure: the blur
    # varies across the image.
    c.blur = ml_collections.ConfigDict(dict(frames=16, max_shift=6.0, max_angle=0.15, max_zoom=0.1))
    # The reference weighs the KL sum by 10 against a Charbonnier sum over 256 x 256 x 3 pixels and z of
    # 512 x 2 x 2; 0.2 keeps that ratio of pixel terms to KL terms for 32 x 32 x 1 images and z of 128 x 2 x 2.
    c.kl_weight = 0.2
    c.kl_start = 800                     # steps without the VAE (z = mu, no KL): a deterministic code first
    c.kl_warmup = 600                    # then steps over which the VAE's noise and KL weight grow from 0
    c.optim = ml_collections.ConfigDict(dict(lr=5e-4))
    c.batch_size = 32
    c.num_steps = 2400
    c.log_every = 50
    c.eval_images = 512                  # held-out test images for eval.json
    c.checkpoint_minutes = 5.0
    return c
