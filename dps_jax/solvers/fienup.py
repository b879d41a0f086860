"""Classical phase retrieval by alternating projections: ER (Fienup 1982), HIO (Fienup 1982, 1987) and
OSS (Rodriguez et al. 2013), the paper's phase retrieval baselines (Appendix D.2).

The unknown is g, a real image on the oversampled grid of the measurement (the image zero-padded as
`operators.phase_retrieval` pads it, (H + 2 pad, W + 2 pad, C)). Each iteration:

    g'      = Re F^-1[ y exp(i angle(F g)) ]     the Fourier constraint: measured amplitude, current phase
    C       = {g : g = 0 outside the support S (the unpadded image), lower <= g <= upper inside}
    ER      g <- P_C(g')                         (the nearest point of C)
    HIO     g <- g' where g' satisfies C, else g - beta (g' - P_C(g'))
    OSS     HIO, but outside S the feedback field's Gaussian low-pass W_alpha (g - beta g'), the filter
            width alpha stepping from N down to 1 / N over `stages` equal stages (N: the grid's side);
            the result is the iterate with the smallest residual (its record: that best residual)

The paper's object constraint is "real, non-negative, supported on S"; dps_jax images live in [-1, 1],
so the same constraint here is the image range [lower, upper] = [-1, 1] (non-negativity of x + 1). With
P_C(g') = 0, HIO's rule outside the constraint is Fienup's g - beta g'. That range is symmetric, so x and
-x fit the data equally (as do x and its twin, the 180-degree rotation): the residual cannot tell them
apart, where the paper's non-negativity settled the sign. Starts: N(0, 1) inside S (each
posterior sample is one restart); the record's `residual` is || |F pad(x)| - y || / ||y|| of the current
x = P_C(g) cropped to S, the measurement-only criterion the paper picks the best of 4 restarts by.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from dps_jax.operators.phase_retrieval import amplitude_projection, fft2_centered, ifft2_centered
from dps_jax.solvers import base


@flax.struct.dataclass
class EROptions:
    steps: int = base.static_field(10000)           # iterations: the paper's count
    lower: float = -1.0                               # the image range, the object constraint inside S
    upper: float = 1.0

    def check(self) -> None:
        base.check_int("steps", self.steps, 1)
        if not self.lower < self.upper:
            raise ValueError(f"the image range needs lower < upper, got [{self.lower}, {self.upper}]")


@flax.struct.dataclass
class HIOOptions(EROptions):
    beta: float = 0.9                                 # feedback outside the constraint (the paper's 0.9)

    def check(self) -> None:
        EROptions.check(self)
        base.check_finite_number("beta", self.beta)


@flax.struct.dataclass
class OSSOptions(HIOOptions):
    stages: int = base.static_field(10)              # filter widths, alpha from N down to 1 / N

    def check(self) -> None:
        HIOOptions.check(self)
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or not 1 <= self.stages <= self.steps:
            raise ValueError(f"stages must be an integer in [1, steps], got {self.stages!r}")


def _grid(problem):
    """(pad_h, pad_w) and the support mask S on the padded grid, (H + 2 pad, W + 2 pad, C)."""
    ph, pw = problem.op.data["pad_h"], problem.op.data["pad_w"]
    hp, wp, c = problem.y.shape
    h, w = hp - 2 * ph, wp - 2 * pw
    support = jnp.zeros((hp, wp, c), bool).at[ph:ph + h, pw:pw + w].set(True)
    return ph, pw, h, w, support


def crop(g, problem):
    """The image (H, W, C) inside the support of a padded-grid g."""
    ph, pw, h, w, _ = _grid(problem)
    return g[ph:ph + h, pw:pw + w]


def fourier_projection(g, problem):
    """g' = Re F^-1[y exp(i angle(F g))] on the padded grid, y clipped at 0 (an amplitude; Gaussian
    noise can make it negative)."""
    return amplitude_projection(g, jnp.maximum(problem.y, 0.0))


def object_projection(g, support, options):
    """P_C(g): zero outside the support, clipped to [lower, upper] inside."""
    return jnp.where(support, jnp.clip(g, options.lower, options.upper), 0.0)


def amplitude_residual(x, problem):
    """|| |F pad(x)| - y || / ||y|| for an image x (H, W, C)."""
    y = problem.y
    return jnp.linalg.norm(problem.op(x) - y) / jnp.maximum(jnp.linalg.norm(y), 1e-12)


def check(name):
    def check_operator(problem, options) -> None:
        if problem.op.name != "phase_retrieval":
            raise ValueError(f"solver {name!r} solves Fourier phase retrieval only; the operator is "
                             f"{problem.op.name!r}")
        if problem.op.data.get("unit_range"):
            raise ValueError(f"solver {name!r} iterates on the [-1, 1] image; phase retrieval with "
                             f"unit_range=True is not supported: use 'ps' or 'daps'")
    return check_operator


def _state(g, problem, options):
    """The state {g, x}: the padded-grid iterate and the image it stands for, x = P_C(g) cropped to S."""
    *_, support = _grid(problem)
    return {"g": g, "x": crop(object_projection(g, support, options), problem)}


def init(key, problem, prior, options, image_shape):
    """g_0: N(0, 1) inside the support, 0 outside (the paper's random real start)."""
    *_, support = _grid(problem)
    return _state(jnp.where(support, jax.random.normal(key, support.shape, jnp.float32), 0.0), problem, options)


def result(state):
    return state["x"]


def _step(g_new, problem, options):
    state = _state(g_new, problem, options)
    return state, {"residual": amplitude_residual(state["x"], problem)}


def er_update(state, k, noise, problem, prior, options):
    *_, support = _grid(problem)
    return _step(object_projection(fourier_projection(state["g"], problem), support, options), problem, options)


def _hio(g, problem, options):
    """(g', the feedback g - beta (g' - P_C(g')), where g' satisfies C, the support)."""
    *_, support = _grid(problem)
    g_prime = fourier_projection(g, problem)
    feedback = g - options.beta * (g_prime - object_projection(g_prime, support, options))
    satisfied = support & (g_prime >= options.lower) & (g_prime <= options.upper)
    return g_prime, feedback, satisfied, support


def hio_update(state, k, noise, problem, prior, options):
    g_prime, feedback, satisfied, _ = _hio(state["g"], problem, options)
    return _step(jnp.where(satisfied, g_prime, feedback), problem, options)


def oss_filter_width(k, options, side):
    """alpha of iteration k: `stages` values evenly spaced from side down to 1 / side."""
    if options.stages == 1:
        return jnp.asarray(float(side))
    stage = jnp.minimum(k * options.stages // options.steps, options.stages - 1)
    return side + stage * (1.0 / side - side) / (options.stages - 1)


def low_pass(g, alpha):
    """g filtered by W(q) = exp(-|q|^2 / (2 alpha^2)), q the centred frequency index, per channel."""
    hp, wp = g.shape[0], g.shape[1]
    qy = jnp.arange(hp) - hp // 2
    qx = jnp.arange(wp) - wp // 2
    w = jnp.exp(-(qy[:, None] ** 2 + qx[None, :] ** 2) / (2.0 * alpha ** 2))[..., None]
    return jnp.real(ifft2_centered(fft2_centered(g.astype(jnp.complex64)) * w))


def oss_init(key, problem, prior, options, image_shape):
    """The HIO start, plus the best image so far and its residual (OSS reports its best iterate)."""
    state = init(key, problem, prior, options, image_shape)
    return {**state, "best_x": state["x"], "best_residual": jnp.asarray(jnp.inf, jnp.float32)}


def oss_update(state, k, noise, problem, prior, options):
    """HIO inside the support; outside it, the feedback field low-passed at this stage's width. The
    smoothing keeps moving the iterate, so the result is the iterate with the smallest residual."""
    g_prime, feedback, satisfied, support = _hio(state["g"], problem, options)
    alpha = oss_filter_width(k, options, max(g_prime.shape[0], g_prime.shape[1]))
    outside = low_pass(jnp.where(support, 0.0, feedback), alpha)
    new, record = _step(jnp.where(satisfied, g_prime, jnp.where(support, feedback, outside)), problem, options)
    better = record["residual"] < state["best_residual"]
    new["best_x"] = jnp.where(better, new["x"], state["best_x"])
    new["best_residual"] = jnp.where(better, record["residual"], state["best_residual"])
    return new, {"residual": new["best_residual"]}


def oss_result(state):
    return state["best_x"]


def _solver(name, options, update, init=init, result=result):
    return base.Solver(name, options, init=init, update=update, draw=base.draw_nothing, result=result,
                       kind="iterative", check=check(name))


ER = _solver("er", EROptions, er_update)
HIO = _solver("hio", HIOOptions, hio_update)
OSS = _solver("oss", OSSOptions, oss_update, init=oss_init, result=oss_result)
