"""The shared base of every task config, and loading a task config by name.

A task config (`configs/<task>.py`) calls `base(task, preset)` in its `settings`, then states its own
operator, noise and every solver's tuned options; its `get_config` names the solver and step count that
`--config=` runs. The preset is what follows ':' in `--config=configs/<task>.py:<preset>`:

  fmnist32 (default)     the 32 x 32 prior shipped with dps_jax, one shipped test image
  ffhq256, imagenet256   the paper's setting: 256 x 256, DPS with 1000 DDPM steps, a converted checkpoint
                         (`--config.model.checkpoint=...`, see `python -m checkpoints_convert --help`)

The same names are the model presets of `dps_jax.models.unet.PRESETS` (the converter's `--model`).

Every solver's options live in `solver.<name>` (`ps+` in `solver.ps_plus`), its step count among them
(`solver.<name>.steps`: diffusion steps, annealing levels or iterations); `sampler.steps`, when set, is the
step count of whichever solver runs.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from dps_jax.solvers import REGISTRY, config_key
from dps_jax.solvers.base import TableOptions, option_defaults

TASKS = ("super_resolution", "inpainting_box", "inpainting_random", "gaussian_deblur", "motion_deblur",
         "nonlinear_deblur", "phase_retrieval")
PRESETS = ("fmnist32", "ffhq256", "imagenet256")      # the names of dps_jax.models.unet.PRESETS
PAPER_PRESETS = ("ffhq256", "imagenet256")
# The solvers on the diffusion table that keep their reference's step count on every preset (DDRM: 20).
OWN_STEP_COUNTS = ("ddrm",)
# The solvers that take a gradient step of size `scale` (zeta) on the measurement distance (`set_scale`).
GRADIENT_SOLVERS = ("ps", "ps+", "mcg")
# The task configs: the `configs/` beside the imported package when it is a checkout (so a second checkout run
# with PYTHONPATH reads its own configs, not those of the copy installed in the environment), else the package
# `dps_jax.configs`, which setup.cfg maps to the repository's top-level `configs/` for an installed copy.
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_checkout, "setup.cfg")) and os.path.isdir(os.path.join(_checkout, "configs")):
    CONFIG_DIR = os.path.join(_checkout, "configs")
else:
    _configs = importlib.util.find_spec("dps_jax.configs")
    CONFIG_DIR = (list(_configs.submodule_search_locations)[0] if _configs and _configs.submodule_search_locations
                  else os.path.join(_checkout, "configs"))


# PnP-DM's schedule on the shipped prior (`base` below; benchmarks/pnpdm_grid.py found it)
PNPDM_SHIPPED = dict(steps=30, rho_min=0.1, rho_decay=(0.1 / 10.0) ** (1 / 10), denoiser_steps=20)


# The measurement protocols of the comparison command (`evaluate --config.protocol=`): "dps", the DPS paper's
# (each task config as it is); "daps", the pixel-space task configs of DAPS (zhangbingliang2019/DAPS
# `configs/task/*.yaml`, which InverseBench follows): box holes drawn at least 1/8 of the side from the border
# (its mask generator's margin 32 of 256; the DPS code's 16) and phase retrieval measured on the image mapped
# to [0, 1]. Both: sigma 0.05, oversampling 2, the same kernels; masks, kernels and noise drawn per image index.
PROTOCOLS = ("dps", "daps")


def apply_protocol(c: ml_collections.ConfigDict, protocol: str) -> ml_collections.ConfigDict:
    """The task config c measured as `protocol` measures its task (c itself, changed in place)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r:.40}; expected one of {PROTOCOLS}")
    if protocol == "daps":
        if c.task == "inpainting_box":
            c.operator.margin = c.data.image_size // 8
        if c.task == "phase_retrieval":
            c.operator.unit_range = True
    return c


def solver_sections() -> ml_collections.ConfigDict:
    """`solver.name` and one section of options per registered solver (`solver.<name>.<option>`), each at
    the solver's own defaults (the reference's)."""
    sections = {config_key(name): option_defaults(s) for name, s in REGISTRY.items()}
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
        steps=0,                         # > 0: the step count of whichever solver runs (its solver.<name>.steps)
        record_every=0,                  # snapshots of x and x0_hat every k steps (0: steps // 10)
        steps_per_call=0))               # steps per compiled call, progress between calls (0: about 20 calls)
    c.solver = solver_sections()
    # The solvers that walk the diffusion table run 50 steps on the shipped prior (their step sizes are
    # tuned for 50) and the paper's 1000 on the paper presets; DDRM, DiffPIR, DAPS and the iterative solvers
    # keep their own counts.
    for name, spec in REGISTRY.items():
        if issubclass(spec.Options, TableOptions) and name not in OWN_STEP_COUNTS:
            c.solver[config_key(name)].steps = 1000 if paper else 50
    c.solver.daps.preset = "1k" if paper else "cpu"      # DAPS's published 1000 evaluations, or 50 on a CPU
    if not paper:      # MCGdiff's 64 particles x 99 steps is 6,336 network calls a sample: 16 x 24 on a CPU
        c.solver.mcgdiff.particles, c.solver.mcgdiff.steps = 16, 25
        # PnP-DM's published schedule makes 3,032 calls a sample here: 30 iterations on 20 levels, rho 10 -> 0.1
        # over the first 10 (139 calls; benchmarks/pnpdm_grid.json, best on SR, Gaussian blur and box inpainting)
        c.solver.pnpdm.update(PNPDM_SHIPPED)
        c.solver.bks_generic.dip_levels = 4     # its image DIP's 5 levels need sides that are multiples of 64
        # The BKS optimisations at the reference's counts take 20-30 min an image here (benchmarks/bks_cost.py);
        # about a minute instead (docs/solvers.md has the 3-image probe): bks_generic 50 + 50 warm-up and 400
        # joint iterations (its 300 + 300 and 5,000), bks_stylegan 50 warm-up and 4 epochs of 100 x and 50 k
        # steps (its 150 and 25 of 300 and 200).
        c.solver.bks_generic.warmup_iters, c.solver.bks_generic.steps = 50, 400
        c.solver.bks_stylegan.update(dict(warmup_iters=50, steps=4, x_iters=100, k_iters=50))
    c.operator = ml_collections.ConfigDict()     # the task's A: `name` and the options of operators.build
    c.noise = ml_collections.ConfigDict(dict(name="gaussian", sigma=0.05, rate=1.0))
    c.data = ml_collections.ConfigDict(dict(
        root="",                         # "" = the test images shipped with dps_jax
        image_size=256 if paper else 32,
        num_images=0 if paper else 1,    # 0 = every image in the folder
        other_size=False))               # True: run at an image_size other than the prior's training size
    c.output = ml_collections.ConfigDict(dict(root="outputs", png_scale=1 if paper else 4))
    # LPIPS of each sample against the truth in metrics.json: a file made by
    # `python -m checkpoints_convert.metrics lpips ...` ("" = not computed).
    # multimodal: the run's headline is the sample with the smallest measurement residual (and the oracle best),
    # not the posterior mean, which averages modes (phase retrieval's sign flips and twins).
    c.metrics = ml_collections.ConfigDict(dict(lpips_weights="", multimodal=False))
    c.distributed = False                # multi-host: call jax.distributed.initialize() first
    c.coordinator_address = ""           # with distributed: "host:port" of process 0 ("": from the cluster)
    c.num_processes = 0                  # with distributed: how many processes (0: from the cluster)
    c.process_id = -1                    # with distributed: this process's index (-1: from the cluster)
    c.distributed_timeout = 300          # with distributed: seconds to wait for the coordinator and the peers
    # XLA's persistent compilation cache: a rerun with the same shapes loads the compiled sampler
    # instead of compiling it again. "" turns it off.
    c.compilation_cache = "~/.cache/dps_jax/xla"
    return c


def cell_overrides() -> ml_collections.ConfigDict:
    """Every field of a task config that a comparison cell may override, unset (None: keep the task
    config's value): the solvers' options, `sampler`, `model`, `diffusion` and `noise`. Typed as the task
    configs' fields, so `--config.cells.solver.ddrm.eta=0.5` is parsed and checked like a task override."""
    template = base(TASKS[0])
    del template.solver["name"]            # the comparison's `methods` name the solvers
    cells = ml_collections.ConfigDict()
    for section in ("solver", "sampler", "model", "diffusion", "noise"):
        cells[section] = _unset(template[section])
    return cells


def _unset(section) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict()
    for k, v in section.items():
        out[k] = _unset(v) if isinstance(v, ml_collections.ConfigDict) else ml_collections.config_dict.placeholder(type(v))
    return out


def set_overrides(c: ml_collections.ConfigDict, overrides: ml_collections.ConfigDict) -> None:
    """Copy every set (not None) field of `overrides` (a `cell_overrides` tree) into the task config c."""
    for k, v in overrides.items():
        if isinstance(v, ml_collections.ConfigDict):
            set_overrides(c[k], v)
        elif v is not None:
            c[k] = v


def is_paper(c: ml_collections.ConfigDict) -> bool:
    return c.preset in PAPER_PRESETS


def set_scale(c: ml_collections.ConfigDict, scale: float) -> None:
    """The step size zeta of every gradient solver (ps, ps+, mcg)."""
    for name in GRADIENT_SOLVERS:
        c.solver[config_key(name)].scale = float(scale)


def use_solver(c: ml_collections.ConfigDict, name: str, steps: int, **options) -> None:
    """Run solver `name` for `steps` steps, with `options` set in its section: a task file's default, stated
    in one line of the file."""
    c.solver.name = name
    section = c.solver[config_key(name)]
    section.steps = int(steps)
    for k, v in options.items():
        section[k] = v


def task_config(task: str, preset: str = "", pick: bool = True) -> ml_collections.ConfigDict:
    """The config of `configs/<task>.py` with a preset, as `--config=configs/<task>.py:<preset>` gives it;
    with `pick=False`, its `settings`: every solver as tuned for the task (DPS at 50 steps shipped, 1000
    paper) and DPS named, before the file picks its default solver (the comparison table's cells)."""
    path = os.path.join(CONFIG_DIR, f"{task}.py")
    if task not in TASKS or not os.path.isfile(path):
        raise ValueError(f"unknown task {task!r:.60}; expected one of {TASKS} (configs in {CONFIG_DIR})")
    spec = importlib.util.spec_from_file_location(f"dps_jax_config_{task}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset or None) if pick else module.settings(preset or None)
