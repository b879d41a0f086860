"""One run of the main job: config -> measurements -> N posterior samples each -> files.

Outputs go to a new directory `<output.root>/<task>/<timestamp>`; while running it is called
`<...>.partial`, and it gets its final name only when everything is written. A run that diverges
(NaN or Inf) stops, names the step, and is renamed `<...>-incomplete` with an INCOMPLETE note.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dps_jax import (api, config_defaults, data, diffusion, guidance, io, likelihoods, metrics, operators, samplers,
                     schedule)
from dps_jax.models.checkpoint import read_extra
from dps_jax.operators.inpainting import MASK_TYPES


class RunError(ValueError):
    """A problem with the run's configuration or inputs, reported as one line by the CLI."""


class Diverged(RuntimeError):
    pass


# ---- configuration -----------------------------------------------------------------------------

def check_config(cfg) -> None:
    if cfg.task not in config_defaults.TASKS:
        raise RunError(f"unknown task {cfg.task!r}; expected one of {config_defaults.TASKS}")
    if isinstance(cfg.num_samples, bool) or not isinstance(cfg.num_samples, int) or cfg.num_samples < 1:
        raise RunError(f"num_samples must be an integer >= 1, got {cfg.num_samples!r}")
    if cfg.chunk_size < 0:
        raise RunError(f"chunk_size must be >= 0 (0: all samples at once), got {cfg.chunk_size}")
    if not isinstance(cfg.sampler.steps, int) or cfg.sampler.steps < 1:
        raise RunError(f"sampler.steps must be a positive integer, got {cfg.sampler.steps!r}")
    if cfg.sampler.loop not in samplers.LOOPS:
        raise RunError(f"unknown sampler.loop {cfg.sampler.loop!r}; expected one of {samplers.LOOPS}")
    if cfg.sampler.steps > cfg.diffusion.num_timesteps and not cfg.sampler.respacing:
        raise RunError(f"sampler.steps {cfg.sampler.steps} exceeds diffusion.num_timesteps "
                       f"{cfg.diffusion.num_timesteps}")
    if cfg.guidance.scale < 0 or not math.isfinite(cfg.guidance.scale):
        raise RunError(f"guidance.scale must be a finite number >= 0, got {cfg.guidance.scale}")
    likelihoods.check_noise(cfg.noise.name, cfg.noise.sigma, cfg.noise.rate)
    if cfg.data.num_images < 0:
        raise RunError(f"data.num_images must be >= 0 (0: all), got {cfg.data.num_images}")


def operator_options(cfg, key):
    """The keyword arguments of operators.build for this config (random parts drawn from `key`)."""
    o = dict(cfg.operator)
    name = o.pop("name")
    if name == "inpainting":
        if o.get("mask_type") not in MASK_TYPES:
            raise RunError(f"unknown operator.mask_type {o.get('mask_type')!r}; expected one of {MASK_TYPES}")
        return name, dict(key=key, mask_type=o["mask_type"], box_len_range=tuple(o["box_len_range"]),
                          margin=o["margin"], drop_fraction=o["drop_fraction"])
    if name == "motion_blur":
        return name, dict(key=key, **o)
    if name == "super_resolution":
        f, size = o.get("scale_factor"), cfg.data.image_size
        if isinstance(f, (int, float)) and float(f).is_integer() and f >= 1 and size % int(f):
            raise RunError(f"operator.scale_factor {f} does not divide data.image_size {size}; "
                           f"pick a factor that divides it (the operator API handles other sizes)")
    return name, o


def load_model(cfg):
    if cfg.preset in ("ffhq256", "imagenet256") and not cfg.model.checkpoint:
        raise RunError(f"the {cfg.preset} preset needs a converted checkpoint: "
                       f"--config.model.checkpoint=PATH (see `python -m checkpoints_convert --help`)")
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(cfg.model.dtype)
    if dtype is None:
        raise RunError(f"model.dtype must be 'float32' or 'bfloat16', got {cfg.model.dtype!r}")
    path = cfg.model.checkpoint or api.SHIPPED_PRIOR
    model, params, mcfg = api.load_prior(path, dtype=dtype)
    return model, params, mcfg, path


def variance_type(cfg, mcfg, checkpoint_path) -> str:
    """The configured variance type, else learned_range for 2C-output models, else what the checkpoint says."""
    return cfg.sampler.var_type or api.default_var_type(mcfg, read_extra(checkpoint_path).get("var_type", ""))


def load_images(cfg, mcfg):
    size = cfg.data.image_size
    f = mcfg.downsample_factor
    if size % f:
        raise RunError(f"data.image_size {size} is not divisible by {f}, the model's total downsampling; "
                       f"use a multiple of {f} (the model was trained at {mcfg.image_size})")
    files = data.list_images(cfg.data.root or api.SHIPPED_IMAGES)
    if cfg.data.num_images:
        files = files[:cfg.data.num_images]
    # Multi-host runs split the images between processes.
    files = files[jax.process_index()::jax.process_count()]
    return files, np.stack([data.load_image(p, size, mcfg.in_channels) for p in files])


# ---- progress ----------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar, called after every step (from the host loop, or from inside the
    scan through jax.debug.callback)."""

    def __init__(self, label: str, stream=sys.stderr):
        self.label, self.stream, self.start, self.last = label, stream, None, -1

    def reset(self, label):
        self.label, self.start, self.last = label, None, -1

    def __call__(self, step, num_steps, distance):
        step, num_steps = int(np.max(step)), int(np.max(num_steps))
        if step <= self.last:
            return
        self.last = step
        now = time.time()
        if self.start is None:
            self.start = now
        eta = (now - self.start) / max(step - 1, 1) * (num_steps - step) if step > 1 else float("nan")
        bar = "#" * int(20 * step / num_steps)
        self.stream.write(f"\r{self.label} [{bar:<20}] step {step}/{num_steps} eta {eta:5.0f}s "
                          f"distance {float(np.mean(distance)):.4f}")
        if step == num_steps:
            self.stream.write("\n")
        self.stream.flush()


# ---- the run -----------------------------------------------------------------------------------

def new_run_dir(root: str, task: str) -> str:
    base = os.path.join(root, task, time.strftime("%Y%m%d-%H%M%S"))
    path, k = base, 1
    while any(os.path.exists(p) for p in (path, path + ".partial", path + "-incomplete")):
        k += 1
        path = f"{base}-{k}"
    return path


def run(cfg, stream=sys.stderr) -> str:
    """Run the config; returns the finished run directory."""
    check_config(cfg)
    if cfg.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compilation_cache))
    if cfg.distributed:
        jax.distributed.initialize()
    model, params, mcfg, ckpt_path = load_model(cfg)
    files, images = load_images(cfg, mcfg)
    image_shape = images.shape[1:]

    respacing = cfg.sampler.respacing or cfg.sampler.steps
    tables = schedule.build_tables(cfg.diffusion.schedule, cfg.diffusion.num_timesteps, respacing)
    num_steps = tables.num_steps
    record_every = cfg.sampler.record_every if cfg.sampler.record_every > 0 else max(1, num_steps // 10)
    scfg = samplers.SamplerConfig(
        sampler=cfg.sampler.name, eta=cfg.sampler.eta, clip_denoised=cfg.sampler.clip_denoised,
        var_type=variance_type(cfg, mcfg, ckpt_path), guidance=cfg.guidance.method,
        noise_model=cfg.noise.name, record_every=record_every)

    key = jax.random.PRNGKey(cfg.seed)
    ops, ys = [], []
    for i, x in enumerate(images):
        k_op, k_noise = jax.random.split(jax.random.fold_in(key, i))
        name, opts = operator_options(cfg, k_op)
        op = operators.build(name, image_shape, **opts)
        ys.append(api.measure(op, x, k_noise, cfg.noise.name, cfg.noise.sigma, cfg.noise.rate))
        api.check_measurement(ys[-1])
        ops.append(op)
    guidance.check_method(cfg.guidance.method, ops[0])

    # Samples are sharded over all local devices; a chunk is a multiple of the device count.
    devices = jax.local_devices()
    n_dev = len(devices)
    chunk = cfg.chunk_size or cfg.num_samples
    chunk = int(math.ceil(chunk / n_dev) * n_dev)
    mesh = Mesh(np.array(devices), ("samples",))
    key_sharding = NamedSharding(mesh, PartitionSpec("samples"))
    replicated = NamedSharding(mesh, PartitionSpec())

    progress = Progress("compiling", stream)
    sampler = samplers.make_sampler(samplers.unet_denoise_fn(model), scfg, image_shape, progress,
                                    loop=cfg.sampler.loop)
    coefs = diffusion.step_coefficients(tables)
    params = jax.device_put(params, replicated)
    chunk_keys = jax.device_put(jax.random.split(key, chunk), key_sharding)
    compile_seconds = sampler.compile(params, ops[0], ys[0], chunk_keys, coefs, cfg.guidance.scale)

    final = new_run_dir(cfg.output.root, cfg.task)
    partial = final + ".partial"
    os.makedirs(partial)
    with open(os.path.join(partial, "config.json"), "w") as fh:
        fh.write(cfg.to_json_best_effort(indent=2))

    results, sample_seconds = [], 0.0
    try:
        for i, (path, x, op, y) in enumerate(zip(files, images, ops, ys)):
            name = os.path.splitext(os.path.basename(path))[0]
            progress.reset(f"{name} ({i + 1}/{len(files)})")
            outs = []
            sample_keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), i), cfg.num_samples)
            for start in range(0, cfg.num_samples, chunk):
                ks = sample_keys[start:start + chunk]
                if len(ks) < chunk:    # pad the last chunk to the compiled size, drop the extra samples
                    ks = jnp.concatenate([ks, jax.random.split(jax.random.fold_in(ks[0], 7), chunk - len(ks))])
                t1 = time.time()
                out = sampler(params, op, y, jax.device_put(ks, key_sharding), coefs, cfg.guidance.scale)
                out = jax.tree_util.tree_map(np.asarray, out)
                sample_seconds += time.time() - t1
                outs.append({k: v[:min(chunk, cfg.num_samples - start)] for k, v in out.items()})
            out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
            check_finite(out, tables, name)
            results.append(write_image_outputs(partial, name, x, op, y, out, cfg))
    except BaseException as e:      # diverged, interrupted, disk full: never leave it looking like a result
        reason = str(e) if isinstance(e, Diverged) else f"stopped by {type(e).__name__}: {e}"
        with open(os.path.join(partial, "INCOMPLETE"), "w") as fh:
            fh.write(f"{reason}\nEverything written before this point is kept for inspection; it is not a result.\n")
        os.replace(partial, final + "-incomplete")
        if isinstance(e, Diverged):
            raise RunError(f"{e}; partial outputs in {final}-incomplete") from None
        raise

    total_steps = num_steps * len(files) * math.ceil(cfg.num_samples / chunk)
    summary = {
        "task": cfg.task, "preset": cfg.preset, "checkpoint": ckpt_path, "num_images": len(files),
        "num_samples": cfg.num_samples, "steps": num_steps, "devices": n_dev, "loop": sampler.loop,
        "compile_seconds": compile_seconds, "seconds_per_step": sample_seconds / max(total_steps, 1),
        "sampling_seconds": sample_seconds,
        "mean_psnr_of_mean": float(np.mean([r["mean"]["psnr"] for r in results])),
        "mean_ssim_of_mean": float(np.mean([r["mean"]["ssim"] for r in results])),
        "images": results, "config": json.loads(cfg.to_json_best_effort()),
    }
    with open(os.path.join(partial, "metrics.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    os.replace(partial, final)
    stream.write(f"compile {compile_seconds:.1f}s, {summary['seconds_per_step'] * 1e3:.0f} ms/step; "
                 f"PSNR of the posterior mean {summary['mean_psnr_of_mean']:.2f} dB, "
                 f"SSIM {summary['mean_ssim_of_mean']:.3f}\nwrote {final}\n")
    return final


def check_finite(out, tables, name):
    """Raise Diverged naming the first step at which any sample's distance (or the final sample) is not finite."""
    d = out["distance"]                                               # (N, T)
    bad_step = ~np.isfinite(d)
    bad_step[:, -1] |= ~np.isfinite(out["sample"]).reshape(d.shape[0], -1).all(axis=1)
    if not bad_step.any():
        return
    first = np.where(bad_step.any(axis=1), bad_step.argmax(axis=1), d.shape[1])
    n = int(first.argmin())
    j = int(first[n])
    t = int(tables.timestep_map[::-1][j])
    raise Diverged(f"sampling diverged (NaN/Inf) at step {j + 1}/{d.shape[1]} (t = {t}) for image {name}, "
                   f"sample {n}: lower guidance.scale or check the measurement")


def write_image_outputs(run_dir, name, x, op, y, out, cfg):
    d = os.path.join(run_dir, name)
    os.makedirs(d)
    s = cfg.output.png_scale
    samples = out["sample"]
    mean, std = samples.mean(0), samples.std(0)
    np.savez_compressed(os.path.join(d, "samples.npz"), samples=samples, y=np.asarray(y), label=x)
    io.save_png(os.path.join(d, "label.png"), x, s)
    io.save_png(os.path.join(d, "input.png"), np.asarray(op.transpose(jnp.asarray(y))), s)
    for k, smp in enumerate(samples):
        io.save_png(os.path.join(d, f"recon_{k:03d}.png"), smp, s)
    io.save_png(os.path.join(d, "mean.png"), mean, s)
    io.save_png(os.path.join(d, "std.png"), io.normalise(std), s)
    io.save_png(os.path.join(d, "grid.png"), io.grid(samples), s)
    if "x0_hat_record" in out:
        io.save_png(os.path.join(d, "progress.png"), io.grid(out["x0_hat_record"][0], columns=out["x0_hat_record"].shape[1]), s)
    residual = [float(np.linalg.norm(np.asarray(y) - np.asarray(op(jnp.asarray(v))))) for v in samples]
    per = [{"psnr": metrics.psnr(v, x), "ssim": metrics.ssim(v, x), "residual": r} for v, r in zip(samples, residual)]
    return {"image": name, "samples": per,
            "mean": {"psnr": metrics.psnr(mean, x), "ssim": metrics.ssim(mean, x)},
            "best_psnr": max(p["psnr"] for p in per), "final_distance": [float(v) for v in out["distance"][:, -1]]}
