"""MCGdiff, Monte Carlo guided diffusion (Cardoso, Janati el Idrissi, Le Corff, Moulines, ICLR 2024), for
linear A = U Sigma V^T with Gaussian noise: a particle filter over the DDIM chain, asymptotically exact as
the particles grow.

Each posterior sample is one run of P particles in the spectral coordinates v = V^T x of A (the DDIM chain
commutes with an orthogonal change of basis; the network is asked at x = V v). A coordinate i with an
observation, singular value s_i > 0 and ybar = U^T y, joins the filter at its own time tau_i: the grid time
where the diffusion's noise matches the observation's, sigma_y^2 ab_t ~ (1 - ab_t) s_i^2 (tau_i = 0 when
sigma_y = 0); from then on it is tied to the rescaled observation yr_i = sqrt(ab_{tau_i}) ybar_i / s_i.
For one transition t -> t' of the grid, with DDIM mean m (eta) and std n, rho = ab_t / ab_{tau_i},
rho' = ab_{t'} / ab_{tau_i} and kappa the small variance that keeps the potentials proper:

    log w(particle) = log N(m_i; yr_i sqrt(rho'_i), n^2 + 1 - (1 - kappa) rho'_i)   over i active at t'
                    - log N(v_i; yr_i sqrt(rho_i), 1 - (1 - kappa) rho_i)             over i active at t
    ancestors ~ multinomial(w); with K_i = n^2 / (n^2 + 1 - (1 - kappa) rho'_i), z ~ N(0, I):
    v'_i = K_i yr_i sqrt(rho'_i) + (1 - K_i) m_i + sqrt((1 - (1 - kappa) rho'_i) K_i) z_i   (active at t')
    v'_i = m_i + n z_i                                                                      (the others)

(m of the ancestor). Below the smallest tau the particles follow the plain DDIM chain; the last weights are
the likelihood of y at x_0 over the potential the particles carried there (or minus that potential when
sigma_y = 0), and the sample is one particle drawn by them, mapped back by V and clipped to [-1, 1] as the
reference's image script does (for a prior that clips its x0_hat, i.e. of images). The grid is the reference's: `steps` times linspace(0, T - 1, steps) (floored),
so steps - 1 transitions and P (steps - 1) network evaluations per sample; `timesteps` sets another grid (its
Gaussian-mixture benchmark's, adapted to A and sigma_y: `adapted_timesteps`). Defaults from its configs
(`mcg_diff/default.yaml`, `diffusion/ddim_100.yaml`): 64 particles, 100 times, eta 1, kappa 1e-4.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import likelihoods, prior as prior_lib, schedule as schedule_lib
from dps_jax.operators import spectral
from dps_jax.solvers import base


@flax.struct.dataclass
class Options:
    particles: int = base.static_field(64)             # P, particles per posterior sample
    steps: int = base.static_field(100)                # grid times linspace(0, T - 1, steps): steps - 1 transitions
    eta: float = 1.0                                   # DDIM stochasticity of the transitions
    kappa: float = 1e-4                                # the reference's gaussian_var
    timesteps: str = base.static_field("")             # "t0,t1,...": this grid instead of steps' linspace

    def check(self) -> None:
        base.check_int("mcgdiff particles", self.particles, 1)
        base.check_int("mcgdiff steps", self.steps, 2)
        if self.timesteps:
            parse_timesteps(self.timesteps)
        if not (np.isfinite(self.eta) and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"mcgdiff eta must be in [0, 1], got {self.eta!r}")
        if not (np.isfinite(self.kappa) and 0.0 < self.kappa < 1.0):
            raise ValueError(f"mcgdiff kappa must be in (0, 1), got {self.kappa!r}")


def timesteps(steps: int, num_timesteps: int) -> np.ndarray:
    """The reference's grid: linspace(0, T - 1, steps) floored to integers (increasing; (steps,))."""
    return np.linspace(0, num_timesteps - 1, steps).astype(np.int64)


def parse_timesteps(spec: str) -> np.ndarray:
    """The times of a `timesteps` option "0,2,4,...": strictly increasing integers from 0, at least two."""
    try:
        ts = np.array([int(v) for v in str(spec).split(",")], np.int64)
    except ValueError:
        raise ValueError(f"mcgdiff timesteps {spec!r:.60}: expected comma-separated integers") from None
    if len(ts) < 2 or ts[0] != 0 or np.any(np.diff(ts) <= 0):
        raise ValueError(f"mcgdiff timesteps {spec!r:.60}: expected at least two strictly increasing times "
                         "starting at 0")
    return ts


def adapted_timesteps(alphas_cumprod, singular_values, sigma_y: float, steps: int, taus=None) -> np.ndarray:
    """The grid of MCGdiff's Gaussian-mixture benchmark (its `get_optimal_timesteps_from_singular_values`),
    for one problem: from t = 0, a time wherever sqrt(ab_t) has fallen by (sqrt(ab_0) - sqrt(ab_e)) / (steps -
    1 - k) since the last one, and at each coordinate's tau (the t minimising |sigma_y^2 ab_t - (1 - ab_t)
    s_i^2|; k of them above 0), up to e, the first t with sqrt(ab_t) < 0.01; then ceil(linspace) to T - 1.
    (The reference takes its taus' argmin over the flattened, sorted distances, which is not a time: here
    they are the times its description names; `taus` replaces them.) Returns `steps` increasing times; pass
    them as `timesteps`."""
    ab = np.asarray(alphas_cumprod, np.float64)
    s = np.asarray(singular_values, np.float64).reshape(-1)
    root = np.sqrt(ab)
    if taus is None:
        taus = {int(np.argmin(np.abs(sigma_y ** 2 * ab - (1 - ab) * si ** 2))) for si in s}
    taus = sorted(set(int(t) for t in taus) - {0})
    end = int(np.argmax(root < 1e-2)) if np.any(root < 1e-2) else len(ab) - 1
    if steps - 1 - len(taus) < 1:
        raise ValueError(f"mcgdiff adapted grid: {steps} steps cannot hold the {len(taus)} taus and the ends")
    drop = (root[0] - root[end]) / (steps - 1 - len(taus))
    ts, last = [0], root[0]
    for t in range(1, end):
        if last - root[t] >= drop or t in taus:
            ts.append(t)
            last = root[t]
    rest = steps - len(ts)
    if rest < 1:
        raise ValueError(f"mcgdiff adapted grid: {len(ts)} times before sqrt(ab) < 0.01 exceed steps {steps}")
    ts += np.ceil(np.linspace(ts[-1], len(ab) - 1, rest + 1)).astype(np.int64).tolist()[1:]
    return np.asarray(ts, np.int64)


def grid(options: Options, schedule: base.Schedule) -> base.Grid:
    """One row per transition t -> t_prev, in reverse time; each row also holds the whole grid (times and
    alphas_cumprod), which the taus are read from."""
    num_timesteps = base.check_int("num_timesteps", schedule.num_timesteps, 1)
    if options.timesteps:
        ts = parse_timesteps(options.timesteps)
        if ts[-1] >= num_timesteps:
            raise ValueError(f"mcgdiff timesteps end at {ts[-1]}; the schedule has {num_timesteps} steps")
        steps = len(ts)
    else:
        steps = base.check_int("steps", options.steps, 2)
        if steps > num_timesteps:
            raise ValueError(f"mcgdiff steps {steps} exceeds num_timesteps {num_timesteps}")
        ts = timesteps(steps, num_timesteps)
        if len(np.unique(ts)) != steps:
            raise ValueError(f"mcgdiff steps {steps}: linspace(0, {num_timesteps - 1}, {steps}) repeats a time")
    ab = schedule_lib.build_tables(schedule.name, num_timesteps, num_timesteps).alphas_cumprod
    n = steps - 1
    rows = np.arange(n)[::-1]                           # transition k: ts[k + 1] -> ts[k]
    xs = {"t": jnp.asarray(ts[rows + 1], jnp.int32), "t_prev": jnp.asarray(ts[rows], jnp.int32),
          "ab": jnp.asarray(ab[ts[rows + 1]], jnp.float32), "ab_prev": jnp.asarray(ab[ts[rows]], jnp.float32),
          "index": jnp.asarray(rows, jnp.int32),
          "grid_t": jnp.asarray(np.broadcast_to(ts, (n, steps)), jnp.int32),
          "grid_ab": jnp.asarray(np.broadcast_to(ab[ts], (n, steps)), jnp.float32)}
    return base.Grid(xs, int(options.particles) * n)


def ddim_coefficients(ab, ab_prev, eta):
    """(std n, coefficient of x, coefficient of eps) of the DDIM transition from ab to ab_prev."""
    n = eta * jnp.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    c_x = jnp.sqrt(ab_prev / ab)
    c_eps = jnp.sqrt(1 - ab_prev - n ** 2) - c_x * jnp.sqrt(1 - ab)
    return n, c_x, c_eps


def taus(singulars, observed, sigma_y, grid_t, grid_ab):
    """Each coordinate's time tau_i and ab_{tau_i} (image-shaped), and the smallest tau over the observed
    coordinates: the grid time minimising |sigma_y^2 ab_t - (1 - ab_t) s_i^2| (the first, 0, when sigma_y is 0)."""
    distance = sigma_y ** 2 * grid_ab - (1 - grid_ab) * singulars[..., None] ** 2
    distance = jnp.where(sigma_y > 0, distance, 0.0)
    k = jnp.argmin(jnp.abs(distance), axis=-1)
    tau = jnp.where(observed, grid_t[k], 0)
    tau_min = jnp.min(jnp.where(observed, tau, grid_t[-1]))
    return tau, grid_ab[k], jnp.where(observed.any(), tau_min, 0)


def gauss_loglik(x, mean, var, where):
    """-1/2 sum over `where` of (x - mean)^2 / var (the reference's std clipped to [1e-10, 1e10])."""
    std = jnp.clip(jnp.sqrt(jnp.maximum(var, 0.0)), 1e-10, 1e10)
    return -0.5 * jnp.sum(jnp.where(where, ((x - mean) / std) ** 2, 0.0), axis=tuple(range(-x.ndim + 1, 0)))


def potential(v, t, ab_t, coords, kappa):
    """log N(v_i; yr_i sqrt(rho_i), 1 - (1 - kappa) rho_i) over the coordinates active at t: (P,)."""
    active = coords["observed"] & (t >= coords["tau"])
    rho = ab_t / coords["ab_tau"]
    return gauss_loglik(v, coords["yr"] * jnp.sqrt(rho), 1 - (1 - kappa) * rho, active)


def filter_weights(v, mean, n, t, ab, t_prev, ab_prev, coords, kappa):
    """Log weights (P,) of the transition t -> t_prev for particles v and their DDIM means (P, ...)."""
    active = coords["observed"] & (t_prev >= coords["tau"])
    rho = ab_prev / coords["ab_tau"]
    return (gauss_loglik(mean, coords["yr"] * jnp.sqrt(rho), n ** 2 + 1 - (1 - kappa) * rho, active)
            - potential(v, t, ab, coords, kappa))


def filter_move(mean, n, t_prev, ab_prev, coords, kappa, z, ancestors):
    """The new particles (P, ...) from the ancestors' means: tied to the observation on the coordinates active
    at t_prev (a Kalman step), the plain DDIM transition elsewhere."""
    active = coords["observed"] & (t_prev >= coords["tau"])
    rho = ab_prev / coords["ab_tau"]
    gain = n ** 2 / jnp.clip(n ** 2 + 1 - (1 - kappa) * rho, 1e-10, 1e10)
    m = mean[ancestors]
    tied = (gain * coords["yr"] * jnp.sqrt(rho) + (1 - gain) * m
            + jnp.sqrt(jnp.maximum((1 - (1 - kappa) * rho) * gain, 0.0)) * z)
    return jnp.where(active, tied, m + n * z)


def pick(log_w, u):
    """Indices drawn from the normalised weights by inverse CDF at uniforms u (any shape): multinomial
    resampling, as the reference's Categorical draws."""
    cdf = jnp.cumsum(jax.nn.softmax(log_w))
    return jnp.minimum(jnp.searchsorted(cdf, u * cdf[-1]), log_w.shape[0] - 1)


def check(problem, options) -> None:
    if problem.noise != "gaussian":
        raise ValueError("mcgdiff models Gaussian measurement noise")


def init(key, problem, prior, options: Options, image_shape):
    shape = (options.particles,) + tuple(image_shape)
    v = jax.random.normal(key, shape, jnp.float32)
    zeros = jnp.zeros(options.particles)
    return {"v": v, "x": jnp.zeros(tuple(image_shape), jnp.float32), "previous": zeros, "log_w": zeros,
            "final_log_w": zeros, "ess": jnp.asarray(float(options.particles))}


def draw(key, state, problem, options: Options):
    k_z, k_u, k_pick = jax.random.split(key, 3)
    return {"z": jax.random.normal(k_z, state["v"].shape, jnp.float32),
            "u": jax.random.uniform(k_u, (options.particles,)), "pick": jax.random.uniform(k_pick, ())}


def coordinates(problem, image_shape, c):
    """What the filter needs of the problem in spectral coordinates (image-shaped arrays)."""
    sp, sigma_y = problem.aux, problem.sigma
    s = jnp.broadcast_to(sp.singulars, image_shape)
    observed = (jnp.broadcast_to(sp.observed, image_shape) > 0) & (s > 0)
    y_bar = spectral.measurement_to_spectral(sp, problem.y)
    tau, ab_tau, tau_min = taus(s, observed, sigma_y, c["grid_t"], c["grid_ab"])
    yr = jnp.where(observed, jnp.sqrt(ab_tau) * y_bar / jnp.where(observed, s, 1.0), 0.0)
    return {"observed": observed, "tau": tau, "ab_tau": ab_tau, "yr": yr, "s": s, "y_bar": y_bar}, tau_min


def update(state, c, noise, problem, prior, options: Options):
    sp = problem.aux
    v = state["v"]
    image_shape = v.shape[1:]
    coords, tau_min = coordinates(problem, image_shape, c)
    x = jax.vmap(lambda p: spectral.from_spectral(sp, p))(v)
    eps = jax.vmap(lambda xi: prior_lib.eps_at_step(prior, xi, c["t"], c["ab"]))(x)
    v_eps = jax.vmap(lambda e: spectral.to_spectral(sp, e))(eps)
    n, c_x, c_eps = ddim_coefficients(c["ab"], c["ab_prev"], options.eta)
    mean = c_x * v + c_eps * v_eps
    filtering = c["t_prev"] >= tau_min

    def weighted(_):
        log_w = filter_weights(v, mean, n, c["t"], c["ab"], c["t_prev"], c["ab_prev"], coords, options.kappa)
        # (a test replays a reference's ancestors through noise["ancestors"])
        ancestors = noise["ancestors"] if "ancestors" in noise else pick(log_w, noise["u"])
        new = filter_move(mean, n, c["t_prev"], c["ab_prev"], coords, options.kappa, noise["z"], ancestors)
        return new, 1.0 / jnp.sum(jax.nn.softmax(log_w) ** 2), state["previous"], log_w

    def propagated(_):
        # Entering the plain chain at tau_min: keep the potential the particles carry there.
        previous = jnp.where(c["t"] == tau_min, potential(v, c["t"], c["ab"], coords, options.kappa),
                             state["previous"])
        return mean + n * noise["z"], state["ess"], previous, state["log_w"]

    v_new, ess, previous, step_log_w = jax.lax.cond(filtering, weighted, propagated, None)

    # After the last transition: the final weights, and one particle drawn by them.
    final_potential = jnp.where(tau_min > 0, previous,
                                potential(v_new, c["t_prev"], c["ab_prev"], coords, options.kappa))
    loglik = gauss_loglik(coords["s"] * v_new, coords["y_bar"], problem.sigma ** 2, coords["observed"])
    log_w = jnp.where(tau_min > 0, loglik, 0.0) - final_potential
    chosen = v_new[pick(log_w, noise["pick"])]
    last = c["index"] == 0
    x_chosen = spectral.from_spectral(sp, chosen)
    if prior.clip_denoised:              # images live in [-1, 1] (the reference's image script clips)
        x_chosen = jnp.clip(x_chosen, -1.0, 1.0)
    x_out = jnp.where(last, x_chosen, state["x"])
    x0_hat = (x[0] - jnp.sqrt(1 - c["ab"]) * eps[0]) / jnp.sqrt(c["ab"])
    d = likelihoods.distance(problem.y, problem.op(x0_hat), "gaussian")
    return ({"v": v_new, "x": x_out, "previous": previous, "log_w": step_log_w, "final_log_w": log_w, "ess": ess},
            {"distance": d, "ess": ess, "x0_hat": x0_hat})


SOLVER = base.Solver("mcgdiff", Options, init=init, update=update, draw=draw, grid=grid,
                     needs=frozenset({"svd", "sigma"}), check=check)
