"""From a config to the pieces of a run: the prior, the operator and measurement of each image, the runner.

Every command reads its configs through this module, so the main job, the evaluation command, the API and
the benchmarks measure the same images with the same keys and build the same runner:

    exp = experiment.setup(cfg)                       # prior, image shape, Runner
    problem, key = exp.measure(x, index)              # y = noise(A(x)) of image `index`; its sampling key
    out = exp.runner(problem, key)

The key rule: image `index` (its place in the whole folder or split, not in a process's share) takes
k = fold_in(PRNGKey(seed), index) and splits it into (operator, noise, sampling) keys, so image i is
measured alike by every method and every process, and its samples do not depend on the other images.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import config_base, likelihoods, operators, solvers
from dps_jax import prior as prior_lib
from dps_jax.models.checkpoint import SHIPPED_PRIOR

MODEL_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class RunError(ValueError):
    """A problem with the run's configuration or inputs, reported as one line by the CLI."""


# ---- the pieces ----------------------------------------------------------------------------------

def load_prior(cfg) -> prior_lib.Prior:
    if cfg.preset in config_base.PAPER_PRESETS and not cfg.model.checkpoint:
        raise RunError(f"the {cfg.preset} preset needs a converted checkpoint: "
                       f"--config.model.checkpoint=PATH (see `python -m checkpoints_convert --help`)")
    dtype = MODEL_DTYPES.get(cfg.model.dtype)
    if dtype is None:
        raise RunError(f"model.dtype must be one of {sorted(MODEL_DTYPES)}, got {cfg.model.dtype!r}")
    return prior_lib.load(cfg.model.checkpoint or SHIPPED_PRIOR, dtype=dtype, var_type=cfg.model.var_type,
                          clip_denoised=cfg.model.clip_denoised)


def solver_section(cfg) -> str:
    """The config key of the running solver's options, `solver.<key>`."""
    return solvers.config_key(solvers.get(cfg.solver.name).name)


def solver_options(cfg) -> dict:
    """The running solver's options: its section `solver.<name>`, with `sampler.steps` as its step count
    when that is set."""
    section = cfg.solver.get(solver_section(cfg))
    options = dict(section) if section is not None else {}
    if cfg.sampler.steps:
        options["steps"] = cfg.sampler.steps
    return options


def build_runner(cfg, prior, image_shape, num_samples: Optional[int] = None) -> solvers.Runner:
    """The config's Runner; an iterative solver gets no prior (the shipped one only sets the image shape)."""
    if solvers.get(cfg.solver.name).kind == "iterative":
        prior = None
    return solvers.build(prior, image_shape, solver=cfg.solver.name, options=solver_options(cfg),
                         schedule=cfg.diffusion.schedule, num_timesteps=cfg.diffusion.num_timesteps,
                         num_samples=cfg.num_samples if num_samples is None else num_samples,
                         chunk_size=cfg.chunk_size, record_every=cfg.sampler.record_every,
                         snapshots=0 if cfg.sampler.record_every else 10,      # progress.png: x0_hat 10 times
                         steps_per_call=cfg.sampler.steps_per_call)


def build_operator(cfg, image_shape, key) -> operators.Operator:
    options = dict(cfg.operator)
    name = options.pop("name", None)
    if name == "super_resolution":
        f, size = options.get("scale_factor"), image_shape[0]
        if isinstance(f, (int, float)) and float(f).is_integer() and f >= 1 and size % int(f):
            raise RunError(f"operator.scale_factor {f} does not divide data.image_size {size}; "
                           f"pick a factor that divides it (the operator API handles other sizes)")
    return operators.build(name, image_shape, key=key, **options)


def image_keys(seed: int, index: int):
    """(operator, noise, sampling) keys of image `index` (the module's key rule)."""
    return jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), index), 3)


def measure(cfg, x, index: int, image_shape=None) -> Tuple[solvers.Problem, jax.Array]:
    """(the Problem of image x (H, W, C) under the config's operator and noise, its sampling key)."""
    image_shape = tuple(image_shape or np.shape(x))
    k_op, k_noise, k_sample = image_keys(cfg.seed, index)
    op = build_operator(cfg, image_shape, k_op)
    y = likelihoods.add_noise(k_noise, op(jnp.asarray(x)), cfg.noise.name, cfg.noise.sigma, cfg.noise.rate)
    sigma = cfg.noise.sigma if cfg.noise.name == "gaussian" else None
    return solvers.make_problem(op, y, image_shape, cfg.noise.name, sigma), k_sample


@dataclasses.dataclass
class Experiment:
    """A config made runnable: its prior, the image shape and the runner (see the module docstring)."""
    cfg: object
    prior: Optional[prior_lib.Prior]
    image_shape: Tuple[int, int, int]
    runner: solvers.Runner

    def measure(self, x, index: int):
        return measure(self.cfg, x, index, self.image_shape)

    def describe(self) -> str:
        return describe(self.cfg, self.runner)


def setup(cfg, prior: Optional[prior_lib.Prior] = None, image_shape: Optional[Sequence[int]] = None,
          num_samples: Optional[int] = None) -> Experiment:
    """The config's prior (loaded unless given), image shape (default: data.image_size and the prior's
    channels) and runner."""
    prior = prior if prior is not None else load_prior(cfg)
    if image_shape is None:
        image_shape = (cfg.data.image_size, cfg.data.image_size, prior.channels)
    image_shape = tuple(int(s) for s in image_shape)
    return Experiment(cfg, prior, image_shape, build_runner(cfg, prior, image_shape, num_samples))


# ---- what runs, in words -------------------------------------------------------------------------

def describe(cfg, runner: solvers.Runner) -> str:
    """One line: the solver, its step count and where it came from, its network evaluations, its options."""
    key = solver_section(cfg)
    source = "sampler.steps" if cfg.sampler.steps else f"solver.{key}.steps"
    options = {f.name: getattr(runner.options, f.name) for f in dataclasses.fields(runner.options)
               if f.name not in ("steps",)}
    shown = ", ".join(f"{k} {_short(v)}" for k, v in options.items())
    nfe = f", {runner.evaluations} network evaluations per sample" if runner.evaluations else ""
    steps = getattr(runner.options, "steps", runner.num_steps)
    rows = f" in {runner.num_steps} iterations" if steps != runner.num_steps else ""    # BKS: epochs of iterations
    return f"{runner.solver.name}: {steps} steps ({source}){rows}{nfe}; {shown or 'no options'}"


def _short(v) -> str:
    if isinstance(v, float) or isinstance(v, np.floating) or (hasattr(v, "dtype") and np.ndim(v) == 0):
        return f"{float(v):.4g}"
    return repr(v) if isinstance(v, str) else str(v)


def unused_settings(cfg, keys: Sequence[str]) -> list:
    """The overridden config keys (dotted paths) the run does not use: options of a solver other than the
    running one. A typo'd key never gets here (ml_collections refuses it); these are real keys that would
    silently change nothing."""
    running = solver_section(cfg)
    unused = []
    for k in keys:
        parts = k.split(".")
        if len(parts) >= 3 and parts[0] == "solver" and parts[1] != running and parts[1] in cfg.solver:
            unused.append(k)
    return unused


def check_output_root(root: str) -> None:
    """Refuse an output root where nothing can be written, before anything is created; a link (the root or a
    folder above it) must lead to a folder."""
    if os.path.islink(root) and not os.path.exists(root):
        raise RunError(f"output.root {root} is a link to {os.readlink(root)}, which does not exist")
    where = os.path.abspath(root)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where) or not os.access(where, os.W_OK | os.X_OK):
        raise RunError(f"output.root {root}: {where} is not a writable folder")


def check_output_apart(root: str, data_root: str) -> None:
    """Refuse an output root that is the image folder or inside it: the next run would read the pictures it
    writes as input images."""
    out, images = os.path.realpath(os.path.expanduser(root)), os.path.realpath(os.path.expanduser(data_root))
    if out == images or out.startswith(images + os.sep):
        raise RunError(f"output.root {root} is inside the image folder {data_root}: the next run would read its "
                       f"pictures as input images; write the outputs elsewhere")


# ---- where and with what it ran ------------------------------------------------------------------

def devices() -> list:
    """The local devices a run uses; a backend that cannot start (JAX_PLATFORMS=cuda on a machine without a
    GPU or without the CUDA build) is a RunError of one line that says what to install or set."""
    try:
        return jax.local_devices()
    except (RuntimeError, AssertionError, ValueError) as e:    # jax's own, by version: a platform it lacks
        wanted = os.environ.get("JAX_PLATFORMS", "")
        why = (str(e).splitlines() or [""])[0][:160] or "no such platform is installed"
        raise RunError(f"JAX could not start its backend{f' {wanted!r} (JAX_PLATFORMS)' if wanted else ''}: "
                       f"{why}; for a GPU install the CUDA build (pip install -e '.[cuda]'), or unset "
                       f"JAX_PLATFORMS to run on the CPU") from None


def describe_devices(devs) -> str:
    kinds = sorted({d.device_kind for d in devs})
    return f"{len(devs)} x {', '.join(kinds)} ({devs[0].platform})"


def git_commit() -> Optional[str]:
    """The commit of the checkout this package runs from (with "+dirty" for uncommitted changes), or None
    for an installed copy or without git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(devs=None) -> dict:
    """What produced a result: the devices, the library versions, the project's commit (or version when
    installed) and the time; metrics.json and the comparison table's table.json carry it."""
    from importlib import metadata

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    devs = devs if devs is not None else devices()
    return {"devices": {"platform": devs[0].platform, "kind": sorted({d.device_kind for d in devs}),
                        "count": len(devs), "processes": jax.process_count()},
            "versions": {p: version(p) for p in ("dps_jax", "jax", "jaxlib", "flax", "numpy")},
            "git_commit": git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
