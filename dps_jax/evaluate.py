"""The paper's comparison (Tables 1-3, 6-7): every method on every task it supports, on one set of images.

    python -m dps_jax.evaluate --config=configs/eval/paper_table.py [--config.data.num_images=8 ...]

Each (task, method) cell runs the task's settings (`configs/<task>.py` with the chosen preset: its operator,
noise and every solver's tuned options and step count) with that solver on the same measurements: image i is
measured with the same key for every method (`dps_jax.experiment`). `cells` sets task-config fields in every
cell (`--config.cells.solver.ddrm.eta=0.5`). A finished cell is saved under `<output.root>/cells/` and never
computed again; an interrupted run resumes at the first unfinished cell. The results are written as
`table.md`, `table.json` (per cell: PSNR and SSIM, mean and standard error over images, network evaluations
per sample, seconds per image of sampling and seconds of compiling, the identity it was computed with and
where), `table.csv` (every figure, a row per cell), `table.tex` (a LaTeX tabular, the best of each column in
bold) and `grid.png` (labelled: the truth and the measurement, then one row per method; a column per task).
A stored cell is reused only when its identity (its resolved task config, the images, the content of the
weight files, the source of the code that computes it) is the one requested and its digest matches; otherwise it is recomputed, with a line naming
what differs. A method that cannot take a task (DDRM on motion blur, a Fienup method on anything but phase
retrieval) is a cell "n/a" with its reason, once, under the table.

Phase retrieval draws `pr_samples` (4) samples or restarts per image and reports the one with the smallest
measurement residual || |F pad x| - y || (what a user without the truth can do), and separately the
oracle best by PSNR that the paper reports.

The paper's metrics are computed from the reconstructions each cell keeps (`cells/<task>__<method>.npz`),
against the truths, every time the table is written (so new weights need no new samples): FID and KID on
the feature network of `metrics.fid_weights` ("" = the shipped Fashion-MNIST classifier, FID-FMNIST, for
32 x 32 grey images; a converted pytorch-fid Inception for the paper's FID; "none" = off) and LPIPS with
`metrics.lpips_weights` (a converted file; "" = off).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import cli as cli_lib
from dps_jax import cell_store, config_base, config_check, data, experiment, io, metrics, report, solvers
from dps_jax.metrics import fid, lpips


class Unsupported(ValueError):
    pass


# ---- images and cells --------------------------------------------------------------------------

def load_images(cfg, prior) -> np.ndarray:
    """(N, H, W, C) in [-1, 1]: Fashion-MNIST's test split [first, first + N) or an image folder."""
    if cfg.data.source == "fashion_mnist":
        x = data.fashion_mnist("test", cfg.data.fashion_mnist_root, cfg.data.image_size)
        x = x[cfg.data.first:cfg.data.first + cfg.data.num_images]
    elif cfg.data.source == "folder":
        files = data.list_images(cfg.data.root or data.SHIPPED_IMAGES)[:cfg.data.num_images or None]
        x = np.stack([data.load_image(p, cfg.data.image_size, prior.channels) for p in files])
    else:
        raise ValueError(f"data.source must be 'fashion_mnist' or 'folder', got {cfg.data.source!r}")
    if not len(x):
        raise ValueError("no images to evaluate on")
    prior.check_image_shape(x.shape[1:])
    return x


def split(names: str) -> List[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def task_config(cfg, task: str, method: str):
    """The config of one cell: the task's settings with this solver, the evaluation's seed, data, model and
    `cells` overrides."""
    t = config_base.apply_protocol(config_base.task_config(task, cfg.preset, pick=False), cfg.protocol)
    t.solver.name = method
    t.seed = cfg.seed
    t.num_samples = cfg.pr_samples if task == "phase_retrieval" else 1
    t.model.checkpoint = cfg.model.checkpoint
    t.data.image_size = cfg.data.image_size
    config_base.set_overrides(t, cfg.cells)
    return config_check.check(t)


def cell_runner(cfg, task, method, prior, images):
    """(task config, Runner) of one cell, or Unsupported with the solver's own reason (no compiling)."""
    tcfg = task_config(cfg, task, method)
    # Bad options are errors of the run; only the solver's verdict on the problem (`prepare`) is n/a.
    runner = experiment.build_runner(tcfg, prior, images.shape[1:])
    first, _ = experiment.measure(tcfg, images[0], 0)
    try:
        runner.prepare(first)
    except ValueError as e:
        raise Unsupported(" ".join(str(e).split())) from None
    return tcfg, runner


# A cell in progress stores the images it has done at most this often (seconds): a long cell resumes at its next
# image, and a paper-sized one does not rewrite its reconstructions after every image.
PARTIAL_EVERY_SECONDS = 60.0


def run_cell(cfg, task, method, tcfg, runner, images, progress, path=None, identity=None):
    """One cell: (per-image metrics, the shown sample of image `cfg.grid_image`, cost; the reconstruction
    of every image (N, H, W, C), the sample picked by residual). The programs are compiled before the clock
    starts: `seconds_per_image` is sampling alone, `compile_seconds` the compiling; `cpu_seconds_per_image` is
    the processor time the sampling took (all threads): wall seconds well above it mean the run waited for
    the CPU (other jobs, or a pause), and then overstate the method's cost. With `path` (the cell's
    file) and its `identity`, the images done so far are kept beside it and a rerun starts after them."""
    image_shape = images.shape[1:]
    rows, shown, seconds, cpu_seconds, picked = [], None, 0.0, 0.0, np.zeros(images.shape, np.float32)
    start = 0
    if path is not None:
        part, done, _ = cell_store.read_partial(cell_store.partial_path(path), identity, images.shape)
        if part is not None:
            rows, seconds, start, picked = part["rows"], part["seconds"], part["done"], done
            cpu_seconds = part.get("cpu_seconds", float("nan"))      # older partial files did not keep it
            shown = None if part.get("shown") is None else np.asarray(part["shown"], np.float32)
            progress(start)
    compile_seconds = runner.compile(experiment.measure(tcfg, images[0], 0, image_shape)[0])
    last_save = time.perf_counter()
    for i in range(start, len(images)):
        x = images[i]
        problem, k_sample = experiment.measure(tcfg, x, i, image_shape)
        t0, c0 = time.perf_counter(), time.process_time()
        samples = runner(problem, k_sample)["samples"]
        seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - c0
        residual = [float(jnp.linalg.norm(problem.op(jnp.asarray(s)) - problem.y)) for s in samples]
        psnr = [metrics.psnr(s, x) for s in samples]
        pick, oracle = int(np.argmin(residual)), int(np.argmax(psnr))
        row = {"psnr": psnr[pick], "ssim": metrics.ssim(samples[pick], x), "residual": residual[pick]}
        if len(samples) > 1:
            row.update(psnr_oracle=psnr[oracle], ssim_oracle=metrics.ssim(samples[oracle], x))
        rows.append(row)
        picked[i] = np.asarray(samples[pick])
        if i == cfg.grid_image:
            shown = samples[pick]
        if path is not None and i + 1 < len(images) and time.perf_counter() - last_save >= PARTIAL_EVERY_SECONDS:
            cell_store.write(cell_store.partial_path(path),
                             {"identity": identity, "done": i + 1, "rows": rows, "seconds": seconds,
                              **({"cpu_seconds": cpu_seconds} if math.isfinite(cpu_seconds) else {}),
                              "shown": None if shown is None else np.asarray(shown).tolist()}, picked)
            last_save = time.perf_counter()
        progress(i + 1)
    summary = {k: summarise([r[k] for r in rows]) for k in rows[0]}
    cell = {"task": task, "method": method, "num_images": len(images), "samples_per_image": tcfg.num_samples,
            "nfe": runner.evaluations, "seconds_per_image": seconds / len(images), "compile_seconds": compile_seconds,
            **({"cpu_seconds_per_image": cpu_seconds / len(images)} if math.isfinite(cpu_seconds) else {}),
            "metrics": summary, "per_image": rows,
            "shown": None if shown is None else np.asarray(shown).tolist()}
    if start:
        cell["resumed_at_image"] = start        # its time was measured in two runs (perhaps on other loads)
    return cell, picked


# ---- what a cell is: its identity and its digest ----------------------------------------------------

# Task-config fields that do not change a cell's numbers: where files go, the compilation cache, progress
# and snapshots, chunking (sample i depends on its key only), metrics computed afterwards, multi-host setup.
NOT_IDENTITY = ("output.", "compilation_cache", "sampler.record_every", "sampler.steps_per_call", "chunk_size",
                "metrics.", "distributed", "coordinator_address", "num_processes", "process_id", "data.root",
                "data.num_images")
_FILE_HASHES: Dict[tuple, str] = {}


def file_hash(path: str) -> str:
    """sha256 of a file's content (first 16 hex digits), cached by path, size and modification time."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()[:16]
    return _FILE_HASHES[key]


# The code a cell's numbers depend on (the solvers, operators, networks, schedules, measurement and metrics),
# relative to the package: its source is part of every cell's identity.
CODE = ("solvers", "operators", "models", "metrics", "analytic", "diffusion.py", "prior.py", "schedule.py",
        "likelihoods.py", "experiment.py", "data.py")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 (16 hex digits) of the source files of CODE: a change to how any number is computed makes
    every stored cell stale. (Run a long comparison from a fixed commit, e.g. a git worktree, to resume it.)"""
    root = os.path.dirname(os.path.abspath(__file__))
    files = []
    for entry in CODE:
        path = os.path.join(root, entry)
        if os.path.isdir(path):
            files += [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".py")]
        else:
            files.append(path)
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(os.path.relpath(f, root).encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def cell_identity(tcfg, images) -> Dict[str, object]:
    """Everything that determines a cell, flat by dotted key: its resolved task config (solver, its options
    and steps, seed, preset, operator, noise, model, every override applied), the images (count and a hash
    of their pixels), the content hash of every weight file it reads (the prior, the kernel model) and of the
    code that computes it (`code_digest`)."""
    from dps_jax.models.checkpoint import SHIPPED_PRIOR
    from dps_jax.models.kernel_wizard import SHIPPED_KERNEL_MODEL

    ident = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config_check.flatten(tcfg).items()
             if not k.startswith(NOT_IDENTITY)}
    ident["images.count"] = int(len(images))
    ident["images.sha256"] = hashlib.sha256(np.ascontiguousarray(images, np.float32).tobytes()).hexdigest()[:16]
    ident["files.prior"] = file_hash(tcfg.model.checkpoint or SHIPPED_PRIOR)
    ident["code.sha256"] = code_digest()
    if tcfg.operator.get("name") == "nonlinear_blur":
        ident["files.kernel_model"] = file_hash(os.path.expanduser(tcfg.operator.get("checkpoint") or "")
                                                or SHIPPED_KERNEL_MODEL)
    return ident


def feature_network(cfg, image_shape):
    """(FeatureNet or None, what the table says about FID)."""
    weights = cfg.metrics.fid_weights
    if weights == "none":
        return None, "FID / KID: off (metrics.fid_weights=none)."
    if not weights:
        from dps_jax.models import classifier

        _, c = classifier.load()
        if tuple(image_shape) != (c.image_size, c.image_size, c.in_channels):
            return None, ("FID / KID: the shipped Fashion-MNIST classifier takes 32 x 32 grey images; set "
                          "metrics.fid_weights to a converted Inception (python -m checkpoints_convert.metrics fid).")
        return fid.load_features(""), ("FID-FMNIST / KID-FMNIST: on the penultimate features of the shipped "
                                       "Fashion-MNIST classifier (dps_jax.train.classifier).")
    return fid.load_features(weights), f"FID / KID: pytorch-fid's Inception ({weights})."


def metric_networks(cfg, image_shape):
    """(FID feature network or None, LPIPS or None, the lines the table says about them): loaded before any
    cell runs, so a missing weight file stops the command at once."""
    net, fid_note = feature_network(cfg, image_shape)
    metric = lpips.load(cfg.metrics.lpips_weights) if cfg.metrics.lpips_weights else None
    if net is not None:
        fid_note += (" KID's estimator assumes independent sets: reconstructions paired with their own truths can "
                     "read below 0.")
    notes = [fid_note, f"LPIPS: {'weights ' + cfg.metrics.lpips_weights if metric else 'off (metrics.lpips_weights)'}."]
    return net, metric, notes


def quality(out, cells, images, net, metric) -> Dict:
    """{(task, method): {"fid": float, "kid": float, "lpips": {"mean", "se"}}} of every cell whose
    reconstructions are on disk."""
    truth_features = net(images) if net is not None else None
    result = {}
    for key in cells:
        path = os.path.join(out, "cells", f"{key[0]}__{key[1]}.json")
        if not os.path.exists(cell_store.samples_path(path)):
            continue
        recon = cell_store.load_samples(path, images.shape)      # checked again: read, not trusted
        q = {}
        if net is not None and len(images) > 1:       # a covariance needs two images (shown from MIN_FID_IMAGES)
            features = net(recon)
            q["fid"] = fid.fid(features, truth_features)
            q["kid"] = fid.kid(features, truth_features)[0]
        if metric is not None:
            q["lpips"] = summarise(metric(recon, images))
        result[key] = q
    return result


def summarise(values) -> Dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0}


# ---- outputs -----------------------------------------------------------------------------------

# Below this many images FID and KID are not shown: their bias (FID's grows as 1 / N) and spread at a few
# dozen images exceed the differences between methods (FID-FMNIST of two halves of the test set: 2.3 at 5,000
# images each, tens at 32); the table's 64 images are the least it reports them for.
MIN_FID_IMAGES = 50


def table_markdown(cfg, tasks, methods, cells, reasons, num_images, scores=None, notes=(), device="") -> str:
    columns = table_columns(tasks)
    head = "| method | " + " | ".join(c[3] for c in columns) + " |"
    lines = [f"PSNR [dB] / SSIM, mean ± standard error over {num_images} images "
             f"(preset {cfg.preset}, {cfg.protocol.upper()} protocol; phase retrieval: best of {cfg.pr_samples} "
             f"by measurement residual, "
             f"and the oracle best by PSNR as the paper reports)", "", head,
             "|" + " --- |" * (len(columns) + 1)]
    for method in methods:
        row = [f"`{method}`"]
        for task, p, s, _ in columns:
            c = cells.get((task, method))
            if c is None:
                row.append("n/a")
            else:
                m = c["metrics"]
                row.append(f"{m[p]['mean']:.2f} ± {m[p]['se']:.2f} / {m[s]['mean']:.3f} ± {m[s]['se']:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Network evaluations per sample / seconds per image, sampling only (its processor seconds) / "
                  f"seconds of compiling, once per cell ({device or 'this machine'}, {num_images} images; wall "
                  "seconds well above the processor's mean the run waited for the CPU, and overstate the cost):",
              "",
              "| method | " + " | ".join(tasks) + " |", "|" + " --- |" * (len(tasks) + 1)]
    for method in methods:
        row = [f"`{method}`"]
        for task in tasks:
            c = cells.get((task, method))
            compile_s = c.get("compile_seconds") if c else None
            cpu = c.get("cpu_seconds_per_image") if c else None
            row.append("n/a" if c is None else f"{c['nfe']} / {c['seconds_per_image']:.2f}"
                       + ("" if cpu is None else f" ({cpu:.2f})") + " / "
                       + ("-" if compile_s is None else f"{compile_s:.1f}"))
        lines.append("| " + " | ".join(row) + " |")
    scores = dict(scores or {})
    if num_images < MIN_FID_IMAGES:            # FID / KID of a few images mean little: not shown
        scores = {k: {n: v for n, v in q.items() if n not in ("fid", "kid")} for k, q in scores.items()}
        notes = [f"FID / KID: not shown for {num_images} images (fewer than {MIN_FID_IMAGES}: too biased and noisy "
                 "to compare methods)."] + [n for n in notes if not n.startswith(("FID", "KID"))]
    if any(scores.values()):
        names = [n for n in ("fid", "kid", "lpips") if any(n in q for q in scores.values())]
        head = {"fid": "FID", "kid": "KID x 10^3", "lpips": "LPIPS"}
        shown = {"fid": lambda v: f"{v:.1f}", "kid": lambda v: f"{1e3 * v:.1f}",
                 "lpips": lambda v: f"{v['mean']:.3f} ± {v['se']:.3f}"}
        lines += ["", " / ".join(head[n] for n in names) + " of the reconstructions against the truths (lower is "
                  "better; FID and KID over the cell's images, LPIPS mean ± standard error):", "",
                  "| method | " + " | ".join(tasks) + " |", "|" + " --- |" * (len(tasks) + 1)]
        for method in methods:
            row = [f"`{method}`"]
            for task in tasks:
                q = scores.get((task, method))
                if not q:
                    row.append("n/a" if (task, method) not in cells else "-")
                    continue
                row.append(" / ".join(shown[n](q[n]) if n in q else "-" for n in names))
            lines.append("| " + " | ".join(row) + " |")
    if reasons:
        lines += ["", "n/a:"]
        lines += [f"- `{m}` on {', '.join(ts)}: {why}" for (m, why), ts in sorted(reasons.items())]
    lines += ["", "grid.png: the truth and the measurement, then one row per method in this order (grey: n/a); "
              "one column per task."] + ([""] + list(notes) if notes else [])
    return "\n".join(lines) + "\n"


def grid_image(tasks, methods, cells, truth, inputs, path: str, scale: int) -> None:
    """grid.png: a row for the truth, one for the measurement, then one per method (labelled on the left);
    a column per task (labelled on top). An n/a cell is mid grey."""
    rows = [list(truth), list(inputs)]
    for method in methods:
        row = []
        for task in tasks:
            c = cells.get((task, method))
            row.append(None if c is None or c["shown"] is None else np.asarray(c["shown"], np.float32))
        rows.append(row)
    report.labelled_grid(rows, ["truth", "measurement", *methods], list(tasks), path, scale=scale,
                         title="the comparison's image (grey: n/a); phase retrieval: the sample picked by residual")


def table_columns(tasks):
    """(task, PSNR key, SSIM key, heading) of every column: phase retrieval also as its oracle best."""
    columns = []
    for task in tasks:
        columns.append((task, "psnr", "ssim", task))
        if task == "phase_retrieval":
            columns.append((task, "psnr_oracle", "ssim_oracle", "phase_retrieval (oracle)"))
    return columns


def table_csv(tasks, methods, cells, scores) -> str:
    """One row per (method, task) cell with every figure: for spreadsheets and plotting."""
    head = ["method", "task", "psnr", "psnr_se", "ssim", "ssim_se", "psnr_oracle", "psnr_oracle_se", "fid", "kid",
            "lpips", "lpips_se", "nfe", "seconds_per_image", "cpu_seconds_per_image", "compile_seconds", "num_images"]
    lines = [",".join(head)]
    for method in methods:
        for task in tasks:
            c = cells.get((task, method))
            if c is None:
                continue
            m, q = c["metrics"], scores.get((task, method), {})
            get = lambda k, part: m[k][part] if k in m else ""
            row = [method, task, get("psnr", "mean"), get("psnr", "se"), get("ssim", "mean"), get("ssim", "se"),
                   get("psnr_oracle", "mean"), get("psnr_oracle", "se"), q.get("fid", ""), q.get("kid", ""),
                   q["lpips"]["mean"] if "lpips" in q else "", q["lpips"]["se"] if "lpips" in q else "",
                   c["nfe"], c["seconds_per_image"], c.get("cpu_seconds_per_image", ""), c.get("compile_seconds", ""),
                   c["num_images"]]
            lines.append(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
    return "\n".join(lines) + "\n"


def table_latex(tasks, methods, cells, num_images) -> str:
    """A LaTeX tabular of PSNR and SSIM (mean $\\pm$ standard error), the best of each column in bold."""
    columns = table_columns(tasks)
    best = {}
    for task, p, s_, _ in columns:
        for key in (p, s_):
            values = [cells[(task, m)]["metrics"][key]["mean"] for m in methods if (task, m) in cells]
            best[(task, key)] = max(values) if values else None

    def fig(task, key, digits):
        v = cells[(task, m)]["metrics"][key]
        text = f"{v['mean']:.{digits}f} $\\pm$ {v['se']:.{digits}f}"
        return f"\\textbf{{{text}}}" if v["mean"] == best[(task, key)] else text

    esc = lambda t: t.replace("_", "\\_")
    lines = ["% PSNR [dB] / SSIM, mean $\\pm$ standard error over " f"{num_images} images; best per column in bold",
             "\\begin{tabular}{l" + "c" * len(columns) + "}", "\\hline",
             "method & " + " & ".join(esc(h) for *_, h in columns) + " \\\\", "\\hline"]
    for m in methods:
        row = [esc(m)]
        for task, p, s_, _ in columns:
            row.append("n/a" if (task, m) not in cells else f"{fig(task, p, 2)} / {fig(task, s_, 3)}")
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def run_cells(cfg, todo, images, cells, stream) -> None:
    """Run the cells of `todo` in turn, each stored as soon as it is done (a resumable store), with a
    progress line per image; adds them to `cells`."""
    total, t_start = len(todo) * len(images), time.perf_counter()
    tty = bool(getattr(stream, "isatty", lambda: False)())
    for k, (task, method, path, identity, tcfg, runner) in enumerate(todo):
        def progress(i, k=k, task=task, method=method):
            n = k * len(images) + i
            eta = (time.perf_counter() - t_start) / n * (total - n)
            line = (f"[{'#' * int(30 * n / total):<30}] {n}/{total} {method} on {task}, image {i}/{len(images)}, "
                    f"eta {eta / 60:5.1f} min")
            stream.write(f"\r{line} " if tty else line + "\n")      # a log file gets one line per image
            stream.flush()
        cell, picked = run_cell(cfg, task, method, tcfg, runner, images, progress, path, identity)
        cell["identity"], cell["provenance"] = identity, experiment.provenance()
        cells[(task, method)] = cell_store.write(path, cell, picked)
        cell_store.remove_partial(path)
    if tty:
        stream.write("\n")


def evaluate(cfg, stream=sys.stderr) -> str:
    config_check.check(cfg)
    tasks, methods = split(cfg.tasks), split(cfg.methods)
    if not tasks or not methods:
        raise ValueError(f"tasks {cfg.tasks!r:.60} and methods {cfg.methods!r:.60} must each name at least one")
    for t in tasks:
        if t not in config_base.TASKS:
            raise ValueError(f"unknown task {t!r:.60}; expected one of {config_base.TASKS}")
    for m in methods:
        solvers.get(m)
    experiment.check_output_root(cfg.output.root)
    if cfg.data.source == "folder":          # grid.png would be read as an image by the next run
        experiment.check_output_apart(cfg.output.root, cfg.data.root or data.SHIPPED_IMAGES)
    if cfg.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compilation_cache))
    devs = experiment.devices()
    stream.write(f"devices: {experiment.describe_devices(devs)}\n")
    prior = experiment.load_prior(task_config(cfg, tasks[0], "ps"))
    images = load_images(cfg, prior)
    if not 0 <= cfg.grid_image < len(images):
        raise ValueError(f"grid_image {cfg.grid_image} is not one of the {len(images)} images")
    net, metric, notes = metric_networks(cfg, images.shape[1:])
    out = os.path.expanduser(cfg.output.root)
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)

    cells, reasons, todo = {}, {}, []
    for method in methods:          # what is on disk, what cannot run (said at once), what is left
        for task in tasks:
            path = os.path.join(out, "cells", f"{task}__{method}.json")
            identity = cell_identity(task_config(cfg, task, method), images)
            cell, why = cell_store.read(path, identity, images.shape) if os.path.lexists(path) else (None, "")
            if why:
                stream.write(f"cell {task} / {method}: {why}: recomputed\n")
            if cell is None:
                try:
                    todo.append((task, method, path, identity) + cell_runner(cfg, task, method, prior, images))
                    continue
                except Unsupported as e:
                    cell = cell_store.write(path, {"task": task, "method": method, "unsupported": str(e),
                                                   "identity": identity}, None)
            if "unsupported" in cell:
                reasons.setdefault((method, cell["unsupported"]), []).append(task)
            else:
                cells[(task, method)] = cell
    stream.write(f"{len(cells)} cells done before, {len(todo)} to run, {sum(map(len, reasons.values()))} n/a\n")
    try:
        run_cells(cfg, todo, images, cells, stream)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the finished cells are kept in {os.path.join(out, 'cells')}; the same command "
                                f"goes on from them") from None

    truth, inputs = [], []
    for task in tasks:
        tcfg = task_config(cfg, task, "ps")
        problem, _ = experiment.measure(tcfg, images[cfg.grid_image], cfg.grid_image, images.shape[1:])
        truth.append(images[cfg.grid_image])
        picture = np.clip(np.asarray(problem.op.display(problem.y)), -1, 1)
        if picture.shape != images.shape[1:]:          # e.g. the padded Fourier amplitude: resized to fit
            picture = np.asarray(jax.image.resize(picture, images.shape[1:], "linear"))
        inputs.append(picture)
    grid_image(tasks, methods, cells, truth, inputs, os.path.join(out, "grid.png"), cfg.output.png_scale)
    scores = quality(out, cells, images, net, metric)
    markdown = table_markdown(cfg, tasks, methods, cells, reasons, len(images), scores, notes,
                              device=experiment.describe_devices(devs))
    io.atomic_write(os.path.join(out, "table.md"), markdown.encode())
    summary = {"config": json.loads(cfg.to_json_best_effort()), "date": time.strftime("%Y-%m-%d"),
               "provenance": experiment.provenance(devs), "num_images": len(images),
               "fid_shown": len(images) >= MIN_FID_IMAGES,
               "cells": [{**{k: v for k, v in c.items() if k not in ("shown", "per_image", "digest")},
                          "quality": scores.get(key, {})} for key, c in cells.items()],
               "unsupported": [{"method": m, "tasks": ts, "reason": why} for (m, why), ts in sorted(reasons.items())]}
    io.atomic_write(os.path.join(out, "table.json"), json.dumps(summary, indent=2).encode())
    io.atomic_write(os.path.join(out, "table.csv"), table_csv(tasks, methods, cells, scores).encode())
    io.atomic_write(os.path.join(out, "table.tex"), table_latex(tasks, methods, cells, len(images)).encode())
    stream.write(markdown + f"wrote {out}/table.md, table.json, table.csv, table.tex, grid.png\n")
    return out


def cli(argv, stream=sys.stderr, out=sys.stdout) -> int:
    """Run the evaluation for command-line `argv` (argv[0] the program); returns the exit status."""
    return cli_lib.main(argv, program="dps_jax.evaluate", doc=__doc__.split("\n\n")[0], subdir="eval",
                        run=lambda cfg, overrides: evaluate(cfg, stream), stream=stream, out=out)


if __name__ == "__main__":
    sys.exit(cli(sys.argv))
