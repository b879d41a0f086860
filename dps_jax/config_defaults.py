"""The defaults every task config starts from, and the paper's settings for the published models.

Task configs (configs/<task>.py) call `task_config(task, arg)`: `arg` is what follows the ':' in
`--config=configs/<task>.py:<arg>`: empty for the shipped 32 x 32 prior, `ffhq256` or `imagenet256`
for the paper's setting on a converted checkpoint (`--config.model.checkpoint=...`).
"""

from __future__ import annotations

import ml_collections

TASKS = ("super_resolution", "inpainting_box", "inpainting_random", "gaussian_deblur", "motion_deblur",
         "phase_retrieval")
PRESETS = ("", "fmnist32", "ffhq256", "imagenet256")

# The paper's step scales (zeta) for FFHQ / ImageNet, 1000 DDPM steps (the official configs).
PAPER_SCALE = {"super_resolution": 0.3, "inpainting_box": 0.5, "inpainting_random": 0.5,
               "gaussian_deblur": 0.3, "motion_deblur": 0.3, "phase_retrieval": 0.4}
# For the shipped 32 x 32 prior with 50 steps: the best of {0.1, 0.3, 1, 3, 10} on four held-out test
# images (t10k 200-203, PSNR). With few steps each step has to move further than in the paper's 1000.
SMALL_SCALE = {"super_resolution": 10.0, "inpainting_box": 3.0, "inpainting_random": 3.0,
               "gaussian_deblur": 3.0, "motion_deblur": 3.0, "phase_retrieval": 10.0}


def _operator(task: str, size: int) -> ml_collections.ConfigDict:
    """The paper's operator for 256 x 256, scaled to `size` (kernels and boxes relative to the image)."""
    paper = size >= 256
    if task == "super_resolution":
        return ml_collections.ConfigDict(dict(name="super_resolution", scale_factor=4))
    if task == "inpainting_box":
        return ml_collections.ConfigDict(dict(name="inpainting", mask_type="box",
                                              box_len_range=(size // 2, size // 2 + 1), margin=size // 16,
                                              drop_fraction=0.0))
    if task == "inpainting_random":
        return ml_collections.ConfigDict(dict(name="inpainting", mask_type="random", box_len_range=(0, 0),
                                              margin=0, drop_fraction=0.92))
    if task == "gaussian_deblur":
        return ml_collections.ConfigDict(dict(name="gaussian_blur", kernel_size=61 if paper else 9,
                                              intensity=3.0 if paper else 1.0))
    if task == "motion_deblur":
        return ml_collections.ConfigDict(dict(name="motion_blur", kernel_size=61 if paper else 9, intensity=0.5))
    if task == "phase_retrieval":
        return ml_collections.ConfigDict(dict(name="phase_retrieval", oversample=2.0))
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def task_config(task: str, arg: str | None = None) -> ml_collections.ConfigDict:
    preset = (arg or "").strip()
    if preset not in PRESETS:
        raise ValueError(f"unknown config preset {preset!r}; expected one of {PRESETS[1:]} (or none)")
    paper = preset in ("ffhq256", "imagenet256")
    size = 256 if paper else 32
    c = ml_collections.ConfigDict()
    c.task = task
    c.preset = preset or "fmnist32"
    c.seed = 0
    c.num_samples = 4                    # posterior samples per measurement
    c.chunk_size = 0                     # samples per compiled call (0: all at once)
    c.model = ml_collections.ConfigDict(dict(
        checkpoint="",                   # "" = the prior shipped with dps_jax (fmnist32 only)
        dtype="float32"))
    c.diffusion = ml_collections.ConfigDict(dict(schedule="linear", num_timesteps=1000))
    c.sampler = ml_collections.ConfigDict(dict(
        name="ddpm", steps=1000 if paper else 50, respacing="",    # "" = `steps` evenly spaced
        eta=0.0, var_type="",            # "" = learned_range for 2C-output models, else the checkpoint's own
        clip_denoised=True, record_every=0,   # 0 = every steps // 10 steps
        loop="auto"))                    # "scan", "host" (a Python loop over the jitted step), "auto"
    c.guidance = ml_collections.ConfigDict(dict(method="ps", scale=PAPER_SCALE[task] if paper else SMALL_SCALE[task]))
    c.operator = _operator(task, size)
    c.noise = ml_collections.ConfigDict(dict(name="gaussian", sigma=0.05, rate=1.0))
    c.data = ml_collections.ConfigDict(dict(
        root="",                         # "" = the test images shipped with dps_jax
        image_size=size,
        num_images=0 if paper else 1))   # 0 = every image in the folder
    c.output = ml_collections.ConfigDict(dict(root="outputs", png_scale=4 if not paper else 1))
    c.distributed = False                # multi-host: call jax.distributed.initialize() first
    # XLA's persistent compilation cache: a rerun with the same shapes loads the compiled sampler
    # instead of compiling it again (FFHQ 256 step on CPU: 11 s -> 3 s). "" turns it off.
    c.compilation_cache = "~/.cache/dps_jax/xla"
    if task == "phase_retrieval":
        c.num_samples = 4                # the paper reports the best of 4
    return c
