"""The reverse diffusion loop with DPS guidance: one `jax.lax.scan`, jit-compiled, vmapped over samples.

One sample is the unit. `reverse_loop` runs the whole reverse process for one image:

    for i = T-1 .. 0 (respaced steps; the network sees t = timestep_map[i]):
        mean, log_var, x0_hat = p(x_{t-1} | x_t)            (Tweedie x0_hat, clipped)
        x'_{t-1} = DDPM: mean + exp(log_var / 2) z           (no noise at i = 0)
                   DDIM: sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s^2) eps + s z
        x_{t-1}  = guidance(x'_{t-1}, grad_{x_t} d(y, A(x0_hat)), y_t)

`posterior_samples` vmaps it over N samples (each with its own norm and its own keys). `Sampler`
compiles it: the operator name, the step count and the config are static; params, y, the operator's
arrays, the coefficient table, the step scale (zeta) and the keys are arguments, so a new measurement
of the same shape reuses the compiled program. A host loop over the jitted step is the alternative
(see `Sampler`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from dps_jax import diffusion, guidance
from dps_jax.diffusion import StepCoefficients
from dps_jax.likelihoods import NOISE_MODELS
from dps_jax.operators import Operator

SAMPLERS = ("ddpm", "ddim")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Static choices of the reverse loop (hashable: part of what jit compiles)."""
    sampler: str = "ddpm"
    eta: float = 0.0                      # DDIM only
    mean_type: str = "epsilon"
    var_type: str = "learned_range"
    clip_denoised: bool = True
    dynamic_threshold: bool = False
    guidance: str = "ps"
    noise_model: str = "gaussian"         # which distance d the gradient descends
    num_perturb: int = 5                  # ps+ only
    record_every: int = 0                 # keep x and x0_hat every k steps (0: never)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {SAMPLERS}")
        if self.mean_type not in diffusion.MEAN_TYPES:
            raise ValueError(f"unknown model mean type {self.mean_type!r}; expected one of {diffusion.MEAN_TYPES}")
        if self.var_type not in diffusion.VAR_TYPES:
            raise ValueError(f"unknown model variance type {self.var_type!r}; expected one of {diffusion.VAR_TYPES}")
        guidance.check_method(self.guidance)
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(f"unknown noise model {self.noise_model!r}; expected one of {NOISE_MODELS}")
        if not 0.0 <= self.eta:
            raise ValueError(f"DDIM eta must be >= 0, got {self.eta}")
        if self.num_perturb < 1:
            raise ValueError(f"num_perturb must be >= 1, got {self.num_perturb}")
        if self.record_every < 0:
            raise ValueError(f"record_every must be >= 0, got {self.record_every}")


# denoise_fn(params, x (H, W, C), t scalar int) -> model output (H, W, C or 2C)
DenoiseFn = Callable


def unet_denoise_fn(model) -> DenoiseFn:
    """The per-image network call for a Flax UNet module (adds and removes the batch axis)."""
    def denoise(params, x, t):
        return model.apply({"params": params}, x[None], jnp.reshape(t, (1,)))[0]
    return denoise


def reverse_step(denoise_fn, params, op: Operator, y, x_t, c: StepCoefficients, scale, cfg: SamplerConfig,
                 noise_x, noise_y, key):
    """One guided reverse step for one image. Returns (x_{t-1}, x0_hat, distance)."""

    def distance_and_aux(x):
        out = denoise_fn(params, x, c.t_model)
        mean, log_var, x0_hat = diffusion.p_mean_variance(
            out, x, c, mean_type=cfg.mean_type, var_type=cfg.var_type,
            clip_denoised=cfg.clip_denoised, use_dynamic_threshold=cfg.dynamic_threshold)
        d = guidance.measurement_distance(cfg.guidance, op, y, x0_hat, cfg.noise_model, key, cfg.num_perturb)
        return d, (mean, log_var, x0_hat)

    if guidance.needs_gradient(cfg.guidance):
        (d, (mean, log_var, x0_hat)), grad = jax.value_and_grad(distance_and_aux, has_aux=True)(x_t)
    else:
        d, (mean, log_var, x0_hat) = distance_and_aux(x_t)
        grad = None

    last = c.index == 0
    if cfg.sampler == "ddpm":
        x_prime = mean + jnp.where(last, 0.0, jnp.exp(0.5 * log_var) * noise_x)
    else:
        eps = diffusion.eps_from_x0(x_t, c, x0_hat)
        ab, ab_prev = c.alphas_cumprod, c.alphas_cumprod_prev
        sigma = cfg.eta * jnp.sqrt((1 - ab_prev) / (1 - ab)) * jnp.sqrt(1 - ab / ab_prev)
        x_prime = x0_hat * jnp.sqrt(ab_prev) + jnp.sqrt(1 - ab_prev - sigma ** 2) * eps
        x_prime = x_prime + jnp.where(last, 0.0, sigma * noise_x)

    y_t = diffusion.q_sample(y, c, noise_y)
    x_next = guidance.condition(cfg.guidance, x_prime, grad, scale, op, y_t)
    return x_next, x0_hat, d


def _draw_and_step(denoise_fn, params, op, y, x_t, c, step_key, scale, cfg, supplied=None):
    """One step of the loop with its noise drawn from `step_key` (or taken from `supplied`)."""
    kx, ky, kp = jax.random.split(step_key, 3)
    nx = supplied["noise_x"] if supplied else jax.random.normal(kx, x_t.shape, x_t.dtype)
    ny = supplied["noise_y"] if supplied else jax.random.normal(ky, jnp.shape(y), x_t.dtype)
    return reverse_step(denoise_fn, params, op, y, x_t, c, scale, cfg, nx, ny, kp)


def reverse_loop(denoise_fn, params, op: Operator, y, x_T, key, coefs: StepCoefficients, scale,
                 cfg: SamplerConfig, noise=None, progress: Optional[Callable] = None):
    """The whole reverse process for one image as one lax.scan.

    x_T: (H, W, C) start; y: one measurement; key: PRNG key for the per-step noise (step j uses
    split(key, T)[j]); coefs: stacked StepCoefficients in reverse order (leading axis T); noise:
    optional dict with `noise_x` (T, H, W, C) and `noise_y` (T, *y.shape) used instead of drawing
    from `key` (tests); progress: optional host function progress(step_done, num_steps, distance)
    called from inside the loop.
    Returns a dict: sample (H, W, C), distance (T,), and, if cfg.record_every > 0,
    x_record / x0_hat_record (ceil(T / k), H, W, C) of the steps j = 0, k, 2k, ...
    """
    num_steps = coefs.index.shape[0]
    keys = jax.random.split(key, num_steps)
    k = cfg.record_every
    n_rec = math.ceil(num_steps / k) if k else 0
    rec0 = (jnp.zeros((n_rec,) + x_T.shape, x_T.dtype),) * 2 if k else ()

    def body(carry, xs):
        x_t, records = carry
        c, step_key, j, supplied = xs
        x_next, x0_hat, d = _draw_and_step(denoise_fn, params, op, y, x_t, c, step_key, scale, cfg, supplied)
        if k:
            take = (j % k) == 0
            slot = j // k
            records = tuple(jnp.where(take, r.at[slot].set(v), r) for r, v in zip(records, (x_next, x0_hat)))
        if progress is not None:
            jax.debug.callback(progress, j + 1, num_steps, d)
        return (x_next, records), d

    xs = (coefs, keys, jnp.arange(num_steps), noise if noise is not None else {})
    (x0, records), distances = jax.lax.scan(body, (x_T, rec0), xs)
    out = {"sample": x0, "distance": distances}
    if k:
        out["x_record"], out["x0_hat_record"] = records
    return out


def start(key, image_shape):
    """x_T ~ N(0, I) and the loop key of one sample, both from the sample's key."""
    k_init, k_loop = jax.random.split(key)
    return jax.random.normal(k_init, tuple(image_shape), jnp.float32), k_loop


def sample_one(denoise_fn, params, op: Operator, y, key, coefs: StepCoefficients, scale, cfg: SamplerConfig,
               image_shape, progress: Optional[Callable] = None):
    """One posterior sample from one key: x_T ~ N(0, I) from the key, then the reverse loop."""
    x_T, k_loop = start(key, image_shape)
    return reverse_loop(denoise_fn, params, op, y, x_T, k_loop, coefs, scale, cfg, progress=progress)


def posterior_samples(denoise_fn, params, op: Operator, y, keys, coefs: StepCoefficients, scale,
                      cfg: SamplerConfig, image_shape, progress: Optional[Callable] = None):
    """N posterior samples for one measurement y, one per key in `keys` (N keys), vmapped.

    Sample i equals `sample_one(..., keys[i], ...)`: each sample has its own noise and its own
    distance (nothing couples the samples). Returns `reverse_loop`'s dict with a leading axis N.
    """
    run = lambda k: sample_one(denoise_fn, params, op, y, k, coefs, scale, cfg, image_shape, progress)
    return jax.vmap(run)(keys)


LOOPS = ("scan", "host", "auto")


class Sampler:
    """Draws len(keys) posterior samples: `sampler(params, op, y, keys, coefs, scale) -> dict`.

    loop="scan": the whole reverse run is one jit-compiled lax.scan (`posterior_samples`).
    loop="host": a Python loop over one jit-compiled, vmapped step. Same step, same keys, same
    results, and as fast (benchmarks/RESULTS.md). "auto" is "host" when there is a progress callback
    (JAX does not store a program with host callbacks in its persistent compilation cache, so a scan
    reporting progress would compile afresh in every process) and "scan" otherwise.
    Everything that changes between measurements of the same shapes is an argument: a new y, mask,
    kernel or scale reuses the compiled program.
    """

    def __init__(self, denoise_fn, cfg: SamplerConfig, image_shape, progress: Optional[Callable] = None,
                 loop: str = "auto"):
        if loop not in LOOPS:
            raise ValueError(f"unknown loop {loop!r}; expected one of {LOOPS}")
        self.loop = ("scan" if progress is None else "host") if loop == "auto" else loop
        self.cfg, self.image_shape, self.progress = cfg, tuple(image_shape), progress
        self._compiled = None
        if self.loop == "scan":
            self._run = jax.jit(lambda params, op, y, keys, coefs, scale: posterior_samples(
                denoise_fn, params, op, y, keys, coefs, scale, cfg, image_shape, progress))
        else:
            def init(keys, num_steps):
                x_T, loop_keys = jax.vmap(lambda k: start(k, image_shape))(keys)
                return x_T, jax.vmap(lambda k: jax.random.split(k, num_steps))(loop_keys)

            def step(params, op, y, x, coefs, j, step_keys, scale):
                c = jax.tree_util.tree_map(lambda a: a[j], coefs)
                one = lambda x_t, k: _draw_and_step(denoise_fn, params, op, y, x_t, c, k, scale, cfg)
                return jax.vmap(one)(x, step_keys)

            self._init = jax.jit(init, static_argnums=1)
            self._step = jax.jit(step)

    def compile(self, params, op, y, keys, coefs, scale) -> float:
        """Compile ahead of time for these shapes; returns the seconds it took."""
        import time
        t0 = time.time()
        if self.loop == "scan":
            self._compiled = self._run.lower(params, op, y, keys, coefs, scale).compile()
        else:
            num_steps = coefs.index.shape[0]
            x_T, step_keys = jax.eval_shape(lambda k: self._init(k, num_steps), keys)
            keys_j = jax.ShapeDtypeStruct((step_keys.shape[0],) + step_keys.shape[2:], step_keys.dtype,
                                          sharding=getattr(keys, "sharding", None))
            self._compiled = self._step.lower(params, op, y, x_T, coefs, 0, keys_j, scale).compile()
        return time.time() - t0

    def __call__(self, params, op, y, keys, coefs, scale):
        if self.loop == "scan":
            return (self._compiled or self._run)(params, op, y, keys, coefs, scale)
        step = self._compiled or self._step
        num_steps = coefs.index.shape[0]
        k = self.cfg.record_every
        x, step_keys = self._init(keys, num_steps)
        distances, x_rec, x0_rec = [], [], []
        for j in range(num_steps):
            x, x0_hat, d = step(params, op, y, x, coefs, j, step_keys[:, j], scale)
            distances.append(d)
            if k and j % k == 0:
                x_rec.append(x)
                x0_rec.append(x0_hat)
            if self.progress is not None:
                self.progress(j + 1, num_steps, d)
        out = {"sample": x, "distance": jnp.stack(distances, axis=1)}
        if k:
            out["x_record"], out["x0_hat_record"] = jnp.stack(x_rec, axis=1), jnp.stack(x0_rec, axis=1)
        return out


def make_sampler(denoise_fn, cfg: SamplerConfig, image_shape, progress: Optional[Callable] = None,
                 loop: str = "auto") -> Sampler:
    """A `Sampler` for this denoiser, config and image shape (see `Sampler`)."""
    return Sampler(denoise_fn, cfg, image_shape, progress, loop)
