"""PnP-DM, plug-and-play diffusion models by split Gibbs sampling (Wu, Sun, Chen, Zhang, Yue, Bouman;
NeurIPS 2024).

PnP-DM samples p(x | y) ∝ p(y | x) p(x) through the augmented density
p(x, z | y) ∝ p(y | z) exp(-||x - z||^2 / (2 rho^2)) p(x), alternating two exact conditionals while the
coupling rho anneals, rho_k = max(rho rho_decay^k, rho_min):

    likelihood step  z ~ p(z | x, y) ∝ exp(-||y - A z||^2 / (2 sigma_y^2) - ||z - x||^2 / (2 rho_k^2))
    prior step       x ~ p(x_0 | x_0 + rho_k n = z)      (a denoising posterior: the diffusion model's
                                                          reverse process started at noise level rho_k)

For a linear A the likelihood step is an exact Gaussian draw: through A's SVD where it has one (diagonal
precision s^2 / sigma_y^2 + 1 / rho^2 in V's coordinates), else by perturb-then-solve with conjugate
gradients (the minimiser of the objective with y and x perturbed by their own noise is an exact draw). For a
nonlinear A it is `langevin_steps` unadjusted Langevin steps of size gamma from x. The prior step runs
EDM's reverse SDE (or probability-flow ODE) with Euler steps on the grid of one of EDM's four
discretisations (`mode`: vp, ve, iddpm, edm; `denoiser_steps` levels, the EDM denoiser D(x; sigma) =
`prior.x0_at_sigma`), from its first level below rho_k, with z taken as the state there. A sample is the
last x of its chain (the reference's batch sampler; its one-chain sampler keeps several iterates after a
burn-in, which a run of several chains replaces).

Defaults are the values of the reference's run script (github zihuiwu/PnP-DM-public, `commands.sh` on
`configs/sampler/pnp_edm.yaml`): 100 iterations, rho 10 decaying by 0.9 to 0.3 (0.1 for phase retrieval:
its task configs), 100-level EDM grid, the reverse SDE of the `edm` discretisation, Langevin 100 steps of
1e-4. A PnP iteration costs the levels below rho_k in network evaluations (none with gradients).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import likelihoods, prior as prior_lib
from dps_jax.operators import spectral
from dps_jax.solvers import base, proximal

MODES = ("vp", "ve", "iddpm", "edm")
# The noise levels a DDPM network is read at through EDM's VPPrecond (`prior.x0_at_sigma`): the continuous
# VP schedule's sigma at s = 1e-3 and s = 1.
VP_EPSILON_T = 1e-3


def vp_sigma(t, beta_d=prior_lib.VP_BETA_D, beta_min=prior_lib.VP_BETA_MIN):
    return np.sqrt(np.exp(0.5 * beta_d * t ** 2 + beta_min * t) - 1.0)


def vp_sigma_f32(t):
    """vp_sigma in float32, as VPPrecond computes its range (sigma_min 0.0104838, not 0.0104860)."""
    t, f = np.float32(t), np.float32
    return float(np.sqrt(np.exp(f(0.5 * prior_lib.VP_BETA_D) * t ** 2 + f(prior_lib.VP_BETA_MIN) * t) - f(1)))


NET_SIGMA_MIN, NET_SIGMA_MAX = vp_sigma_f32(VP_EPSILON_T), vp_sigma_f32(1.0)


@flax.struct.dataclass
class Options:
    steps: int = base.static_field(100)                # PnP iterations
    rho: float = base.static_field(10.0)               # the coupling's std at the first iteration ...
    rho_decay: float = base.static_field(0.9)          # ... times this per iteration ...
    rho_min: float = base.static_field(0.3)            # ... down to this (0.1 for phase retrieval)
    mode: str = base.static_field("edm")               # the prior step's EDM discretisation, from MODES
    sde: bool = base.static_field(True)                # reverse SDE (else the probability-flow ODE)
    denoiser_steps: int = base.static_field(100)       # levels of the prior step's grid
    langevin_steps: int = base.static_field(100)       # likelihood step for a nonlinear A
    langevin_lr: float = 1e-4                          # ... and its step size gamma
    cg_iterations: int = base.static_field(50)         # linear A without an SVD: perturb-then-solve by CG

    def check(self) -> None:
        for name in ("steps", "denoiser_steps", "langevin_steps", "cg_iterations"):
            base.check_int(f"pnpdm {name}", getattr(self, name), 2 if name == "denoiser_steps" else 1)
        if self.mode not in MODES:
            raise ValueError(f"unknown pnpdm mode {self.mode!r}; expected one of {MODES}")
        base.check_finite_number("pnpdm rho", self.rho, 1e-12)
        base.check_finite_number("pnpdm rho_min", self.rho_min, 1e-12)
        base.check_finite_number("pnpdm langevin_lr", self.langevin_lr)
        if not (np.isfinite(self.rho_decay) and 0.0 < self.rho_decay <= 1.0):
            raise ValueError(f"pnpdm rho_decay must be in (0, 1], got {self.rho_decay!r}")


# ---- the prior step: EDM's Euler sampler from the first level below rho ----------------------------

def schedule_functions(mode: str, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3):
    """(sigma(t), sigma'(t), sigma^-1, s(t), s'(t)) of EDM's time parametrisation for `mode` (numpy,
    float64). vp: the VP SDE refitted to [sigma_min, sigma_max] with scaling s(t) = 1 / sqrt(1 + sigma^2);
    ve: sigma = sqrt(t); iddpm and edm: sigma = t; s = 1 for the last three."""
    if mode == "vp":
        beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - np.log(sigma_max ** 2 + 1)) / (epsilon_s - 1)
        beta_min = np.log(sigma_max ** 2 + 1) - 0.5 * beta_d
        sigma = lambda t: vp_sigma(t, beta_d, beta_min)
        dsigma = lambda t: 0.5 * (beta_min + beta_d * t) * (sigma(t) + 1 / sigma(t))
        inv = lambda s: (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log(s ** 2 + 1)) - beta_min) / beta_d
        scale = lambda t: 1 / np.sqrt(1 + sigma(t) ** 2)
        dscale = lambda t: -sigma(t) * dsigma(t) * scale(t) ** 3
        return sigma, dsigma, inv, scale, dscale
    one, zero = (lambda t: np.ones_like(t)), (lambda t: np.zeros_like(t))
    if mode == "ve":
        return np.sqrt, (lambda t: 0.5 / np.sqrt(t)), (lambda s: s ** 2), one, zero
    return (lambda t: t), one, (lambda s: s), one, zero


def sigma_levels(mode: str, n: int, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3,
                 rho: float = 7.0, m: int = 1000, c1: float = 1e-3, c2: float = 8e-3) -> np.ndarray:
    """EDM's n noise levels of `mode`, decreasing from sigma_max to sigma_min (float64, (n,))."""
    i = np.arange(n, dtype=np.float64)
    if mode == "vp":
        t = 1 + i / (n - 1) * (epsilon_s - 1)
        return schedule_functions("vp", sigma_min, sigma_max, epsilon_s)[0](t)
    if mode == "ve":
        return np.sqrt(sigma_max ** 2 * (sigma_min ** 2 / sigma_max ** 2) ** (i / (n - 1)))
    if mode == "iddpm":
        # the improved-DDPM cosine schedule's levels, u_{j-1}^2 + 1 = (u_j^2 + 1) / max(ab_{j-1} / ab_j, c1)
        # (in float32, as the reference computes the cosine; the levels themselves in float64)
        f32 = np.float32
        ab = lambda j: np.sin(f32(0.5 * np.pi) * f32(j) / f32(m) / f32(c2 + 1)) ** 2
        u = np.zeros(m + 1)
        for j in range(m, 0, -1):
            u[j - 1] = np.sqrt((u[j] ** 2 + 1) / np.float64(max(ab(j - 1) / ab(j), f32(c1))) - 1)
        kept = u[(u >= sigma_min) & (u <= sigma_max)]
        return kept[np.round((len(kept) - 1) / (n - 1) * i).astype(np.int64)]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + i / (n - 1) * (b - a)) ** rho


def denoiser_table(options: Options):
    """The prior step's Euler steps i = 0 .. n-1 of the grid t_0 > ... > t_{n-1} > t_n = 0 (numpy, (n,)
    each): x <- x + dt (a x - b D(x inv_scale; sigma)) + c z, and sigma(t_i) that the start is read from.

    The levels lie in the prior's range [sigma(1e-3), sigma(1)] of the VP schedule read by VPPrecond,
    intersected with each mode's own default range (vp: the same; ve: [0.02, 100]; iddpm: [0.002, 81];
    edm: [0.002, 80])."""
    mode, n = options.mode, options.denoiser_steps
    lo = {"vp": float(vp_sigma(VP_EPSILON_T)), "ve": 0.02, "iddpm": 0.002, "edm": 0.002}[mode]
    hi = {"vp": float(vp_sigma(1.0)), "ve": 100.0, "iddpm": 81.0, "edm": 80.0}[mode]
    lo, hi = max(lo, NET_SIGMA_MIN), min(hi, NET_SIGMA_MAX)
    sigma, dsigma, inv, scale, dscale = schedule_functions(mode, lo, hi)
    t = np.append(inv(sigma_levels(mode, n, lo, hi)), 0.0)
    cur, nxt = t[:-1], t[1:]
    lam = 2.0 if options.sde else 1.0
    s, ds, sg, dsg = scale(cur), dscale(cur), sigma(cur), dsigma(cur)
    c = s * np.sqrt(2 * dsg * sg) * np.sqrt(cur - nxt) if options.sde else np.zeros(n)
    c = np.where(np.arange(n) == n - 1, 0.0, c)       # no noise after the last level
    return {"sigma": sg, "inv_scale": 1 / s, "a": lam * dsg / sg + ds / s, "b": lam * dsg * s / sg,
            "dt": nxt - cur, "c": c, "t": t, "sigma_t": sigma(t), "scale_t": scale(t)}


def start_index(table, rho: float) -> int:
    """The first level of the grid below rho (n when only t_n = 0 is)."""
    return int(np.min(np.nonzero(table["sigma_t"] < rho)[0]))


def prior_step(prior, z, start, start_scale, table, noise_at):
    """x ~ p(x_0 | x_0 + rho n = z): Euler steps start .. n-1 of `table` from z scaled by s(t_start).

    z (H, W, C); start: int (traced); noise_at(i) -> the level's N(0, I) draw (H, W, C)."""
    tab = {k: jnp.asarray(table[k], jnp.float32) for k in ("sigma", "inv_scale", "a", "b", "dt", "c")}

    def body(i, x):
        d = prior_lib.x0_at_sigma(prior, x * tab["inv_scale"][i], tab["sigma"][i])
        x_next = x + tab["dt"][i] * (tab["a"][i] * x - tab["b"][i] * d)
        return x_next + tab["c"][i] * noise_at(i)

    return jax.lax.fori_loop(start, len(table["a"]), body, z * start_scale)


# ---- the likelihood step ------------------------------------------------------------------------------

def gaussian_step_spectral(sp: spectral.Spectral, y, x, sigma_y, rho, noise):
    """z ~ N(Q^-1 (A^T y / sigma_y^2 + x / rho^2), Q^-1), Q = A^T A / sigma_y^2 + I / rho^2, through
    A = U S V^T. x, noise (H, W, C): the draw in V's coordinates."""
    s = sp.singulars
    q = s ** 2 / sigma_y ** 2 + 1 / rho ** 2
    v = (s * spectral.measurement_to_spectral(sp, y) / sigma_y ** 2 + spectral.to_spectral(sp, x) / rho ** 2) / q
    return spectral.from_spectral(sp, v + noise / jnp.sqrt(q))


def gaussian_step_cg(problem, x, sigma_y, rho, noise_y, noise_x, iterations: int):
    """The same draw without an SVD: the minimiser of ||y + sigma_y e1 - A z||^2 / sigma_y^2
    + ||z - x - rho e2||^2 / rho^2 (e1 (M...), e2 (H, W, C) the noises), by conjugate gradients."""
    perturbed = problem.replace(y=problem.y + sigma_y * noise_y)
    return proximal.solve_cg(perturbed, x, x + rho * noise_x, sigma_y ** 2 / rho ** 2, iterations)


def langevin_step(problem, x, sigma_y, rho, lr, noise_at, num: int):
    """z by `num` unadjusted Langevin steps from x on -||A z - y||^2 / (2 sigma_y^2) - ||z - x||^2 / (2 rho^2);
    noise_at(i) -> the step's N(0, I) draw (H, W, C)."""
    data = lambda z: jnp.sum((problem.op(z) - problem.y) ** 2) / (2 * sigma_y ** 2)

    def body(i, z):
        return z - lr * jax.grad(data)(z) - (lr / rho ** 2) * (z - x) + jnp.sqrt(2 * lr) * noise_at(i)

    return jax.lax.fori_loop(0, num, body, x)


# ---- the solver ---------------------------------------------------------------------------------------

def couplings(options: Options) -> np.ndarray:
    """rho_k = max(rho rho_decay^k, rho_min), k = 0 .. steps - 1 (float64)."""
    k = np.arange(options.steps)
    return np.maximum(options.rho * options.rho_decay ** k, options.rho_min)


def grid(options: Options, schedule: base.Schedule) -> base.Grid:
    """One row per PnP iteration: rho_k, the prior step's first level and the scale there; the levels
    below rho_k are its network evaluations."""
    table = denoiser_table(options)
    rhos = couplings(options)
    starts = np.array([start_index(table, r) for r in rhos])
    n = options.denoiser_steps
    xs = {"rho": jnp.asarray(rhos, jnp.float32), "start": jnp.asarray(starts, jnp.int32),
          "start_scale": jnp.asarray(table["scale_t"][starts], jnp.float32)}
    return base.Grid(xs, int(np.sum(n - starts)))


def check(problem, options: Options) -> None:
    sigma = float(np.asarray(problem.sigma))
    if not sigma > 0:
        raise ValueError(f"solver 'pnpdm' needs measurement noise sigma > 0 (its likelihood step is a draw "
                         f"from p(y | z)), got {sigma!r}")


def init(key, problem, prior, options, image_shape):
    """0 for a linear A (the reference's start for its blurs; it starts its SVD super-resolution from A^+ y,
    which on a blur would divide the noise by singular values down to 1e-12), N(0, I) for a nonlinear one."""
    shape = tuple(image_shape)
    return jnp.zeros(shape, jnp.float32) if problem.op.linear else jax.random.normal(key, shape, jnp.float32)


def draw(key, state, problem, options):
    """Keys for the likelihood step's and the prior step's draws (made level by level in the loops)."""
    return {"likelihood": jax.random.fold_in(key, 1), "prior": jax.random.fold_in(key, 2)}


def likelihood_step(problem, x, rho, key, options: Options):
    shape, sigma_y = x.shape, problem.sigma
    if problem.aux is not None:
        return gaussian_step_spectral(problem.aux, problem.y, x, sigma_y, rho,
                                      jax.random.normal(key, shape, jnp.float32))
    if problem.op.linear:
        return gaussian_step_cg(problem, x, sigma_y, rho, jax.random.normal(key, jnp.shape(problem.y), jnp.float32),
                                jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32),
                                options.cg_iterations)
    noise_at = lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
    return langevin_step(problem, x, sigma_y, rho, options.langevin_lr, noise_at, options.langevin_steps)


def update(x, row, noise, problem, prior, options: Options):
    """One split-Gibbs iteration; the state is x (H, W, C), the current draw of x_0 (recorded as x0_hat)."""
    z = likelihood_step(problem, x, row["rho"], noise["likelihood"], options)
    noise_at = lambda i: jax.random.normal(jax.random.fold_in(noise["prior"], i), z.shape, jnp.float32)
    x = prior_step(prior, z, row["start"], row["start_scale"], denoiser_table(options), noise_at)
    return x, {"distance": likelihoods.distance(problem.y, problem.op(x), "gaussian"), "x0_hat": x}


SOLVER = base.Solver("pnpdm", Options, init=init, update=update, draw=draw, grid=grid, check=check,
                     needs=frozenset({"sigma", "svd_where_linear"}))
