"""The shared base of every task config, and loading a task config by name.

A task config (`configs/<task>.py`) calls `base(task, preset)`, then states its own operator, noise,
step count and step sizes, and the paper's values for the paper presets in the same file. The preset is
what follows ':' in `--config=configs/<task>.py:<preset>`:

  fmnist32 (default)     the 32 x 32 prior shipped with dps_jax, one shipped test image, 50 steps
  ffhq256, imagenet256   the paper's setting: 256 x 256, 1000 DDPM steps, a converted checkpoint
                         (`--config.model.checkpoint=...`, see `python -m checkpoints_convert --help`)

The same names are the model presets of `dps_jax.models.unet.PRESETS` (the converter's `--model`).
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from dps_jax.solvers import REGISTRY, config_key
from dps_jax.solvers.base import DIFFUSION_FIELDS, DiffusionOptions, option_defaults

TASKS = ("super_resolution", "inpainting_box", "inpainting_random", "gaussian_deblur", "motion_deblur",
         "nonlinear_deblur", "phase_retrieval")
PRESETS = ("fmnist32", "ffhq256", "imagenet256")      # the names of dps_jax.models.unet.PRESETS
PAPER_PRESETS = ("ffhq256", "imagenet256")
# The solvers that take a gradient step of size `scale` (zeta) on the measurement distance.
GRADIENT_SOLVERS = ("ps", "ps+", "mcg")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def solver_sections() -> ml_collections.ConfigDict:
    """`solver.name` and one section of options per registered solver (`solver.<name>.<option>`); the
    DDPM/DDIM choice and eta, which every diffusion solver shares, live in `sampler`."""
    sections = {config_key(name): option_defaults(s, exclude=DIFFUSION_FIELDS if issubclass(s.Options, DiffusionOptions)
                                                  else ()) for name, s in REGISTRY.items()}
    return ml_collections.ConfigDict({"name": "ps", **sections})


def base(task: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """The values every task shares; a paper preset sets 256 x 256 images and 1000 steps."""
    preset = (preset or "fmnist32").strip()
    if preset not in PRESETS:
        raise ValueError(f"unknown config preset {preset!r}; expected one of {PRESETS}")
    paper = preset in PAPER_PRESETS
    c = ml_collections.ConfigDict()
    c.task = task
    c.preset = preset
    c.seed = 0
    c.num_samples = 4                    # posterior samples per measurement
    c.chunk_size = 0                     # samples per compiled call (0: automatic, runner.auto_chunk_size)
    c.model = ml_collections.ConfigDict(dict(
        checkpoint="",                   # "" = the prior shipped with dps_jax (fmnist32 only)
        dtype="float32",                 # compute dtype of the UNet: float32 or bfloat16
        var_type="",                     # "" = learned_range for 2C-output models, else the checkpoint's own
        clip_denoised=True))             # clip x0_hat to [-1, 1]
    c.diffusion = ml_collections.ConfigDict(dict(schedule="linear", num_timesteps=1000))
    c.sampler = ml_collections.ConfigDict(dict(
        name="ddpm", eta=0.0,            # the unconditional step of every diffusion solver: ddpm, or ddim with eta
        steps=1000 if paper else 50,
        respacing="",                    # "" = `steps` evenly spaced; or "10,20,30", "ddim50"
        record_every=0,                  # snapshots of x and x0_hat every k steps (0: steps // 10)
        steps_per_call=0))               # steps per compiled call, progress between calls (0: about 20 calls)
    c.solver = solver_sections()
    c.solver.daps.preset = "1k" if paper else "cpu"      # DAPS's published 1000 evaluations, or 50 on a CPU
    c.operator = ml_collections.ConfigDict()     # the task's A: `name` and the options of operators.build
    c.noise = ml_collections.ConfigDict(dict(name="gaussian", sigma=0.05, rate=1.0))
    c.data = ml_collections.ConfigDict(dict(
        root="",                         # "" = the test images shipped with dps_jax
        image_size=256 if paper else 32,
        num_images=0 if paper else 1))   # 0 = every image in the folder
    c.output = ml_collections.ConfigDict(dict(root="outputs", png_scale=1 if paper else 4))
    # LPIPS of each sample against the truth in metrics.json: a file made by
    # `python -m checkpoints_convert.metrics lpips ...` ("" = not computed).
    c.metrics = ml_collections.ConfigDict(dict(lpips_weights=""))
    c.distributed = False                # multi-host: call jax.distributed.initialize() first
    c.coordinator_address = ""           # with distributed: "host:port" of process 0 ("": from the cluster)
    c.num_processes = 0                  # with distributed: how many processes (0: from the cluster)
    c.process_id = -1                    # with distributed: this process's index (-1: from the cluster)
    # XLA's persistent compilation cache: a rerun with the same shapes loads the compiled sampler
    # instead of compiling it again. "" turns it off.
    c.compilation_cache = "~/.cache/dps_jax/xla"
    return c


def is_paper(c: ml_collections.ConfigDict) -> bool:
    return c.preset in PAPER_PRESETS


def set_scale(c: ml_collections.ConfigDict, scale: float) -> None:
    """The step size zeta of every gradient solver (ps, ps+, mcg)."""
    for name in GRADIENT_SOLVERS:
        c.solver[config_key(name)].scale = float(scale)


# Solvers whose step count is one of their own options rather than `sampler.steps`.
STEP_OPTIONS = {"ddrm": "steps", "diffpir": "steps", "daps": "annealing_steps"}

# Each task's default solver and step count on the shipped prior: the point of benchmarks/time_to_quality.py
# that reached DPS-1000's quality (PSNR within a standard error, FID-FMNIST within 1.25x) in the least time
# per image, or DPS where nothing faster did. tests/test_configs.py holds them to
# benchmarks/time_to_quality.json.
DEFAULT_PICKS = {
    "super_resolution": ("ddrm", 25),
    "inpainting_box": ("ps", 1000),
    "inpainting_random": ("ps", 250),
    "gaussian_deblur": ("ddrm", 10),
    "motion_deblur": ("daps", 50),
    "nonlinear_deblur": ("ps", 1000),
    "phase_retrieval": ("daps", 100),
}


def set_steps(c: ml_collections.ConfigDict, solver: str, steps: int, rescale_zeta: bool = True) -> None:
    """Run `solver` for `steps` steps: its own step option (STEP_OPTIONS) or `sampler.steps`. Changing
    `sampler.steps` scales the gradient solvers' zeta by old / new steps, so the total guidance stays that
    of the step count zeta was tuned for (the step is zeta times a gradient whose size does not depend on T)."""
    if solver in STEP_OPTIONS:
        c.solver[config_key(solver)][STEP_OPTIONS[solver]] = int(steps)
        return
    old = c.sampler.steps
    c.sampler.steps = int(steps)
    if rescale_zeta:
        for name in GRADIENT_SOLVERS:
            c.solver[config_key(name)].scale = c.solver[config_key(name)].scale * old / steps


def pick_default(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`c` set to run its task's DEFAULT_PICKS solver and step count; the paper presets keep the paper's
    DPS at 1000 steps (the picks were measured on the shipped prior only)."""
    if not is_paper(c):
        c.solver.name, steps = DEFAULT_PICKS[c.task]
        set_steps(c, c.solver.name, steps)
    return c


def task_config(task: str, preset: str = "", pick: bool = True) -> ml_collections.ConfigDict:
    """The config of `configs/<task>.py` with a preset, as `--config=configs/<task>.py:<preset>` gives it;
    with `pick=False`, its `settings`: every solver as tuned for the task at the preset's step count (50
    shipped, 1000 paper) and DPS named, before `pick_default` (the comparison table's cells)."""
    path = os.path.join(CONFIG_DIR, f"{task}.py")
    if task not in TASKS or not os.path.isfile(path):
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS} (configs in {CONFIG_DIR})")
    spec = importlib.util.spec_from_file_location(f"dps_jax_config_{task}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset or None) if pick else module.settings(preset or None)
