"""One run of the main job on disk: a config's experiment -> N posterior samples per image -> files.

`experiment.setup` turns the config into a prior, a runner and a measurement per image; this module adds
only what a run on disk needs: images in, PNGs and metrics out, a progress line. Outputs go to a new
directory `<output.root>/<task>/<timestamp>`; while running it is called `<...>.partial`, and it gets its
final name only when everything is written. A run that diverges (NaN or Inf) stops, names the step, and is
renamed `<...>-incomplete` with an INCOMPLETE note.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import config_base, data, experiment, io, likelihoods, metrics, solvers
from dps_jax.experiment import RunError
from dps_jax.metrics import lpips
from dps_jax.models.checkpoint import SHIPPED_PRIOR


class Diverged(RuntimeError):
    pass


def available_memory(device) -> Optional[int]:
    """Free bytes where a compiled call runs: the accelerator's free memory, or the host's MemAvailable."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(cfg, runner: solvers.Runner, problem, host_free: Optional[int]) -> None:
    """Refuse, before sampling, a run whose chunk or whose outputs cannot fit, saying what chunk_size would."""
    device_bytes, host_bytes = runner.memory_bytes(problem)
    gib = 2.0 ** 30
    if host_free is not None and host_bytes > host_free:
        raise RunError(f"num_samples {cfg.num_samples}: their outputs alone need {host_bytes / gib:.1f} GiB, "
                       f"{host_free / gib:.1f} GiB of memory are free; draw fewer samples")
    free = available_memory(runner.devices[0])       # XLA's analysis is per device for a sharded program
    if free is not None and device_bytes > 0.9 * free:
        fit = max(1, int(runner.chunk * 0.9 * free / device_bytes) // len(runner.devices) * len(runner.devices))
        raise RunError(f"a chunk of {runner.chunk} samples needs about {device_bytes / gib:.1f} GiB per device, "
                       f"{free / gib:.1f} GiB are free: set --config.chunk_size={fit} (or fewer)")


def check_run_config(cfg) -> None:
    """What can be checked before anything loads or compiles."""
    if cfg.task not in config_base.TASKS:
        raise RunError(f"unknown task {cfg.task!r}; expected one of {config_base.TASKS}")
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        # jax keys take 32 bits here; a larger seed would silently give the same key as another
        raise RunError(f"seed must be an integer in [0, 2^32), got {seed!r:.40}")
    likelihoods.check_noise(cfg.noise.name, cfg.noise.sigma, cfg.noise.rate)
    experiment.check_output_root(cfg.output.root)     # nothing is created before the run


def load_images(cfg, prior):
    size = cfg.data.image_size
    image_shape = (size, size, prior.channels)
    try:
        prior.check_image_shape(image_shape)
    except ValueError as e:
        raise RunError(f"data.image_size {size}: {e} (the model was trained at {prior.image_size})") from None
    files = data.list_images(cfg.data.root or data.SHIPPED_IMAGES)
    if cfg.data.num_images < 0:
        raise RunError(f"data.num_images must be >= 0 (0: all), got {cfg.data.num_images}")
    if cfg.data.num_images:
        files = files[:cfg.data.num_images]
    # Multi-host runs split the images between processes; an image keeps its index in the whole folder, so
    # its keys (and samples) do not depend on how many processes share the work.
    indices = list(range(len(files)))[jax.process_index()::jax.process_count()]
    files = [files[i] for i in indices]
    return files, np.stack([data.load_image(p, size, prior.channels) for p in files]), indices


# ---- progress ----------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar, called by the runner between its compiled calls."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.label, self.start = stream, "", time.perf_counter()

    def reset(self, label: str) -> None:
        self.label, self.start = label, time.perf_counter()

    def __call__(self, done: int, total: int, scalars: dict) -> None:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (total - done)
        bar = "#" * int(20 * done / total)
        shown = " ".join(f"{k} {float(np.mean(v)):.4f}" for k, v in scalars.items())
        self.stream.write(f"\r{self.label} [{bar:<20}] step {done}/{total} eta {eta:5.0f}s {shown}")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


# ---- the run -----------------------------------------------------------------------------------

def new_run_dir(root: str, task: str) -> str:
    base = os.path.join(root, task, time.strftime("%Y%m%d-%H%M%S"))
    if jax.process_count() > 1:          # each process writes its share of the images to its own directory
        base += f"-process{jax.process_index()}of{jax.process_count()}"
    path, k = base, 1
    while any(os.path.exists(p) for p in (path, path + ".partial", path + "-incomplete")):
        k += 1
        path = f"{base}-{k}"
    return path


def run(cfg, stream=sys.stderr) -> str:
    """Run the config; returns the finished run directory."""
    check_run_config(cfg)
    if cfg.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compilation_cache))
    if cfg.distributed:
        try:
            jax.distributed.initialize(cfg.coordinator_address or None, cfg.num_processes or None,
                                       cfg.process_id if cfg.process_id >= 0 else None)
        except (ValueError, TypeError, RuntimeError) as e:
            raise RunError(f"distributed: {str(e).splitlines()[0]} (set coordinator_address, num_processes and "
                           "process_id outside a detected cluster)") from None
    prior = experiment.load_prior(cfg)
    files, images, indices = load_images(cfg, prior)
    names = data.output_names(files)
    image_shape = images.shape[1:]
    host_free = available_memory(jax.local_devices(backend="cpu")[0])
    gib = 2.0 ** 30
    if host_free is not None and cfg.num_samples * images[0].nbytes * 2 > host_free:   # before compiling
        raise RunError(f"num_samples {cfg.num_samples}: the samples alone need "
                       f"{cfg.num_samples * images[0].nbytes * 2 / gib:.1f} GiB, {host_free / gib:.1f} GiB are free")
    exp = experiment.setup(cfg, prior, image_shape)
    runner = exp.runner
    stream.write(exp.describe() + "\n")
    # Before compiling: a missing weight file is an error of the config, not of a finished run.
    lpips_metric = lpips.load(cfg.metrics.lpips_weights) if cfg.metrics.lpips_weights else None
    problems, sample_keys = zip(*[exp.measure(x, i) for i, x in zip(indices, images)])
    compile_seconds = runner.compile(problems[0])
    check_memory(cfg, runner, problems[0], host_free)

    final = new_run_dir(cfg.output.root, cfg.task)
    partial = final + ".partial"
    os.makedirs(partial)
    with open(os.path.join(partial, "config.json"), "w") as fh:
        fh.write(cfg.to_json_best_effort(indent=2))

    progress = Progress(stream)
    results, sample_seconds = [], 0.0
    try:
        for i, (name, x, problem, k_sample) in enumerate(zip(names, images, problems, sample_keys)):
            progress.reset(f"{name} ({i + 1}/{len(files)})")
            t0 = time.perf_counter()
            out = runner(problem, k_sample, progress)
            sample_seconds += time.perf_counter() - t0
            check_finite(out, runner, name)
            results.append(write_image_outputs(partial, name, x, problem, out, cfg, lpips_metric))
    except BaseException as e:      # diverged, interrupted, disk full: never leave it looking like a result
        reason = str(e) if isinstance(e, Diverged) else f"stopped by {type(e).__name__}: {e}"
        with open(os.path.join(partial, "INCOMPLETE"), "w") as fh:
            fh.write(f"{reason}\nEverything written before this point is kept for inspection; it is not a result.\n")
        os.replace(partial, final + "-incomplete")
        if isinstance(e, Diverged):
            raise RunError(f"{e}; partial outputs in {final}-incomplete") from None
        raise

    calls = -(-cfg.num_samples // runner.chunk) * len(files)
    summary = {
        "task": cfg.task, "preset": cfg.preset, "solver": runner.solver.name,
        "checkpoint": cfg.model.checkpoint or SHIPPED_PRIOR, "num_images": len(files),
        "num_samples": cfg.num_samples, "steps": runner.num_steps, "devices": len(runner.devices),
        "chunk_size": runner.chunk, "steps_per_call": runner.steps_per_call,
        "compile_seconds": compile_seconds, "seconds_per_step": sample_seconds / max(runner.num_steps * calls, 1),
        "sampling_seconds": sample_seconds,
        "mean_psnr_of_mean": float(np.mean([r["mean"]["psnr"] for r in results])),
        "mean_ssim_of_mean": float(np.mean([r["mean"]["ssim"] for r in results])),
        **({"mean_lpips_of_mean": float(np.mean([r["mean"]["lpips"] for r in results])),
            "mean_lpips": float(np.mean([p["lpips"] for r in results for p in r["samples"]]))}
           if lpips_metric else {}),
        "images": results, "config": json.loads(cfg.to_json_best_effort()),
    }
    with open(os.path.join(partial, "metrics.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    os.replace(partial, final)
    stream.write(f"compile {compile_seconds:.1f}s, {summary['seconds_per_step'] * 1e3:.0f} ms/step; "
                 f"PSNR of the posterior mean {summary['mean_psnr_of_mean']:.2f} dB, "
                 f"SSIM {summary['mean_ssim_of_mean']:.3f}\nwrote {final}\n")
    return final


SANE_RANGE = 3.0        # images lie in [-1, 1]; a sample beyond +-3 has left the data, finite or not
BLOWUP = 10.0           # a final data distance this many times the first step's is not a converged run


def check_finite(out, runner: solvers.Runner, name: str) -> None:
    """Raise Diverged naming the first step at which any sample's distance (or the final sample) is not
    finite; or, for finite runs, a sample outside [-SANE_RANGE, SANE_RANGE] or a final distance BLOWUP
    times the first step's (guidance too strong: finite samples that are not results)."""
    n = out["samples"].shape[0]
    name_key = solvers.config_key(runner.solver.name)
    hint = (f"lower the step size (solver.{name_key}.scale)" if runner.solver.name in config_base.GRADIENT_SOLVERS
            else f"check the options in solver.{name_key}")
    bad = np.zeros((n, runner.num_steps), bool)
    for v in out.values():
        if v.ndim == 2 and v.shape == bad.shape:               # the per-step scalars
            bad |= ~np.isfinite(v)
    bad[:, -1] |= ~np.isfinite(out["samples"]).reshape(n, -1).all(axis=1)
    if bad.any():
        first = np.where(bad.any(axis=1), bad.argmax(axis=1), runner.num_steps)
        sample = int(first.argmin())
        j = int(first[sample])
        where = f"step {j + 1}/{runner.num_steps}"
        if runner.solver.kind == "diffusion":
            where += f" (t = {int(runner.xs.t_model[j])})"
        raise Diverged(f"sampling diverged (NaN/Inf) at {where} for image {name}, sample {sample}: "
                       f"{hint} or check the measurement")
    peak = np.abs(out["samples"]).reshape(n, -1).max(axis=1)
    if peak.max() > SANE_RANGE:
        sample = int(peak.argmax())
        raise Diverged(f"sampling diverged for image {name}, sample {sample}: it reaches |x| = {peak[sample]:.3g}, "
                       f"images lie in [-1, 1]: {hint} or check the measurement")
    d = out.get("distance")
    if d is not None and d.shape == bad.shape and runner.num_steps > 1:
        ratio = d[:, -1] / np.maximum(d[:, 0], 1e-12)
        if ratio.max() > BLOWUP:
            sample = int(ratio.argmax())
            raise Diverged(f"sampling diverged for image {name}, sample {sample}: its final data distance "
                           f"{d[sample, -1]:.3g} is {ratio[sample]:.0f}x the first step's {d[sample, 0]:.3g}: "
                           f"{hint} or check the measurement")


def write_image_outputs(run_dir, name, x, problem: solvers.Problem, out, cfg, lpips_metric=None):
    d = os.path.join(run_dir, name)
    os.makedirs(d)
    s = cfg.output.png_scale
    op, y = problem.op, np.asarray(problem.y)
    samples = out["samples"]
    mean, std = samples.mean(0), samples.std(0)
    np.savez_compressed(os.path.join(d, "samples.npz"), samples=samples, y=y, label=x)
    io.save_png(os.path.join(d, "label.png"), x, s)
    io.save_png(os.path.join(d, "input.png"), np.asarray(op.display(jnp.asarray(y))), s)
    for k, smp in enumerate(samples):
        io.save_png(os.path.join(d, f"recon_{k:03d}.png"), smp, s)
    io.save_png(os.path.join(d, "mean.png"), mean, s)
    io.save_png(os.path.join(d, "std.png"), io.normalise(std), s)
    io.save_png(os.path.join(d, "grid.png"), io.grid(samples), s)
    if "x0_hat_record" in out:
        rec = out["x0_hat_record"][0]
        io.save_png(os.path.join(d, "progress.png"), io.grid(rec, columns=rec.shape[0]), s)
    residual = [float(np.linalg.norm(y - np.asarray(op(jnp.asarray(v))))) for v in samples]
    per = [{"psnr": metrics.psnr(v, x), "ssim": metrics.ssim(v, x), "residual": r} for v, r in zip(samples, residual)]
    result = {"image": name, "samples": per,
              "mean": {"psnr": metrics.psnr(mean, x), "ssim": metrics.ssim(mean, x)},
              "best_psnr": max(p["psnr"] for p in per)}
    if lpips_metric is not None:
        d = lpips_metric(np.concatenate([samples, mean[None]]), np.repeat(np.asarray(x)[None], len(samples) + 1, 0))
        for p, v in zip(per, d):
            p["lpips"] = float(v)
        result["mean"]["lpips"] = float(d[-1])
    if "distance" in out:
        result["final_distance"] = [float(v) for v in out["distance"][:, -1]]
    return result
