"""The diffusion prior as every diffusion solver sees it: a network and how to read its output.

    prior = prior.load()                         # the shipped prior (or load("ffhq256.msgpack"))
    den = prior.denoise(prior, x_t, c)           # Denoised(x0_hat, eps, mean, log_variance)

A `Prior` is a pytree: the network parameters are its arrays; the network function and the choices of
how its output is read (mean and variance parameterisation, clipping of x0_hat) are static, so they are
part of the compiled program. `denoise` is the one function through which solvers get Tweedie's x0_hat,
the implied noise eps and the reverse-step mean and variance of p(x_{t-1} | x_t).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Tuple

import flax.struct
import jax.numpy as jnp

from dps_jax import diffusion
from dps_jax.diffusion import StepCoefficients
from dps_jax.models.checkpoint import SHIPPED_PRIOR, load_checkpoint


@dataclasses.dataclass(frozen=True)
class UNetApply:
    """The per-image call of a Flax UNet: (params, x (H, W, C), t scalar int) -> output (H, W, C or 2C).

    A frozen dataclass rather than a closure, so two priors of the same module compare equal and share
    compiled programs.
    """
    module: Any

    def __call__(self, params, x, t):
        return self.module.apply({"params": params}, x[None], jnp.reshape(t, (1,)))[0]


@flax.struct.dataclass
class Prior:
    """A diffusion prior: `apply(params, x_t, t)` and how to turn its output into x0_hat.

    image_size / channels / size_multiple: the size it was trained at, the image channels it takes and the
    multiple its height and width must be (the UNet's total downsampling); None / None / 1 when unknown
    (hand-written test priors).
    """
    params: Any
    apply: Callable = flax.struct.field(pytree_node=False)
    mean_type: str = flax.struct.field(pytree_node=False, default="epsilon")
    var_type: str = flax.struct.field(pytree_node=False, default="learned_range")
    clip_denoised: bool = flax.struct.field(pytree_node=False, default=True)
    dynamic_threshold: bool = flax.struct.field(pytree_node=False, default=False)
    image_size: Optional[int] = flax.struct.field(pytree_node=False, default=None)
    channels: Optional[int] = flax.struct.field(pytree_node=False, default=None)
    size_multiple: int = flax.struct.field(pytree_node=False, default=1)

    @property
    def image_shape(self) -> Optional[Tuple[int, int, int]]:
        """(size, size, channels) of the training images, if known."""
        if self.image_size is None or self.channels is None:
            return None
        return (self.image_size, self.image_size, self.channels)

    def check(self) -> None:
        if self.mean_type not in diffusion.MEAN_TYPES:
            raise ValueError(f"unknown model mean type {self.mean_type!r}; expected one of {diffusion.MEAN_TYPES}")
        if self.var_type not in diffusion.VAR_TYPES:
            raise ValueError(f"unknown model variance type {self.var_type!r}; expected one of {diffusion.VAR_TYPES}")

    def check_image_shape(self, image_shape: Tuple[int, ...]) -> None:
        """Raise if the network cannot take images of shape (H, W, C)."""
        if len(image_shape) != 3:
            raise ValueError(f"image shape must be (H, W, C), got {tuple(image_shape)}")
        h, w, c = image_shape
        if self.channels is not None and c != self.channels:
            raise ValueError(f"image has {c} channels; the model takes {self.channels}")
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"image size {h} x {w} is not divisible by {m}, the model's total downsampling; "
                             f"use a multiple of {m}")


def from_unet(model, params, var_type: str = "", **options) -> Prior:
    """A Prior for a Flax `UNet` module and its params.

    var_type "" picks learned_range for a model with 2C outputs and fixed_large otherwise (the shipped
    prior's training choice). `options`: mean_type, clip_denoised, dynamic_threshold.
    """
    config = model.config
    if not var_type:
        var_type = "learned_range" if config.learn_sigma else "fixed_large"
    p = Prior(params=params, apply=UNetApply(model), var_type=var_type, image_size=config.image_size,
              channels=config.in_channels, size_multiple=config.downsample_factor, **options)
    p.check()
    return p


def load(path: Optional[str] = None, dtype=None, var_type: str = "", **options) -> Prior:
    """The Prior stored in a dps_jax checkpoint (the shipped prior by default), read once.

    The variance type is, in order: `var_type` if given, learned_range for a 2C-output model, the one the
    checkpoint records (`extra["var_type"]`), fixed_large.
    """
    ckpt = load_checkpoint(path or SHIPPED_PRIOR, dtype=dtype)
    if not var_type and not ckpt.config.learn_sigma:
        var_type = str(ckpt.extra.get("var_type", "")) or "fixed_large"
    return from_unet(ckpt.model, ckpt.params, var_type, **options)


class Denoised(NamedTuple):
    """What the network says about x_t at one step; each of x_t's shape (H, W, C)."""
    x0_hat: jnp.ndarray            # Tweedie's E[x_0 | x_t], processed (clipped) as the prior says
    eps: jnp.ndarray               # the noise that x_t and x0_hat imply
    mean: jnp.ndarray              # mean of p(x_{t-1} | x_t)
    log_variance: jnp.ndarray      # log-variance of p(x_{t-1} | x_t) (broadcastable)


def denoise(prior: Prior, x_t, c: StepCoefficients) -> Denoised:
    """One network evaluation at x_t (H, W, C) and step c (one row of the coefficient table)."""
    out = prior.apply(prior.params, x_t, c.t_model)
    mean, log_variance, x0_hat = diffusion.p_mean_variance(
        out, x_t, c, mean_type=prior.mean_type, var_type=prior.var_type, clip_denoised=prior.clip_denoised,
        use_dynamic_threshold=prior.dynamic_threshold)
    return Denoised(x0_hat, diffusion.eps_from_x0(x_t, c, x0_hat), mean, log_variance)


# The continuous VP schedule beta(s) = beta_min + beta_d s, s in [0, 1], that the linear 1000-step DDPM
# schedule discretises (betas 1e-4 .. 0.02 = beta(s) / 1000); EDM's VPPrecond reads a DDPM network with it.
VP_BETA_MIN, VP_BETA_D = 0.1, 19.9


def x0_at_sigma(prior: Prior, x, sigma, num_timesteps: int = 1000):
    """Tweedie's E[x_0 | x] for x = x_0 + sigma n (H, W, C): the denoiser at any noise level sigma > 0.

    A DDPM network is asked at the variance-preserving point that has the same signal-to-noise ratio:
    x / sqrt(1 + sigma^2) at the continuous time s with 1 / (1 + sigma^2) = exp(-(beta_d s^2 / 2 + beta_min s)),
    fed as timestep (T - 1) s (EDM's VPPrecond; what DAPS's reference does). No clipping. A prior whose
    `apply` knows its exact denoiser (the Gaussian mixture) answers with it.
    """
    exact = getattr(prior.apply, "x0_at_sigma", None)
    if exact is not None:
        return exact(prior.params, x, sigma)
    if prior.mean_type not in ("epsilon", "start_x"):
        raise ValueError(f"x0_at_sigma needs a network that predicts epsilon or x_0; this one predicts "
                         f"{prior.mean_type!r}")
    s = (jnp.sqrt(VP_BETA_MIN ** 2 + 2 * VP_BETA_D * jnp.log1p(sigma ** 2)) - VP_BETA_MIN) / VP_BETA_D
    scale = 1 / jnp.sqrt(1 + sigma ** 2)
    out = prior.apply(prior.params, scale * x, (num_timesteps - 1) * s)[..., :x.shape[-1]]
    if prior.mean_type == "start_x":
        return out
    return x - sigma * out
