"""The Python API: load a prior, build an operator, draw N posterior samples of y in one call.

    import jax
    from dps_jax import api, operators
    prior = api.load_prior()                                       # the shipped 32 x 32 prior
    op = operators.build("super_resolution", (32, 32, 1), scale_factor=4)
    y = api.measure(op, x, jax.random.PRNGKey(0), noise="gaussian", sigma=0.05)
    out = api.sample(prior, op, y, solver="ps", options={"steps": 100, "scale": 10.0}, num_samples=16)
    out["samples"]                                                 # (16, 32, 32, 1)

`api.sample` builds a `solvers.Runner` (the builder the CLI uses) and runs it once; to sample many
measurements of the same shapes, build the runner once with `solvers.build` and call it for each. A task
config runs as the main job runs it with `api.from_config` (`dps_jax.experiment`).
"""

from __future__ import annotations

import collections
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import config_base, experiment, likelihoods, operators, solvers
from dps_jax import prior as prior_lib
from dps_jax.operators import Operator


def load_prior(path: Optional[str] = None, dtype=None, **options) -> prior_lib.Prior:
    """The prior of a dps_jax checkpoint (the shipped prior by default); see `prior.load`."""
    return prior_lib.load(path, dtype=dtype, **options)


def check_images(x, image_shape=None, what: str = "image") -> np.ndarray:
    """x as float32 (H, W, C) or a batch (N, H, W, C), or a ValueError naming the layout expected and the
    shape given (a channels-first array, the usual mistake, is said so)."""
    x = np.asarray(x, np.float32)
    expected = f"(H, W, C){'' if image_shape is None else ' = ' + str(tuple(image_shape))} in [-1, 1], or a batch (N, H, W, C)"
    channels_first = x.ndim in (3, 4) and x.shape[-3] in (1, 3) and x.shape[-1] not in (1, 3)
    if x.ndim not in (3, 4) or channels_first:
        hint = "; it looks channels-first: np.moveaxis(x, -3, -1)" if channels_first else ""
        raise ValueError(f"{what} has shape {x.shape}; dps_jax takes {expected}{hint}")
    if image_shape is not None and tuple(x.shape[-3:]) != tuple(image_shape):
        raise ValueError(f"{what} has shape {x.shape}; the operator is for images {tuple(image_shape)}: expected {expected}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} holds {int(np.size(x) - np.isfinite(x).sum())} NaN/Inf values")
    return x


def as_operator(op, image_shape) -> Operator:
    """An Operator as it is, or a plain function x -> A(x) wrapped as a (nonlinear) one for images of
    `image_shape` (`operators.from_callables`: declare linear=True there to reach the linear-A solvers)."""
    if isinstance(op, Operator):
        return op
    if callable(op):
        return operators.from_callables(op, image_shape)
    raise TypeError(f"op must be an operators.Operator or a function x -> A(x), got {type(op).__name__}")


def measure(op, x, key, noise: str = "gaussian", sigma: float = 0.05, rate: float = 1.0):
    """A simulated noisy measurement y = noise(A(x)) of one image x (H, W, C), or of each image of a batch
    (N, H, W, C) with its own noise. `op` is an Operator or a plain function x -> A(x)."""
    x = check_images(x, op.image_shape if isinstance(op, Operator) else None)
    op = as_operator(op, x.shape[-3:])
    one = lambda k, image: likelihoods.add_noise(k, op(image), noise, sigma=sigma, rate=rate)
    if x.ndim == 4:
        return jax.vmap(one)(jax.random.split(key, len(x)), jnp.asarray(x))
    return one(key, jnp.asarray(x))


def sample(prior: Optional[prior_lib.Prior], op: Operator, y, *, solver="ps", options: Optional[Mapping] = None,
           num_samples: int = 4, noise: str = "gaussian", sigma: Optional[float] = None, schedule: str = "linear",
           num_timesteps: int = 1000, image_shape=None, seed: int = 0, chunk_size: int = 0, record_every: int = 0,
           steps_per_call: int = 0, progress: Optional[Callable] = None, devices=None, network=None) -> dict:
    """N posterior samples of p(x | y) with a solver (DPS, `ps`, by default). Returns numpy arrays:
    samples (N, H, W, C), distance (N, T), and x_record / x0_hat_record if record_every > 0. A batch of
    measurements y (B, ...) is B problems solved at once, vmapped over (problem, sample) pairs in one compiled
    program (`Runner.call_many`; problem i's key folded from the seed by i), and every output gains a leading
    axis B.

    `solver` is a registered name or a `solvers.Solver`; `options` its options by name, all in one mapping
    (`solvers.get(name).Options`; e.g. {"steps": 100, "scale": 10.0} for ps, {"eta": 0.85, "steps": 20}
    for ddrm); the defaults are the reference's (DPS: 1000 DDPM steps). Iterative solvers need no prior
    (None) but an `image_shape`. `noise` is the noise model of y (it picks the DPS distance) and `sigma` its
    Gaussian noise std (needed by the solvers that model it: ddrm, pigdm, diffpir). `image_shape` defaults
    to the prior's training size. `network` replaces the own network of a solver that brings one
    (PnP-ADMM's DnCNN).
    """
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of the solver's options, got {type(options).__name__}")
    if image_shape is None:
        image_shape = op.image_shape if isinstance(op, Operator) and op.image_shape else None
    if image_shape is None:
        if prior is None or prior.image_shape is None:
            raise ValueError("image_shape=(H, W, C) is needed: the prior does not state its image size")
        image_shape = prior.image_shape
    op = as_operator(op, image_shape)
    build = dict(solver=solver, options=dict(options or {}), schedule=schedule, num_timesteps=num_timesteps,
                 num_samples=num_samples, chunk_size=chunk_size, record_every=record_every,
                 steps_per_call=steps_per_call, devices=devices, network=network)
    runner = _cached_runner(prior, tuple(image_shape), build)
    y_shape = jax.eval_shape(op, jax.ShapeDtypeStruct(runner.image_shape, jnp.float32)).shape
    y = np.asarray(y, np.float32)
    if y.ndim == len(y_shape) + 1 and tuple(y.shape[1:]) == tuple(y_shape):     # B measurements: one program
        problems = [solvers.make_problem(op, yi, runner.image_shape, noise, sigma) for yi in y]
        return runner.call_many(problems, jax.random.PRNGKey(seed), progress)
    problem = solvers.make_problem(op, y, runner.image_shape, noise, sigma)
    return runner(problem, jax.random.PRNGKey(seed), progress)


# The runners of earlier calls, by everything that shapes their compiled programs (the prior's structure and
# shapes, not its values; the solver and its options; the sizes): a repeated call with another y, other prior
# weights or the same operator object reuses the compiled sampler instead of compiling it again.
_RUNNERS: "collections.OrderedDict" = collections.OrderedDict()
RUNNER_CACHE_SIZE = 8


def _cached_runner(prior, image_shape, build: dict):
    """A Runner for these arguments: an earlier call's, given this prior's values, or a new one."""
    if build["network"] is not None:          # a network object's values are not part of the key: build anew
        return solvers.build(prior, image_shape, **build)
    leaves, tree = jax.tree_util.tree_flatten(prior)
    key = (tree, tuple((tuple(getattr(l, "shape", ())), str(getattr(l, "dtype", type(l).__name__))) for l in leaves),
           image_shape, tuple(sorted((k, repr(v)) for k, v in build["options"].items())),
           tuple((k, v if k != "devices" or v is None else tuple(v)) for k, v in build.items() if k != "options"))
    try:
        hash(key)
    except TypeError:                         # an unhashable argument: no caching
        return solvers.build(prior, image_shape, **build)
    runner = _RUNNERS.pop(key, None)
    if runner is None:
        runner = solvers.build(prior, image_shape, **build)
    else:
        if prior is not None and runner.solver.kind == "diffusion":
            runner.model = jax.device_put(prior, runner.replicated)
        if len(runner._compiled) > RUNNER_CACHE_SIZE:      # a new operator function per call: keep memory bounded
            runner._compiled.clear()
    _RUNNERS[key] = runner                    # the newest last; the oldest goes first
    while len(_RUNNERS) > RUNNER_CACHE_SIZE:
        _RUNNERS.popitem(last=False)
    return runner


def task_config(task: str, preset: str = "", **overrides):
    """The config `configs/<task>.py[:preset]` gives the main job, with `overrides` by dotted key
    ({"solver.name": "ps", "solver.ps.steps": 100}); unknown keys are errors."""
    c = config_base.task_config(task, preset)
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        parent = c
        for name in path:
            if name not in parent:
                raise ValueError(f"{key!r}: the config has no {name!r}")
            parent = parent[name]
        if leaf not in parent:
            raise ValueError(f"{key!r}: the config has no {leaf!r}")
        parent[leaf] = value
    return c


def from_config(cfg, prior: Optional[prior_lib.Prior] = None) -> experiment.Experiment:
    """A task config made runnable, as the main job makes it: `exp.measure(x, i)` -> (problem, key),
    `exp.runner(problem, key)` -> samples (`dps_jax.experiment`)."""
    return experiment.setup(cfg, prior)
