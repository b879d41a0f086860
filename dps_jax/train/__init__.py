"""Training the small networks dps_jax ships, with optax; each trainer resumes from its saved state.

    python -m dps_jax.train.prior --config=configs/train/fashion_mnist.py --workdir=runs/fmnist
    python -m dps_jax.train.denoiser --config=configs/train/dncnn_fmnist.py --workdir=runs/dncnn
    python -m dps_jax.train.kernel --config=configs/train/kernel_wizard_fmnist.py --workdir=runs/kernel
    python -m dps_jax.train.classifier --config=configs/train/classifier_fmnist.py --workdir=runs/classifier

prior: the DDPM prior (an ADM UNet); denoiser: PnP-ADMM's DnCNN; kernel: nonlinear deblurring's
KernelWizard; classifier: the Fashion-MNIST classifier of FID-FMNIST; common: what they share.
"""
