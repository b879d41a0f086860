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

from dps_jax import config_base, config_check, data, distributed, experiment, io, likelihoods, metrics, report, solvers
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
        raise RunError(f"unknown task {cfg.task!r:.60}; expected one of {config_base.TASKS}")
    config_check.check(cfg)           # every number (jax keys take 32-bit seeds: a larger one would repeat)
    likelihoods.check_noise(cfg.noise.name, cfg.noise.sigma, cfg.noise.rate)
    experiment.check_output_root(cfg.output.root)     # nothing is created before the run
    experiment.check_output_apart(cfg.output.root, cfg.data.root or data.SHIPPED_IMAGES)


def load_images(cfg, prior):
    """(files, images (N, H, W, C), their indices in the folder, {name: [conversions]}): the images of
    data.root at data.image_size, refused at a size other than the prior's training size unless
    data.other_size says the user means it."""
    size = cfg.data.image_size
    image_shape = (size, size, prior.channels)
    try:
        prior.check_image_shape(image_shape)
    except ValueError as e:
        raise RunError(f"data.image_size {size}: {e} (the model was trained at {prior.image_size})") from None
    if prior.image_size is not None and size != prior.image_size and not cfg.data.other_size:
        raise RunError(f"data.image_size {size}: the prior was trained at {prior.image_size} x {prior.image_size}; "
                       f"set --config.data.other_size=True to run it at {size} x {size} anyway")
    files = data.list_images(cfg.data.root or data.SHIPPED_IMAGES)
    if cfg.data.num_images < 0:
        raise RunError(f"data.num_images must be >= 0 (0: all), got {cfg.data.num_images}")
    if cfg.data.num_images:
        files = files[:cfg.data.num_images]
    # Multi-host runs split the images between processes; an image keeps its index in the whole folder, so
    # its keys (and samples) do not depend on how many processes share the work.
    indices = list(range(len(files)))[jax.process_index()::jax.process_count()]
    files = [files[i] for i in indices]
    conversions = [[] for _ in files]
    images = np.stack([data.load_image(p, size, prior.channels, said) for p, said in zip(files, conversions)])
    return files, images, indices, conversions


def conversion_line(names, conversions) -> str:
    """One line saying how the input images were changed to fit the prior ("" when none was)."""
    changed = [c for c in conversions if c]
    if not changed:
        return ""
    distinct = []
    for steps in changed:
        distinct += [step for step in steps if step not in distinct]
    shown = "; ".join(distinct[:3]) + (f"; and {len(distinct) - 3} more" if len(distinct) > 3 else "")
    return (f"input images converted to fit the prior ({len(changed)} of {len(names)}): {shown} "
            f"(each image's in metrics.json, image_conversions)")


# ---- progress ----------------------------------------------------------------------------------

class Tee:
    """A stream that also keeps what was written, for the run's log.txt (a redrawn progress line keeps only
    its last state)."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.parts.append(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def text(self) -> str:
        return "\n".join(line.rsplit("\r", 1)[-1] for line in "".join(self.parts).split("\n"))


class Progress:
    """The progress line, called by the runner between its compiled calls: redrawn in place (`\\r`) on a
    terminal, one line per update when the output is a file or a pipe (a log stays readable). The time
    left is estimated from the updates after the first (the first call also pays one-time costs), and
    reads "estimating" until there are two."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.label = stream, ""
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.first = None

    def reset(self, label: str) -> None:
        self.label, self.first = label, None

    def __call__(self, done: int, total: int, scalars: dict) -> None:
        now = time.perf_counter()
        if self.first is None or done <= self.first[1]:
            self.first, eta = (now, done), "estimating"
        else:
            rate = (now - self.first[0]) / (done - self.first[1])
            eta = f"{rate * (total - done):.0f}s"
        bar = "#" * int(20 * done / total)
        shown = " ".join(f"{k} {float(np.mean(v)):.4f}" for k, v in scalars.items())
        line = f"{self.label} [{bar:<20}] step {done}/{total} eta {eta} {shown}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# ---- the run -----------------------------------------------------------------------------------

def new_run_dir(root: str, task: str) -> str:
    base = os.path.join(root, task, time.strftime("%Y%m%d-%H%M%S"))
    if jax.process_count() > 1:          # each process writes its share of the images to its own directory
        base += f"-process{jax.process_index()}of{jax.process_count()}"
    path, k = base, 1
    # lexists: a dangling link at a run's name is taken, not written through
    while any(os.path.lexists(p) for p in (path, path + ".partial", path + "-incomplete")):
        k += 1
        path = f"{base}-{k}"
    return path


def run(cfg, stream=sys.stderr) -> str:
    """Run the config; returns the finished run directory (with log.txt, what the run printed)."""
    stream = Tee(stream)
    check_run_config(cfg)
    if cfg.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compilation_cache))
    if cfg.distributed:
        distributed.initialize(cfg)
    devs = experiment.devices()
    provenance = experiment.provenance(devs)
    prior = experiment.load_prior(cfg)
    files, images, indices, conversions = load_images(cfg, prior)
    names = data.output_names(files)
    image_shape = images.shape[1:]
    host_free = available_memory(jax.local_devices(backend="cpu")[0])
    exp = experiment.setup(cfg, prior, image_shape)
    runner = exp.runner
    # Before compiling: a missing weight file is an error of the config, not of a finished run.
    lpips_metric = lpips.load(cfg.metrics.lpips_weights) if cfg.metrics.lpips_weights else None
    problems, sample_keys = zip(*[exp.measure(x, i) for i, x in zip(indices, images)])
    # Every input is checked by now: what runs, where, and what was done to the images, before compiling.
    said = conversion_line(names, conversions)
    stream.write(f"devices: {experiment.describe_devices(devs)}\n{exp.describe()}\n" + (said + "\n" if said else ""))
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
            results.append(write_image_outputs(partial, name, x, problem, out, cfg, lpips_metric,
                                               record_every=runner.record_every))
    except BaseException as e:      # diverged, interrupted, disk full: never leave it looking like a result
        reason = str(e) if isinstance(e, Diverged) else f"stopped by {type(e).__name__}: {e}"
        with open(os.path.join(partial, "INCOMPLETE"), "w") as fh:
            fh.write(f"{reason}\nEverything written before this point is kept for inspection; it is not a result.\n")
        with open(os.path.join(partial, "log.txt"), "w") as fh:
            fh.write(stream.text())
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
        "mean_psnr_best_by_residual": float(np.mean([r["best_by_residual"]["psnr"] for r in results])),
        "mean_psnr_oracle_best": float(np.mean([r["oracle_best"]["psnr"] for r in results])),
        **({"mean_lpips_of_mean": float(np.mean([r["mean"]["lpips"] for r in results])),
            "mean_lpips": float(np.mean([p["lpips"] for r in results for p in r["samples"]]))}
           if lpips_metric else {}),
        "image_conversions": {n: c for n, c in zip(names, conversions) if c},
        "images": results, "config": json.loads(cfg.to_json_best_effort()), "provenance": provenance,
    }
    with open(os.path.join(partial, "metrics.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    if cfg.metrics.multimodal:
        headline = (f"PSNR of the sample with the smallest residual {summary['mean_psnr_best_by_residual']:.2f} dB; "
                    f"oracle best of {cfg.num_samples} {summary['mean_psnr_oracle_best']:.2f}; posterior mean "
                    f"{summary['mean_psnr_of_mean']:.2f} (a multimodal posterior: where samples land in different "
                    f"modes, their mean is none of them)")
    else:
        headline = (f"PSNR of the posterior mean {summary['mean_psnr_of_mean']:.2f} dB, "
                    f"SSIM {summary['mean_ssim_of_mean']:.3f}")
    message = (f"compile {compile_seconds:.1f}s, {summary['seconds_per_step'] * 1e3:.0f} ms/step; "
               f"{headline}\nwrote {final}\n")
    with open(os.path.join(partial, "log.txt"), "w") as fh:         # what the run printed, this line too
        fh.write(stream.text() + message)
    os.replace(partial, final)
    stream.write(message)
    return final


SANE_RANGE = 3.0        # images lie in [-1, 1]; a sample beyond +-3 has left the data, finite or not
MAX_SHOWN = 8           # samples shown in a row of report.png and grid.png
MAX_CURVE_POINTS = 200  # per-step values kept in metrics.json per sample
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


def write_image_outputs(run_dir, name, x, problem: solvers.Problem, out, cfg, lpips_metric=None, record_every=1):
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
    picture = np.clip(np.asarray(op.display(jnp.asarray(y))), -1, 1)
    if picture.shape != x.shape:            # e.g. the padded Fourier amplitude: resized to fit the row
        picture = np.asarray(jax.image.resize(picture, x.shape, "linear"))
    shown = list(samples[:MAX_SHOWN])
    lo, hi = float(std.min()), float(std.max())
    report.labelled_grid([[x, picture, *shown, mean, io.normalise(std)]], [""],
                         ["truth", "measurement", *[f"sample {k}" for k in range(len(shown))], "mean", "std"],
                         os.path.join(d, "report.png"), scale=s, bars={(0, len(shown) + 3): (lo, hi)},
                         title=f"{name}: {cfg.solver.name}, {len(samples)} samples"
                               + (f" ({len(shown)} shown)" if len(shown) < len(samples) else ""))
    rows = [list(samples[i:i + MAX_SHOWN]) for i in range(0, len(samples), MAX_SHOWN)]
    report.labelled_grid(rows, [f"{i}-{i + len(r) - 1}" for i, r in zip(range(0, len(samples), MAX_SHOWN), rows)],
                         [f"+{k}" for k in range(len(rows[0]))], os.path.join(d, "grid.png"), scale=s,
                         title="posterior samples (row: first-last index; column: + offset)")
    if "x0_hat_record" in out:
        rec = out["x0_hat_record"][0]
        report.labelled_grid([list(rec)], ["x0_hat"], [f"step {k * record_every + 1}" for k in range(rec.shape[0])],
                             os.path.join(d, "progress.png"), scale=s, title="sample 0's x0_hat during the run")
    curves = {k: v for k, v in out.items() if np.ndim(v) == 2 and v.shape[0] == len(samples) and k != "samples"}
    residual = [float(np.linalg.norm(y - np.asarray(op(jnp.asarray(v))))) for v in samples]
    per = [{"psnr": metrics.psnr(v, x), "ssim": metrics.ssim(v, x), "residual": r} for v, r in zip(samples, residual)]
    result = {"image": name, "samples": per,
              "mean": {"psnr": metrics.psnr(mean, x), "ssim": metrics.ssim(mean, x)},
              "best_psnr": max(p["psnr"] for p in per)}
    # For a multimodal posterior (phase retrieval: an image, its sign flip and its twin fit y alike) the mean
    # is no headline: the sample a user can pick without the truth, by its residual, and the oracle best.
    by_residual = int(np.argmin(residual))
    oracle = int(np.argmax([p["psnr"] for p in per]))
    result["best_by_residual"] = {"sample": by_residual, **{k: per[by_residual][k] for k in ("psnr", "ssim")}}
    result["oracle_best"] = {"sample": oracle, **{k: per[oracle][k] for k in ("psnr", "ssim")}}
    if lpips_metric is not None:
        dist = lpips_metric(np.concatenate([samples, mean[None]]), np.repeat(np.asarray(x)[None], len(samples) + 1, 0))
        for p, v in zip(per, dist):
            p["lpips"] = float(v)
        result["mean"]["lpips"] = float(dist[-1])
    if "distance" in out:
        result["final_distance"] = [float(v) for v in out["distance"][:, -1]]
    result["std"] = {"mean": float(std.mean()), "max": float(std.max()),
                     **{f"p{q}": float(np.percentile(std, q)) for q in (50, 95)}}
    if curves:             # the per-step record (the distance ||y - A(x0_hat)||, or a residual), at most 200 points
        name_, values = next(iter(curves.items()))
        steps = np.unique(np.linspace(0, values.shape[1] - 1, min(values.shape[1], MAX_CURVE_POINTS)).astype(int))
        result["per_step"] = {"steps": [int(t) + 1 for t in steps],
                              **{k: [[float(u) for u in v[i, steps]] for i in range(len(v))] for k, v in curves.items()}}
        report.line_plot({f"sample {i}": values[i] for i in range(min(len(values), MAX_SHOWN))},
                         os.path.join(d, f"{name_}.png"), xlabel="step", ylabel=name_,
                         title=f"{name_} against the step")
    return result
