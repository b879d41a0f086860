"""DAPS, decoupled annealing posterior sampling (Zhang, Chu, Berner, Meng, Anandkumar, Song; CVPR 2025).

DAPS anneals a noise level sigma_0 > sigma_1 > ... > sigma_{N-1} > sigma_N = 0 in the variance-exploding view
x_t = x_0 + sigma n, and at each level decouples the next sample from the current one:

    x0_hat = ODE(x_t; sigma_i -> sigma_ode)         a few Euler steps of the probability-flow ODE
                                                    dx/ds = (x - D(x, s)) / s (D: `prior.x0_at_sigma`)
    x0_y   = Langevin in x_0, from x0_hat, on  log p(y | x_0) + log N(x_0; x0_hat, sigma_i^2 I):
             x <- x + lr_i (-grad ||A(x) - y||^2 / tau^2 + (x0_hat - x) / sigma_i^2) + sqrt(2 lr_i) z
    x_{t'} = x0_y + sigma_{i+1} n                   (fresh noise: the new x_t need not be near the old)

so that errors of early levels can be undone later. The sample is x0_y of the last level. The levels follow
EDM's polynomial grid sigma(r) = (sigma_max^(1/rho) + r (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho at
r = i / N (so sigma_N = sigma_min is replaced by 0, as the reference does); the ODE's own grid is the same
polynomial from sigma_i down to sigma_ode, `ode_steps` Euler steps. The Langevin step size decays linearly
over the levels, lr_i = lr (1 + i / (N + 1) (lr_min_ratio - 1)). The data term is the reference's: the
gradient of the squared residual (not half of it) over tau^2, and the Gaussian x_0 | x_t term has std
sigma_i ("gaussian" prior solver). A level costs `ode_steps` network evaluations and `langevin_steps`
evaluations of A and its gradient, no gradient through the network.

Defaults are the reference's (github zhangbingliang2019/DAPS, `configs/sampler/edm_daps.yaml` and the pixel
task configs): sigma 100 -> 0.1, rho 7, ODE to 0.01, Langevin 100 steps, tau 0.01, lr_min_ratio 0.01, lr
1e-4 (its SR, random inpainting and Gaussian-blur setting; 5e-5 for phase retrieval, box inpainting and
motion blur: the task configs set it). Presets for the step counts: "1k", the reference's published
commands (200 levels x 5 ODE steps = 1000 network evaluations); "4k", the paper's DAPS-4K (400 levels x 10
ODE steps); "cpu", a cheap setting for the shipped 32 x 32 prior (see `PRESETS`). A count set to a positive
number overrides its preset.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import prior as prior_lib
from dps_jax.solvers import base, dps

# (annealing levels, ODE steps per level, Langevin steps per level)
PRESETS = {"1k": (200, 5, 100), "4k": (400, 10, 100), "cpu": (25, 2, 50)}


@flax.struct.dataclass
class Options:
    preset: str = base.static_field("1k")
    steps: int = base.static_field(0)                  # annealing levels; 0: the preset's
    ode_steps: int = base.static_field(0)              # 0: the preset's
    langevin_steps: int = base.static_field(0)         # 0: the preset's
    lr: float = 1e-4                                   # Langevin step size at the first level
    lr_min_ratio: float = 0.01                         # ... and its fraction at the last
    tau: float = 0.01                                  # the data term's std
    sigma_max: float = base.static_field(100.0)        # the annealing grid (host-side: static)
    sigma_min: float = base.static_field(0.1)
    rho: float = base.static_field(7.0)
    ode_sigma_min: float = 0.01                        # where each level's ODE stops

    def check(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown daps preset {self.preset!r}; expected one of {sorted(PRESETS)}")
        for name in ("steps", "ode_steps", "langevin_steps"):
            base.check_int(f"daps {name}", getattr(self, name), 0)
        for name in ("lr", "lr_min_ratio"):
            base.check_finite_number(f"daps {name}", getattr(self, name))
        for name in ("tau", "ode_sigma_min", "rho"):
            base.check_finite_number(f"daps {name}", getattr(self, name), 1e-12)
        if not (self.sigma_max > self.sigma_min > self.ode_sigma_min):
            raise ValueError(f"daps needs sigma_max > sigma_min > ode_sigma_min, got {self.sigma_max!r}, "
                             f"{self.sigma_min!r}, {self.ode_sigma_min!r}")


def counts(options: Options):
    """(annealing levels, ODE steps, Langevin steps): the preset's, each overridden where set."""
    preset = PRESETS[options.preset]
    return tuple(v or p for v, p in zip((options.steps, options.ode_steps, options.langevin_steps),
                                         preset))


def poly_grid(sigma_max, sigma_min, r, rho):
    """EDM's polynomial noise levels at fractions r in [0, 1]: sigma_max at 0, sigma_min at 1."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + r * (b - a)) ** rho


def annealing(options: Options):
    """The step inputs: per level i = 0 .. N-1 its sigma_i, the next level sigma_{i+1} (0 after the last) and
    the fraction i / (N + 1) the step size decays by. float32 arrays (N,)."""
    n = counts(options)[0]
    sigmas = poly_grid(options.sigma_max, options.sigma_min, np.linspace(0.0, 1.0, n + 1)[:-1], options.rho)
    nxt = np.append(sigmas[1:], 0.0)
    return {"sigma": jnp.asarray(sigmas, jnp.float32), "sigma_next": jnp.asarray(nxt, jnp.float32),
            "ratio": jnp.asarray(np.arange(n) / (n + 1), jnp.float32)}


def grid(options: Options, schedule) -> base.Grid:
    """The annealing levels; each costs `ode_steps` network evaluations."""
    levels, ode, _ = counts(options)
    return base.Grid(annealing(options), levels * ode)


def ode_x0(prior, x_t, sigma, options: Options):
    """x0_hat: Euler steps of the probability-flow ODE from x_t (H, W, C) at level sigma to ode_sigma_min."""
    m = counts(options)[1]
    s = poly_grid(sigma, options.ode_sigma_min, jnp.arange(m + 1, dtype=jnp.float32) / m, options.rho)

    def step(x, levels):
        s0, s1 = levels
        return x + (s1 - s0) * (x - prior_lib.x0_at_sigma(prior, x, s0)) / s0, None

    x, _ = jax.lax.scan(step, x_t, (s[:-1], s[1:]))
    return x


def langevin(x0_hat, problem, sigma, lr, eps, options: Options):
    """x0_y: Langevin steps (one per row of eps (L, H, W, C)) from x0_hat on the level's x_0 posterior."""
    def data(x):
        return jnp.sum((problem.op(x) - problem.y) ** 2)

    def step(x, e):
        score = -jax.grad(data)(x) / options.tau ** 2 + (x0_hat - x) / sigma ** 2
        return x + lr * score + jnp.sqrt(2 * lr) * e, None

    x, _ = jax.lax.scan(step, x0_hat, eps)
    return x


def init(key, problem, prior, options, image_shape):
    x = options.sigma_max * jax.random.normal(key, tuple(image_shape), jnp.float32)
    return {"x": x, "x0": jnp.zeros_like(x)}


def draw(key, state, problem, options):
    """The re-noising draw ("x", from the key itself) and the level's Langevin draws (L, H, W, C)."""
    shape = state["x"].shape
    num = counts(options)[2]
    return {"x": jax.random.normal(key, shape, jnp.float32),
            "langevin": jax.random.normal(jax.random.fold_in(key, 1), (num,) + shape, jnp.float32)}


def update(state, level, noise, problem, prior, options: Options):
    sigma = level["sigma"]
    x0_hat = ode_x0(prior, state["x"], sigma, options)
    lr = options.lr * (1 + level["ratio"] * (options.lr_min_ratio - 1))
    x0_y = langevin(x0_hat, problem, sigma, lr, noise["langevin"], options)
    x_next = x0_y + level["sigma_next"] * noise["x"]
    return {"x": x_next, "x0": x0_y}, {"distance": dps.distance(problem, x0_y), "x0_hat": x0_hat}


def result(state):
    return state["x0"]


SOLVER = base.Solver("daps", Options, init=init, update=update, draw=draw, result=result, grid=grid,
                     needs=frozenset({"gaussian"}))
