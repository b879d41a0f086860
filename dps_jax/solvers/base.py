"""What every solver is made of, and the pieces the diffusion solvers share.

A solver is pure functions over an explicit state, run by one loop (`solvers.loop`) that knows nothing of
which solver runs:

    grid = solver.grid(options, schedule)                               # the steps: Grid(xs, evaluations)
    state = init(key, problem, model, options, image_shape)
    noise = draw(key, state, problem, options)                          # this step's randomness
    state, record = update(state, c, noise, problem, model, options)    # c: this step's row of grid.xs
    x = result(state)

One step is `update` after `draw`; keeping them apart lets a test replay recorded noise (teacher forcing
against reference trajectories). `record` is a dict: its scalars (e.g. the distance ||y - A(x0_hat)||) are
kept for every step, its images (e.g. x0_hat) every `record_every` steps. `model` is the diffusion prior for
a diffusion solver, the solver's own network for one that brings it (`Solver.network`: PnP-ADMM's DnCNN),
None otherwise.

What a solver must write: `Options`, `init` and `update`. What it may declare, each with a default:

    draw     default `draw_x`: {"x": N(0, I) of the state's x}
    result   default `state_x`: the state itself, or its "x"
    kind     "diffusion" (default) or "iterative"
    grid     (options, schedule) -> Grid: what the loop scans over and the network evaluations it costs.
             Default: the diffusion coefficient table of `options.steps` (or `options.respacing`) steps for
             a diffusion solver, the iteration indices 0 .. options.steps - 1 for an iterative one.
    needs    what it requires of the problem, from NEEDS (checked, and the SVD attached, by `prepare`)
    check    (problem, options) -> None: anything else it refuses, raising a ValueError
    network  options -> its own network, passed to init / update as `model`

Options are `flax.struct` dataclasses: float fields are arrays of the compiled program (a new step size
reuses it), every other field is static (`static_field`: part of the program, hashable). Every solver's
step count is its option `steps` (diffusion steps, annealing levels or iterations).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, FrozenSet, NamedTuple, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import diffusion, schedule as schedule_lib
from dps_jax.diffusion import StepCoefficients
from dps_jax.likelihoods import NOISE_MODELS
from dps_jax.operators import Operator
from dps_jax.prior import Denoised

KINDS = ("diffusion", "iterative")
SAMPLERS = ("ddpm", "ddim")
# What a solver can require of its problem (`Solver.needs`), each checked by `prepare` with one message.
NEEDS = {
    "linear": "a linear operator",
    "svd": "an operator with an SVD, attached as problem.aux (spectral.Spectral)",
    "svd_or_cg": "a linear operator; its SVD attached as problem.aux where it has one, else aux None "
                 "(conjugate gradients)",
    "svd_where_linear": "nothing of the operator; its SVD attached as problem.aux where it is linear and has one",
    "projection": "a linear operator with a projection onto {x : A x = y}",
    "projection_or_correction": "a projection, or a nonlinear operator with a data-consistency step "
                                "x + y - A(x) (`Operator.correct`)",
    "gaussian": "Gaussian measurement noise",
    "sigma": "Gaussian measurement noise of a known std (the problem's sigma)",
}


def static_field(default):
    """An option that is part of the compiled program (a name, a count, a switch)."""
    return flax.struct.field(pytree_node=False, default=default)


@flax.struct.dataclass
class Problem:
    """One inverse problem y = noise(A(x)): `op` is A with its data, `noise` the noise model's name.

    sigma: the Gaussian noise std of y, for the methods that model it (DDRM); NaN when not stated.
    aux: what `prepare` computed from the problem on the host (the SVD of A for spectral solvers).
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


class Schedule(NamedTuple):
    """The prior's discrete diffusion process, as a step grid is cut from it."""
    name: str = "linear"
    num_timesteps: int = 1000


class Grid(NamedTuple):
    """The steps of a run: `xs`, what the loop scans over (a pytree of arrays with one row per step), and the
    network evaluations one sample costs over the run."""
    xs: Any
    evaluations: int


def state_x(state):
    """The state itself, or its "x" (the default `result`)."""
    return state["x"] if isinstance(state, dict) else state


def draw_x(key, state, problem, options):
    """The sampling noise of one step: {"x": z ~ N(0, I) of the state's x} (the default `draw`)."""
    x = state_x(state)
    return {"x": jax.random.normal(key, x.shape, x.dtype)}


def table_grid(respacing: Optional[Callable] = None):
    """A grid hook over the rows of the diffusion coefficient table (reverse time order), one network
    evaluation each: `respacing(options)` steps, or by default `options.respacing` or `options.steps`."""
    def grid(options, schedule: Schedule) -> Grid:
        steps = check_int("steps", options.steps, 1)
        num_timesteps = check_int("num_timesteps", schedule.num_timesteps, 1)
        spacing = respacing(options) if respacing is not None else (options.respacing or steps)
        if not isinstance(spacing, str) and spacing > num_timesteps:
            raise ValueError(f"steps {steps} exceeds num_timesteps {num_timesteps}")
        tables = schedule_lib.build_tables(schedule.name, num_timesteps, spacing)
        xs = diffusion.step_coefficients(tables)
        return Grid(xs, int(xs.t_model.shape[0]))
    return grid


def reference_stride(options) -> str:
    """The steps of DDRM's runner and RED-diff's `get_timesteps`: range(0, T, T // steps) ("strideN"; one
    more step than asked where steps does not divide T), unless `options.respacing` names others."""
    return getattr(options, "respacing", "") or f"stride{options.steps}"


def iteration_grid(options, schedule: Schedule) -> Grid:
    """The iteration indices 0 .. options.steps - 1; no network evaluations."""
    return Grid(jnp.arange(check_int("steps", options.steps, 1), dtype=jnp.int32), 0)


class Solver(NamedTuple):
    """A method, as the loop runs it (see the module docstring for each field)."""
    name: str
    Options: type                                  # its options dataclass (defaults: the reference's)
    init: Callable
    update: Callable
    draw: Callable = draw_x
    result: Callable = state_x
    kind: str = "diffusion"                        # "diffusion" or "iterative"
    grid: Optional[Callable] = None                # None: table_grid() / iteration_grid by kind
    needs: FrozenSet[str] = frozenset()            # from NEEDS
    check: Optional[Callable] = None               # (problem, options) -> None; raises if unsupported
    network: Optional[Callable] = None             # options -> the solver's own network (`model`)

    def step_grid(self, options, schedule: Schedule = Schedule()) -> Grid:
        """The run's Grid: the solver's own hook, else the default of its kind."""
        if self.grid is None and not hasattr(options, "steps"):
            raise ValueError(f"solver {self.name!r} has no `steps` option: derive its Options from "
                             f"base.TableOptions (diffusion) or give it a `steps` field, or give it a grid hook")
        hook = self.grid or (table_grid() if self.kind == "diffusion" else iteration_grid)
        return hook(options, schedule)


def prepare(solver: Solver, problem: Problem, options, image_shape) -> Problem:
    """`problem` checked against what the solver needs (one ValueError naming the first unmet need) and
    its own `check`, with the operator's SVD attached as `aux` where the solver uses one."""
    name, op, needs = solver.name, problem.op, solver.needs
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"solver {name!r} declares unknown needs {sorted(unknown)}; expected some of {sorted(NEEDS)}")
    if {"linear", "svd", "svd_or_cg"} & needs and not op.linear:
        what = "a linear operator with an SVD" if "svd" in needs else "a linear operator"
        raise ValueError(f"solver {name!r} needs {what}; {op.name!r} is nonlinear: use 'ps'")
    if "projection" in needs and not op.has_projection:
        what = "is nonlinear" if not op.linear else "has no projection"
        raise ValueError(f"solver {name!r} needs a linear operator with a projection; {op.name!r} {what}: use 'ps'")
    if "projection_or_correction" in needs and not (op.has_projection or op.has_correction):
        what = "is nonlinear with no data-consistency step" if not op.linear else "has neither"
        raise ValueError(f"solver {name!r} needs a linear operator with a projection, or a data-consistency "
                         f"step; {op.name!r} {what}: use 'ps'")
    if {"gaussian", "sigma"} & needs and problem.noise != "gaussian":
        raise ValueError(f"solver {name!r} models Gaussian measurement noise; got {problem.noise!r} noise: use 'ps'")
    if "sigma" in needs and not np.isfinite(float(np.asarray(problem.sigma))):
        raise ValueError(f"solver {name!r} needs the Gaussian noise std of y: make_problem(..., sigma=...) "
                         f"(api.sample(..., sigma=...))")
    if solver.check is not None:
        solver.check(problem, options)
    cutoff = getattr(options, "cutoff", 0.0)
    if problem.aux is None and "svd" in needs:
        problem = problem.replace(aux=op.svd(image_shape, cutoff=cutoff))
    elif problem.aux is None and {"svd_or_cg", "svd_where_linear"} & needs and op.linear and op.has_svd:
        try:
            problem = problem.replace(aux=op.svd(image_shape, cutoff=cutoff))
        except ValueError:             # an operator whose data admit no cheap SVD: conjugate gradients
            pass
    return problem


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
class TableOptions:
    """The steps of a solver that walks the diffusion coefficient table (`table_grid`): `steps` evenly
    spaced, or an explicit respacing such as "ddim50" or "10,20,30", which replaces it."""
    steps: int = static_field(1000)
    respacing: str = static_field("")

    def check(self) -> None:
        check_int("steps", self.steps, 1)


@flax.struct.dataclass
class DiffusionOptions(TableOptions):
    """TableOptions plus the unconditional reverse step, DDPM or DDIM with stochasticity eta, that the
    diffusion solvers take. Each solver's defaults are its reference's (PiGDM: DDIM)."""
    sampler: str = static_field("ddpm")
    eta: float = 0.0

    def check(self) -> None:
        TableOptions.check(self)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {SAMPLERS}")
        check_finite_number("DDIM eta", self.eta)


def start(key, problem, prior, options, image_shape: Tuple[int, ...]):
    """x_T ~ N(0, I) of shape image_shape (the `init` of most diffusion solvers; the state is x_t)."""
    return jax.random.normal(key, tuple(image_shape), jnp.float32)


def draw_nothing(key, state, problem, options):
    """No randomness (deterministic iterative solvers)."""
    return {}


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
