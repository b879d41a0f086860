"""The Gaussian diffusion math of one step: q_sample, Tweedie's x0_hat, posterior mean and variance.

Functions take the coefficients of the current step as float32 scalars (one row of the table from
`schedule.make_tables`, see `step_coefficients`), so they work for one image or, under `vmap`, many.
Shapes: x_t, eps, x0_hat are one image (H, W, C) or any array of the same shape.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from dps_jax.schedule import DiffusionTables

MEAN_TYPES = ("epsilon", "start_x", "v", "previous_x")
VAR_TYPES = ("learned_range", "fixed_small", "fixed_large", "learned")


class StepCoefficients(NamedTuple):
    """The coefficients of one respaced step (float32 scalars; leading axis T when stacked)."""
    t_model: jnp.ndarray                 # original timestep fed to the network
    index: jnp.ndarray                   # respaced index i (0 is the last step)
    alphas_cumprod: jnp.ndarray
    alphas_cumprod_prev: jnp.ndarray
    sqrt_alphas_cumprod: jnp.ndarray
    sqrt_one_minus_alphas_cumprod: jnp.ndarray
    sqrt_recip_alphas_cumprod: jnp.ndarray
    sqrt_recipm1_alphas_cumprod: jnp.ndarray
    posterior_variance: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray
    log_betas: jnp.ndarray
    fixed_large_log_variance: jnp.ndarray
    fraction: jnp.ndarray                # index / (T - 1): 1 at the first reverse step, 0 at the last


def step_coefficients(tables: DiffusionTables, reverse: bool = True) -> StepCoefficients:
    """The table as stacked float32 rows, in reverse-time order by default (i = T-1 .. 0)."""
    order = np.arange(tables.num_steps)[::-1] if reverse else np.arange(tables.num_steps)
    f32 = lambda a: jnp.asarray(np.asarray(a)[order], jnp.float32)  # float64 -> float32 per entry
    return StepCoefficients(
        t_model=jnp.asarray(tables.timestep_map[order], jnp.int32),
        index=jnp.asarray(order, jnp.int32),
        **{name: f32(getattr(tables, name)) for name in StepCoefficients._fields[2:-1]},
        fraction=jnp.asarray(order / max(tables.num_steps - 1, 1), jnp.float32),
    )


def q_sample(x0, c: StepCoefficients, noise):
    """A draw of x_t ~ q(x_t | x_0) = N(sqrt(alphas_cumprod) x_0, (1 - alphas_cumprod) I)."""
    return c.sqrt_alphas_cumprod * x0 + c.sqrt_one_minus_alphas_cumprod * noise


def x0_from_eps(x_t, c: StepCoefficients, eps):
    """Tweedie's estimate x0_hat = (x_t - sqrt(1 - alphas_cumprod) eps) / sqrt(alphas_cumprod)."""
    return c.sqrt_recip_alphas_cumprod * x_t - c.sqrt_recipm1_alphas_cumprod * eps


def eps_from_x0(x_t, c: StepCoefficients, x0):
    """The noise that x_t and x0 imply: the inverse of `x0_from_eps`."""
    return (c.sqrt_recip_alphas_cumprod * x_t - x0) / c.sqrt_recipm1_alphas_cumprod


def x0_from_v(x_t, c: StepCoefficients, v):
    """x0 from the velocity v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho 2022): sqrt(ab) x_t - sqrt(1 - ab) v."""
    return c.sqrt_alphas_cumprod * x_t - c.sqrt_one_minus_alphas_cumprod * v


def x0_from_previous_x(x_t, c: StepCoefficients, x_prev):
    """x0 from a predicted posterior mean mu(x_t, x0) (the `previous_x` parameterisation)."""
    return x_prev / c.posterior_mean_coef1 - (c.posterior_mean_coef2 / c.posterior_mean_coef1) * x_t


def posterior_mean(x0, x_t, c: StepCoefficients):
    """Mean of q(x_{t-1} | x_t, x_0)."""
    return c.posterior_mean_coef1 * x0 + c.posterior_mean_coef2 * x_t


def dynamic_threshold(x, quantile: float = 0.95):
    """Imagen's dynamic thresholding (Saharia et al. 2022): s = max(q_p(|x|), 1), x -> clip(x, -s, s) / s.

    The official DPS helper multiplies by the quantile instead of dividing (and DPS never enables it);
    we implement the published rule. x: any shape, one image.
    """
    s = jnp.maximum(jnp.quantile(jnp.abs(x), quantile), 1.0)
    return jnp.clip(x, -s, s) / s


def process_x0(x0, clip_denoised: bool, use_dynamic_threshold: bool = False):
    if use_dynamic_threshold:
        x0 = dynamic_threshold(x0)
    if clip_denoised:
        x0 = jnp.clip(x0, -1.0, 1.0)
    return x0


def split_model_output(model_output, channels: int):
    """(H, W, C or 2C) -> (mean part, variance part or None)."""
    if model_output.shape[-1] == 2 * channels:
        return model_output[..., :channels], model_output[..., channels:]
    if model_output.shape[-1] != channels:
        raise ValueError(
            f"model output has {model_output.shape[-1]} channels; expected {channels} "
            f"(fixed variance) or {2 * channels} (learned variance)")
    return model_output, None


def p_mean_variance(model_output, x_t, c: StepCoefficients, *, mean_type: str = "epsilon",
                    var_type: str = "learned_range", clip_denoised: bool = True,
                    use_dynamic_threshold: bool = False):
    """Mean, log-variance and x0_hat of p(x_{t-1} | x_t) from the network output.

    model_output: (H, W, C) or (H, W, 2C) when the variance is learned; x_t: (H, W, C).
    Returns (mean, log_variance, x0_hat), each of x_t's shape (log_variance broadcastable).
    """
    out, var_values = split_model_output(model_output, x_t.shape[-1])

    if mean_type == "epsilon":
        x0_hat = process_x0(x0_from_eps(x_t, c, out), clip_denoised, use_dynamic_threshold)
        mean = posterior_mean(x0_hat, x_t, c)
    elif mean_type == "start_x":
        x0_hat = process_x0(out, clip_denoised, use_dynamic_threshold)
        mean = posterior_mean(x0_hat, x_t, c)
    elif mean_type == "v":
        x0_hat = process_x0(x0_from_v(x_t, c, out), clip_denoised, use_dynamic_threshold)
        mean = posterior_mean(x0_hat, x_t, c)
    elif mean_type == "previous_x":
        mean = out
        x0_hat = process_x0(x0_from_previous_x(x_t, c, out), clip_denoised, use_dynamic_threshold)
    else:
        raise ValueError(f"unknown model mean type {mean_type!r}; expected one of {MEAN_TYPES}")

    if var_type in ("learned_range", "learned") and var_values is None:
        raise ValueError(
            f"variance type {var_type!r} needs a model with 2 x {x_t.shape[-1]} output channels")
    if var_type == "learned_range":
        # The extra channels v in [-1, 1] interpolate log-variance between the clipped posterior
        # variance (v = -1) and beta_t (v = +1).
        frac = (var_values + 1.0) / 2.0
        log_variance = frac * c.log_betas + (1.0 - frac) * c.posterior_log_variance_clipped
    elif var_type == "learned":
        log_variance = var_values
    elif var_type == "fixed_small":
        log_variance = jnp.log(c.posterior_variance) * jnp.ones_like(x_t)
    elif var_type == "fixed_large":
        log_variance = c.fixed_large_log_variance * jnp.ones_like(x_t)
    else:
        raise ValueError(f"unknown model variance type {var_type!r}; expected one of {VAR_TYPES}")
    return mean, log_variance, x0_hat
