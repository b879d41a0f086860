"""Image quality metrics: PSNR and SSIM (pixel.py), LPIPS (lpips.py), FID and KID on a feature network
(fid.py: pytorch-fid's Inception, or the in-domain Fashion-MNIST classifier that ships)."""

from dps_jax.metrics.pixel import psnr, ssim

__all__ = ["psnr", "ssim"]
