"""The diffusion prior as every diffusion solver sees it: a network and how to read its output.

    prior = prior.load()                         # the shipped prior (or load("ffhq256.msgpack"))
    den = prior.denoise(prior, x_t, c)           # Denoised(x0_hat, eps, mean, log_variance)
    x0 = prior.x0_at_sigma(prior, x, sigma)      # D(x; sigma), for x = x_0 + sigma n, any sigma > 0

A `Prior` is a pytree: the network parameters are its arrays; the network function and the choices of
how its output is read (process, parametrisation, variance, clipping of x0_hat) are static, so they are
part of the compiled program. Solvers read a prior only through `denoise` (Tweedie's x0_hat, the implied
noise eps and the mean and variance of p(x_{t-1} | x_t) at one step of a discrete VP grid), `x0_at_sigma`
(the denoiser at any noise level) and `x0_at_step`, so every solver runs on every prior below.

Processes: how the network is told the noise level and which noisy image it is fed.
    discrete_vp  apply(params, x_t, t): x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) n at an integer timestep t of
                 the prior's own beta table (DDPM, ADM, diffusers); the solvers' grids are cut from that table.
    vp           apply(params, x_s, (T - 1) s): score_sde's continuous VP SDE, beta(s) = 0.1 + 19.9 s, read
                 at the continuous time s whose noise-to-signal ratio is the level asked for.
    ve           apply(params, x_0 + sigma n, sigma): score_sde's VE SDE (NCSN++).
    edm          EDM's preconditioning D(x; sigma) = c_skip x + c_out apply(params, c_in x, sigma) with
                 c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
                 c_in = 1 / sqrt(sigma^2 + sd^2), sd = sigma_data.
For ve and edm the network's apply receives sigma itself; mapping it to the architecture's noise embedding
(NCSN++: log sigma, EDM: log(sigma) / 4) is the apply's business. A solver's step t of a discrete VP grid
(alphas_cumprod ab_t) is the level sigma_t = sqrt(1 / ab_t - 1) of the image x_t / sqrt(ab_t), exactly: the
VP and VE views of the same noisy image differ by that scale only.

Parametrisations (`mean_type`), what the network's output is: epsilon (the noise n), start_x (x_0), v
(sqrt(ab) n - sqrt(1 - ab) x_0, VP only), score (grad log p = -n / sigma, VE only), previous_x (the
mean of p(x_{t-1} | x_t), discrete VP only), edm (the F of EDM's preconditioning; the edm process only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Tuple

import flax.struct
import jax.numpy as jnp

from dps_jax import diffusion
from dps_jax.diffusion import StepCoefficients
from dps_jax.models import checkpoint, diffusers_unet, edm_unet
from dps_jax.models.checkpoint import SHIPPED_PRIOR, load_checkpoint


PROCESSES = ("discrete_vp", "vp", "ve", "edm")
PARAMETRISATIONS = {
    "discrete_vp": ("epsilon", "start_x", "v", "previous_x"),
    "vp": ("epsilon", "start_x", "v"),
    "ve": ("epsilon", "start_x", "score"),
    "edm": ("edm",),
}
FIXED_VAR_TYPES = ("fixed_small", "fixed_large")


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

    process / mean_type: how the network is conditioned and what it outputs (the module docstring);
    sigma_data: EDM's data std (the edm process only); schedule: (beta schedule, timesteps) a discrete VP
    network was trained on when its checkpoint records it (a run on another is refused). image_size / channels / size_multiple: the size it
    was trained at, the image channels it takes and the multiple its height and width must be (the UNet's
    total downsampling); None / None / 1 when unknown (hand-written test priors).
    """
    params: Any
    apply: Callable = flax.struct.field(pytree_node=False)
    process: str = flax.struct.field(pytree_node=False, default="discrete_vp")
    mean_type: str = flax.struct.field(pytree_node=False, default="epsilon")
    var_type: str = flax.struct.field(pytree_node=False, default="learned_range")
    clip_denoised: bool = flax.struct.field(pytree_node=False, default=True)
    dynamic_threshold: bool = flax.struct.field(pytree_node=False, default=False)
    image_size: Optional[int] = flax.struct.field(pytree_node=False, default=None)
    channels: Optional[int] = flax.struct.field(pytree_node=False, default=None)
    size_multiple: int = flax.struct.field(pytree_node=False, default=1)
    sigma_data: float = flax.struct.field(pytree_node=False, default=0.5)
    schedule: Optional[Tuple[str, int]] = flax.struct.field(pytree_node=False, default=None)

    @property
    def image_shape(self) -> Optional[Tuple[int, int, int]]:
        """(size, size, channels) of the training images, if known."""
        if self.image_size is None or self.channels is None:
            return None
        return (self.image_size, self.image_size, self.channels)

    def check(self) -> None:
        if self.process not in PROCESSES:
            raise ValueError(f"unknown diffusion process {self.process!r}; expected one of {PROCESSES}")
        allowed = PARAMETRISATIONS[self.process]
        if self.mean_type not in allowed:
            raise ValueError(f"model mean type {self.mean_type!r} is not one a {self.process} prior can have; "
                             f"expected one of {allowed}")
        if self.var_type not in diffusion.VAR_TYPES:
            raise ValueError(f"unknown model variance type {self.var_type!r}; expected one of {diffusion.VAR_TYPES}")
        if self.process != "discrete_vp" and self.var_type not in FIXED_VAR_TYPES:
            # a learned variance interpolates the betas of the network's own discrete table
            raise ValueError(f"a {self.process} prior has no learned variance; variance type {self.var_type!r} "
                             f"must be one of {FIXED_VAR_TYPES}")
        if self.process == "edm" and not self.sigma_data > 0:
            raise ValueError(f"EDM's sigma_data must be positive, got {self.sigma_data!r}")

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
    """A Prior for a Flax `UNet` (or `DiffusersUNet`) module and its params.

    var_type "" picks learned_range for a discrete VP model with 2C outputs and fixed_large otherwise (the
    shipped prior's training choice). `options`: process, mean_type (default: epsilon, edm for the edm
    process), sigma_data, clip_denoised, dynamic_threshold.
    """
    config = model.config
    process = options.get("process", "discrete_vp")
    if process == "edm":
        options.setdefault("mean_type", "edm")
    if not var_type:
        var_type = "learned_range" if config.learn_sigma and process == "discrete_vp" else "fixed_large"
    p = Prior(params=params, apply=UNetApply(model), var_type=var_type, image_size=config.image_size,
              channels=config.in_channels, size_multiple=config.downsample_factor, **options)
    p.check()
    return p


def load(path: Optional[str] = None, dtype=None, var_type: str = "", **options) -> Prior:
    """The Prior stored in a dps_jax checkpoint (the shipped prior by default; an ADM UNet, a converted
    diffusers UNet2DModel or an EDM SongUNet), read once.

    The variance type is, in order: `var_type` if given, the one the checkpoint records (`extra["var_type"]`),
    learned_range for a 2C-output model, fixed_large. How its network is read (process, mean_type,
    sigma_data) and the schedule it was trained on come from the checkpoint when it records them. `dtype`
    is the ADM UNet's compute dtype; the diffusers and EDM ports compute in float32.
    """
    path = path or SHIPPED_PRIOR
    fmt = checkpoint.file_format(path)
    if fmt == edm_unet.FORMAT:
        params, config, extra = checkpoint.read_checkpoint(path, fmt, edm_unet.EDMUNetConfig.from_json,
                                                           edm_unet.param_shapes)
        for name, value in edm_unet.prior_options(config).items():
            options.setdefault(name, value)
        p = Prior(params=params, apply=edm_unet.EDMApply(config), var_type=var_type or "fixed_large",
                  image_size=config.img_resolution, channels=config.in_channels,
                  size_multiple=config.downsample_factor, **options)
        p.check()
        return p
    if fmt == diffusers_unet.FORMAT:
        params, config, extra = checkpoint.read_checkpoint(path, diffusers_unet.FORMAT,
                                                           diffusers_unet.DiffusersUNetConfig.from_json,
                                                           diffusers_unet.param_shapes)
        model = diffusers_unet.DiffusersUNet(config)
    else:
        model, params, config, extra = load_checkpoint(path, dtype=dtype)
    for name in ("process", "mean_type"):       # a converted checkpoint records how its network is read
        if name in extra:
            options.setdefault(name, str(extra[name]))
    if "sigma_data" in extra:
        options.setdefault("sigma_data", float(extra["sigma_data"]))
    if "beta_schedule" in extra and "num_timesteps" in extra:
        options.setdefault("schedule", (str(extra["beta_schedule"]), int(extra["num_timesteps"])))
    return from_unet(model, params, var_type or str(extra.get("var_type", "")), **options)


class Denoised(NamedTuple):
    """What the network says about x_t at one step; each of x_t's shape (H, W, C)."""
    x0_hat: jnp.ndarray            # Tweedie's E[x_0 | x_t], processed (clipped) as the prior says
    eps: jnp.ndarray               # the noise that x_t and x0_hat imply
    mean: jnp.ndarray              # mean of p(x_{t-1} | x_t)
    log_variance: jnp.ndarray      # log-variance of p(x_{t-1} | x_t) (broadcastable)


def denoise(prior: Prior, x_t, c: StepCoefficients) -> Denoised:
    """One network evaluation at x_t (H, W, C) and step c (one row of a discrete VP coefficient table)."""
    if prior.process == "discrete_vp":
        out = prior.apply(prior.params, x_t, c.t_model)
        mean_type = prior.mean_type
    else:
        # the VE view of x_t: x_t / sqrt(ab) = x_0 + sigma_t n
        out = x0_at_sigma(prior, c.sqrt_recip_alphas_cumprod * x_t, c.sqrt_recipm1_alphas_cumprod)
        mean_type = "start_x"
    mean, log_variance, x0_hat = diffusion.p_mean_variance(
        out, x_t, c, mean_type=mean_type, var_type=prior.var_type, clip_denoised=prior.clip_denoised,
        use_dynamic_threshold=prior.dynamic_threshold)
    return Denoised(x0_hat, diffusion.eps_from_x0(x_t, c, x0_hat), mean, log_variance)


# The continuous VP schedule beta(s) = beta_min + beta_d s, s in [0, 1], that the linear 1000-step DDPM
# schedule discretises (betas 1e-4 .. 0.02 = beta(s) / 1000); EDM's VPPrecond reads a DDPM network with it.
VP_BETA_MIN, VP_BETA_D = 0.1, 19.9


def vp_time(sigma):
    """The continuous VP time s in [0, 1] whose noise-to-signal ratio sqrt(1 / ab(s) - 1) is sigma, with
    ab(s) = exp(-(beta_d s^2 / 2 + beta_min s))."""
    return (jnp.sqrt(VP_BETA_MIN ** 2 + 2 * VP_BETA_D * jnp.log1p(sigma ** 2)) - VP_BETA_MIN) / VP_BETA_D


def _x0_from_vp_output(mean_type: str, out, x_vp, ab):
    """x_0 from a VP network's output at x_vp (any shape) and alphas_cumprod ab (a scalar)."""
    if mean_type == "epsilon":
        return (x_vp - jnp.sqrt(1 - ab) * out) / jnp.sqrt(ab)
    if mean_type == "start_x":
        return out
    if mean_type == "v":
        return jnp.sqrt(ab) * x_vp - jnp.sqrt(1 - ab) * out
    raise ValueError(f"a network that predicts {mean_type!r} cannot be read at a single noise level; expected "
                     f"one of ('epsilon', 'start_x', 'v')")


def x0_at_sigma(prior: Prior, x, sigma, num_timesteps: int = 1000):
    """Tweedie's E[x_0 | x] for x = x_0 + sigma n (H, W, C): the denoiser D(x; sigma) at any level sigma > 0.

    A VP network (discrete or continuous) is asked at the variance-preserving point that has the same
    signal-to-noise ratio: x / sqrt(1 + sigma^2) at the continuous time s of `vp_time(sigma)`, fed as
    timestep (T - 1) s (EDM's VPPrecond; what DAPS's reference does). A VE network is asked at x and sigma;
    an EDM network through its preconditioning. No clipping. A prior whose `apply` knows its exact denoiser
    (the Gaussian mixture) answers with it.
    """
    exact = getattr(prior.apply, "x0_at_sigma", None)
    if exact is not None:
        return exact(prior.params, x, sigma)
    channels = x.shape[-1]
    if prior.process in ("discrete_vp", "vp"):
        ab = 1 / (1 + sigma ** 2)
        x_vp = jnp.sqrt(ab) * x
        out = prior.apply(prior.params, x_vp, (num_timesteps - 1) * vp_time(sigma))[..., :channels]
        return _x0_from_vp_output(prior.mean_type, out, x_vp, ab)
    if prior.process == "ve":
        out = prior.apply(prior.params, x, sigma)[..., :channels]
        if prior.mean_type == "epsilon":
            return x - sigma * out
        if prior.mean_type == "score":
            return x + sigma ** 2 * out
        return out
    sd2 = prior.sigma_data ** 2
    c_skip = sd2 / (sigma ** 2 + sd2)
    c_out = sigma * prior.sigma_data / jnp.sqrt(sigma ** 2 + sd2)
    c_in = 1 / jnp.sqrt(sigma ** 2 + sd2)
    return c_skip * x + c_out * prior.apply(prior.params, c_in * x, sigma)[..., :channels]


def x0_at_step(prior: Prior, x_t, t, alphas_cumprod):
    """Tweedie's E[x_0 | x_t] at timestep t of the prior's discrete VP table (alphas_cumprod its ab_t),
    unclipped: (H, W, C). A discrete VP network is asked at t itself; any other prior at the level of ab_t."""
    ab = alphas_cumprod
    if prior.process == "discrete_vp":
        out = prior.apply(prior.params, x_t, t)[..., :x_t.shape[-1]]
        return _x0_from_vp_output(prior.mean_type, out, x_t, ab)
    return x0_at_sigma(prior, x_t / jnp.sqrt(ab), jnp.sqrt(1 / ab - 1))


def eps_at_step(prior: Prior, x_t, t, alphas_cumprod):
    """The noise eps that x_t (H, W, C) and the prior's x0_hat at timestep t imply (the network's own output
    for an epsilon-predicting discrete VP network)."""
    if prior.process == "discrete_vp" and prior.mean_type == "epsilon":
        return prior.apply(prior.params, x_t, t)[..., :x_t.shape[-1]]
    ab = alphas_cumprod
    return (x_t - jnp.sqrt(ab) * x0_at_step(prior, x_t, t, ab)) / jnp.sqrt(1 - ab)
