"""What every solver is made of, and the pieces the diffusion solvers share.

A solver is four pure functions over an explicit state, run by one loop (`solvers.loop`) that knows
nothing of which solver runs:

    state = init(key, problem, prior, options, image_shape)
    noise = draw(key, state, problem, options)                        # this step's randomness
    state, record = update(state, c, noise, problem, prior, options)  # c: this step's row of xs
    x = result(state)

One step is `update` after `draw`; keeping them apart lets a test replay recorded noise (teacher
forcing against reference trajectories). A diffusion solver steps over the rows of the coefficient table
(`diffusion.StepCoefficients`, reverse time order); an iterative solver (ADMM, ER/HIO) over its iteration
index 0 .. iterations - 1. `record` is a dict: its scalars (e.g. the distance ||y - A(x0_hat)||) are kept
for every step, its images (e.g. x0_hat) every `record_every` steps.

Options are `flax.struct` dataclasses: float fields are arrays of the compiled program (a new step size
reuses it), every other field is static (`static_field`: part of the program, hashable).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.diffusion import StepCoefficients
from dps_jax.likelihoods import NOISE_MODELS
from dps_jax.operators import Operator, spec as operator_spec
from dps_jax.prior import Denoised

KINDS = ("diffusion", "iterative")
SAMPLERS = ("ddpm", "ddim")


def static_field(default):
    """An option that is part of the compiled program (a name, a count, a switch)."""
    return flax.struct.field(pytree_node=False, default=default)


@flax.struct.dataclass
class Problem:
    """One inverse problem y = noise(A(x)): `op` is A with its data, `noise` the noise model's name.

    sigma: the Gaussian noise std of y, for the methods that model it (DDRM); NaN when not stated.
    aux: what a solver's `prepare` computed from the problem on the host (DDRM: the SVD of A).
    """
    op: Operator
    y: Any
    noise: str = static_field("gaussian")
    sigma: Any = float("nan")
    aux: Any = None


def make_problem(op: Operator, y, image_shape, noise: str = "gaussian", sigma: Optional[float] = None) -> Problem:
    """A checked Problem: y has the shape A gives images of `image_shape` and no NaN or Inf; `sigma`, the
    Gaussian noise std of y, is needed only by methods that model the noise (DDRM)."""
    if noise not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {noise!r}; expected one of {NOISE_MODELS}")
    if sigma is not None:
        check_finite_number("noise sigma", sigma)
    expected = jax.eval_shape(op, jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)).shape
    y = np.asarray(y, np.float32)
    if tuple(y.shape) != tuple(expected):
        raise ValueError(f"measurement has shape {tuple(y.shape)}; the operator {op.name!r} gives "
                         f"{tuple(expected)} for images of shape {tuple(image_shape)}")
    bad = ~np.isfinite(y)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"measurement contains {int(bad.sum())} NaN/Inf values (first at index {idx})")
    return Problem(op=op, y=jnp.asarray(y), noise=noise,
                   sigma=np.float32("nan" if sigma is None else sigma))


class Solver(NamedTuple):
    """A method, as the loop runs it (see the module docstring for the four functions)."""
    name: str
    Options: type                                  # its options dataclass (defaults: the paper's)
    init: Callable
    draw: Callable
    update: Callable
    result: Callable = lambda state: state
    kind: str = "diffusion"                        # "diffusion" or "iterative"
    check: Optional[Callable] = None               # (problem, options) -> None; raises if unsupported
    # (problem, options, image_shape) -> problem with `aux` set: host work before compiling (an SVD)
    prepare: Optional[Callable] = None
    # options -> respacing, for a method that fixes its own schedule (DDRM's strided 20 steps); the
    # run's steps and respacing are then not used
    fixed_schedule: Optional[Callable] = None
    # options -> the step inputs of a diffusion solver that walks its own grid of noise levels instead of
    # the coefficient table (DAPS's annealing sigmas); the run's steps and respacing are then not used
    own_steps: Optional[Callable] = None
    # options -> network evaluations per sample, for a solver that makes other than one per step (DAPS)
    evaluations: Optional[Callable] = None
    # options -> the model an iterative solver brings itself (PnP-ADMM's denoiser); it is passed where
    # diffusion solvers get the prior
    own_model: Optional[Callable] = None


def make_options(solver: Solver, **values):
    """The solver's Options with `values` set; unknown names and bad values are errors naming them."""
    known = {f.name: f for f in dataclasses.fields(solver.Options)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for solver {solver.name!r}; "
                         f"it takes {sorted(known) or 'no options'}")
    for name, v in values.items():
        if known[name].metadata.get("pytree_node", True):      # a traced number: one dtype, any value
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"solver {solver.name!r} option {name} must be a number, got {v!r}")
            values[name] = float(v)
    options = solver.Options(**values)
    if hasattr(options, "check"):
        options.check()
    return options


def with_sampler(solver: Solver, options: dict, sampler: str, eta: float) -> dict:
    """`options` plus the shared DDPM/DDIM choice, for a solver whose Options take it (DiffusionOptions)."""
    fields = {f.name for f in dataclasses.fields(solver.Options)}
    if set(DIFFUSION_FIELDS) <= fields:
        return {"sampler": sampler, "eta": eta, **options}
    return dict(options)


def option_defaults(solver: Solver, exclude=()) -> dict:
    """{name: default} of a solver's options (for config sections and documentation)."""
    return {f.name: f.default for f in dataclasses.fields(solver.Options) if f.name not in exclude}


def check_int(name: str, value, low: int) -> int:
    """value as an int, or a ValueError naming it if it is not an integer >= low."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_finite_number(name: str, value, low: float = 0.0) -> None:
    if not (np.isfinite(value) and value >= low):
        raise ValueError(f"{name} must be a finite number >= {low:g}, got {value!r}")


# ---- shared by the diffusion solvers -------------------------------------------------------------

@flax.struct.dataclass
class DiffusionOptions:
    """The unconditional reverse step every diffusion solver takes: DDPM, or DDIM with stochasticity eta."""
    sampler: str = static_field("ddpm")
    eta: float = 0.0

    def check(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {SAMPLERS}")
        check_finite_number("DDIM eta", self.eta)


DIFFUSION_FIELDS = tuple(f.name for f in dataclasses.fields(DiffusionOptions))


def start(key, problem, prior, options, image_shape: Tuple[int, ...]):
    """x_T ~ N(0, I) of shape image_shape (the `init` of most diffusion solvers; the state is x_t)."""
    return jax.random.normal(key, tuple(image_shape), jnp.float32)


def draw_x(key, x_t, problem, options):
    """The sampling noise of one reverse step: {"x": z ~ N(0, I) of x_t's shape}."""
    return {"x": jax.random.normal(key, x_t.shape, x_t.dtype)}


def draw_x_and_y(key, x_t, problem, options):
    """Sampling noise and the noise that takes y to the level of the step (y_t = q_sample(y)).

    The sampling noise comes from `key` itself, as in `draw_x`, so solvers that differ only in their
    conditioning take the same unconditional steps from the same key; anything else a solver draws comes
    from fold_in(key, 1), fold_in(key, 2), ...
    """
    return {**draw_x(key, x_t, problem, options),
            "y": jax.random.normal(jax.random.fold_in(key, 1), jnp.shape(problem.y), x_t.dtype)}


def reverse_update(x_t, den: Denoised, c: StepCoefficients, noise_x, options: DiffusionOptions):
    """The unconditional x'_{t-1} from x_t and the network's view of it, for one image (H, W, C).

    DDPM: mean + exp(log_variance / 2) z. DDIM: sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - s^2) eps + s z,
    s = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev). No noise at the last step (index 0).
    """
    last = c.index == 0
    if options.sampler == "ddpm":
        return den.mean + jnp.where(last, 0.0, jnp.exp(0.5 * den.log_variance) * noise_x)
    ab, ab_prev = c.alphas_cumprod, c.alphas_cumprod_prev
    sigma = options.eta * jnp.sqrt((1 - ab_prev) / (1 - ab)) * jnp.sqrt(1 - ab / ab_prev)
    x_prime = jnp.sqrt(ab_prev) * den.x0_hat + jnp.sqrt(1 - ab_prev - sigma ** 2) * den.eps
    return x_prime + jnp.where(last, 0.0, sigma * noise_x)


def needs_projection(solver_name: str, or_correction: bool = False):
    """A `check` for solvers that project onto {x : A(x) = y}: A must be linear with a projection, or with
    `or_correction` a nonlinear A with a data-consistency step x + y - A(x) (`Operator.correct`)."""
    def check(problem: Problem, options) -> None:
        if or_correction and operator_spec(problem.op.name).correct is not None:
            return
        if not problem.op.linear:
            raise ValueError(f"solver {solver_name!r} needs a linear operator with a projection; "
                             f"{problem.op.name!r} is nonlinear: use 'ps'")
    return check


def needs_gaussian_sigma(solver_name: str):
    """A `check` for solvers that model Gaussian measurement noise of a known std (the problem's `sigma`)."""
    def check(problem: Problem, options) -> None:
        if problem.noise != "gaussian":
            raise ValueError(f"solver {solver_name!r} models Gaussian measurement noise; got {problem.noise!r} "
                             f"noise: use 'ps'")
        if not np.isfinite(float(np.asarray(problem.sigma))):
            raise ValueError(f"solver {solver_name!r} needs the Gaussian noise std of y: make_problem(..., "
                             f"sigma=...) (api.sample(..., sigma=...))")
    return check

