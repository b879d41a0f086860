"""Time to quality: each solver's PSNR and FID-FMNIST against its network evaluations and wall time.

    python -m benchmarks.time_to_quality --out runs/t2q --tasks super_resolution,phase_retrieval \
        --num_images 16 --summary benchmarks/time_to_quality.json --plot benchmarks/time_to_quality.png

On the shipped prior and the comparison table's images and measurements (`dps_jax.evaluate`: t10k images
100 onwards, image i measured with the same key for every method), every diffusion solver runs at each
step count of --steps, and DPS also at --dps_steps (250, 500) and at --ref_steps (1000, the paper's), the
reference quality; the iterative solvers (ADMM-TV, ER / HIO / OSS, PnP-ADMM) run once at their configured
iterations. A step count is the solver's own `steps` (diffusion steps; DAPS: annealing levels).
The gradient solvers' step size zeta was tuned for 50 steps (the task configs); at T steps it is
zeta_50 x 50 / T, the same total guidance (--zeta_rule fixed keeps zeta_50).

Seconds per image exclude compiling (each configuration is compiled before its clock starts); phase
retrieval draws 4 samples per image and keeps the one with the smallest residual, as the table does.
Every point is stored under --out as it finishes (`points/<task>__<method>__<steps>.json` and the
reconstructions' .npz), so an interrupted run resumes where it stopped; the summary takes every stored
point of the tasks named, those of earlier runs with other step lists too. A solver's step count is skipped
when its time at fewer steps, scaled by the step ratio, exceeds the reference's: it cannot reach it sooner.

A point reaches the reference when its mean PSNR is at least DPS-`ref_steps`'s minus that mean's
standard error and its FID-FMNIST at most 1.25 x DPS-`ref_steps`'s; per task the summary names the
fastest such point (by seconds per image), or DPS-`ref_steps` itself when none is faster.
"""

from __future__ import annotations

import argparse
import glob
import io as _io
import json
import os
import sys
import time


FID_SLACK = 1.25


def iterative(method: str) -> bool:
    """Whether `method` is an iterative solver (no diffusion steps: run once at its configured iterations)."""
    from dps_jax import solvers

    return solvers.get(method).kind != "diffusion"


def point_config(cfg, task, method, steps, zeta_rule):
    """The task config of one point: `evaluate.task_config` with this step count (a gradient solver's zeta
    scaled to the same total guidance with zeta_rule "total")."""
    from dps_jax import config_base, evaluate, solvers

    tcfg = evaluate.task_config(cfg, task, method)
    if steps and not iterative(method):
        section = tcfg.solver[solvers.config_key(method)]
        if zeta_rule == "total" and method in config_base.GRADIENT_SOLVERS:
            section.scale = section.scale * section.steps / steps
        section.steps = int(steps)
    return tcfg


def run_point(cfg, task, method, steps, zeta_rule, prior, images):
    """(point dict, reconstructions (N, H, W, C)) or (None, reason) where the solver cannot take the task."""
    from dps_jax import evaluate, experiment

    tcfg = point_config(cfg, task, method, steps, zeta_rule)
    runner = experiment.build_runner(tcfg, prior, images.shape[1:])
    first, _ = experiment.measure(tcfg, images[0], 0, images.shape[1:])
    try:
        first = runner.prepare(first)
    except ValueError as e:
        return None, " ".join(str(e).split())
    compile_s = runner.compile(first)
    cell, picked = evaluate.run_cell(cfg, task, method, tcfg, runner, images, lambda i: None)
    m = cell["metrics"]
    point = {"task": task, "method": method, "steps": steps, "nfe": cell["nfe"],
             "seconds_per_image": cell["seconds_per_image"], "compile_s": compile_s,
             "psnr": m["psnr"], "ssim": m["ssim"], "num_images": len(images)}
    if "psnr_oracle" in m:
        point["psnr_oracle"] = m["psnr_oracle"]
    return point, picked


def points_of(args):
    """Every (task, method, steps) to run, DPS's reference first in each task, then DPS's --dps_steps."""
    out = []
    grid = [int(s) for s in args.steps.split(",")]
    for task in args.tasks.split(","):
        out.append((task, "ps", args.ref_steps))
        out += [(task, "ps", int(s)) for s in args.dps_steps.split(",") if s]
        for method in args.methods.split(","):
            if iterative(method):                  # also refuses an unknown name
                out.append((task, method, 0))
            else:
                out += [(task, method, s) for s in grid if (method, s) != ("ps", args.ref_steps)]
    return out


def ref_seconds(args, task, kept=None):
    """Seconds per image of the task's DPS reference: the one stored under --out, else the one `kept` from the
    --merge summary (without it, a run that merges would never skip); None before either exists."""
    path = store_path(args.out, task, "ps", args.ref_steps, ".json")
    if os.path.exists(path):
        return json.load(open(path))["seconds_per_image"]
    ref = (kept or {}).get((task, "ps", args.ref_steps))
    return ref["seconds_per_image"] if ref else None


def slower_than_reference(ref_s, last, steps):
    """Why a point at `steps` cannot reach the reference sooner, or "": its solver's time per image at
    fewer steps, `last` = (steps, seconds), scaled by the step ratio exceeds the reference's `ref_s`."""
    if ref_s is None or not last or not last[0] or last[1] * steps / last[0] <= ref_s:
        return ""
    return f"about {last[1] * steps / last[0]:.0f} s/image from {last[0]} steps, the reference {ref_s:.0f}"


def summarise(args, points, fids):
    """Per task: the reference, every point with its FID and whether it reaches the reference, the pick."""
    tasks = {}
    for p in points:
        p["fid"] = fids.get((p["task"], p["method"], p["steps"]))
        tasks.setdefault(p["task"], []).append(p)
    summary = {}
    for task, ps in tasks.items():
        ref = next((p for p in ps if p["method"] == "ps" and p["steps"] == args.ref_steps), None)
        if ref is None:
            continue
        for p in ps:
            fid_ok = p["fid"] is None or ref["fid"] is None or p["fid"] <= FID_SLACK * ref["fid"]
            p["reaches"] = p["psnr"]["mean"] >= ref["psnr"]["mean"] - ref["psnr"]["se"] and fid_ok
        fastest = min((p for p in ps if p["reaches"]), key=lambda p: p["seconds_per_image"])
        summary[task] = {"reference": ref, "fastest_to_reference": fastest, "points": ps}
    return summary


def merged_points(args) -> dict:
    """{(task, method, steps): point} of the --merge summary's tasks named in --tasks (empty without it)."""
    if not args.merge:
        return {}
    with open(args.merge) as f:
        tasks = json.load(f)["tasks"]
    return {(p["task"], p["method"], p["steps"]): {k: v for k, v in p.items() if k != "reaches"}
            for task in args.tasks.split(",") if task in tasks for p in tasks[task]["points"]}


def fid_of(out, points, images):
    """FID-FMNIST of every stored point's reconstructions against the truths."""
    import numpy as np

    from dps_jax.metrics import fid

    net = fid.load_features("")
    truth = net(images)
    result = {}
    for p in points:
        with np.load(store_path(out, p["task"], p["method"], p["steps"], ".npz")) as f:
            result[(p["task"], p["method"], p["steps"])] = fid.fid(net(f["samples"].astype(np.float32)), truth)
    return result


def store_path(out, task, method, steps, ext):
    return os.path.join(out, "points", f"{task}__{method}__{steps}{ext}")


def markdown(summary, ref_steps):
    """An overview row per task (the reference, the fastest point reaching it, DPS at 50 steps), then
    every point of every task."""
    cell = lambda p: f"{p['psnr']['mean']:.2f} / {p['fid']:.1f} / {p['seconds_per_image']:.2f}"
    lines = [f"| task | DPS-{ref_steps}: PSNR / FID-FMNIST / s per image | fastest to it | its PSNR / FID / s | "
             "speed-up | DPS-50 |", "| --- | --- | --- | --- | --- | --- |"]
    for task, s in summary.items():
        ref, pick = s["reference"], s["fastest_to_reference"]
        dps50 = next((p for p in s["points"] if p["method"] == "ps" and p["steps"] == 50), None)
        lines.append(f"| {task} | {cell(ref)} | {pick['method']} {pick['steps'] or ''} | {cell(pick)} | "
                     f"{ref['seconds_per_image'] / pick['seconds_per_image']:.0f}x | "
                     f"{cell(dps50) if dps50 else '-'} |")
    lines.append("")
    for task, s in summary.items():
        ref, pick = s["reference"], s["fastest_to_reference"]
        lines += [f"**{task}**: DPS-{ref_steps} {ref['psnr']['mean']:.2f} dB, FID {ref['fid']:.1f}, "
                  f"{ref['seconds_per_image']:.1f} s / image; fastest to it: {pick['method']} "
                  f"{pick['steps'] or ''} ({pick['psnr']['mean']:.2f} dB, FID {pick['fid']:.1f}, "
                  f"{pick['seconds_per_image']:.2f} s / image)", "",
                  "| method | steps | NFE | s / image | PSNR | FID-FMNIST | reaches |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for p in sorted(s["points"], key=lambda p: (p["method"], p["steps"])):
            lines.append(f"| {p['method']} | {p['steps'] or '-'} | {p['nfe']} | {p['seconds_per_image']:.2f} | "
                         f"{p['psnr']['mean']:.2f} ± {p['psnr']['se']:.2f} | {p['fid']:.1f} | "
                         f"{'yes' if p['reaches'] else ''} |")
        lines.append("")
    return "\n".join(lines)


def plot(summary, path):
    """One figure, a row per task: PSNR against seconds per image and against NFE, FID-FMNIST against
    seconds per image; one line per solver, log axes, DPS-`ref_steps` dashed."""
    from benchmarks import plot as plotting

    items = []
    for task, s in summary.items():
        ref = s["reference"]
        views = [("PSNR vs s / image", "seconds_per_image", lambda p: p["psnr"]["mean"], ref["psnr"]["mean"]),
                 ("PSNR vs NFE", "nfe", lambda p: p["psnr"]["mean"], ref["psnr"]["mean"]),
                 ("FID-FMNIST vs s / image", "seconds_per_image", lambda p: p["fid"], ref["fid"])]
        for title, x, y, floor in views:
            series = {}
            for p in sorted(s["points"], key=lambda p: p["steps"]):
                series.setdefault(p["method"], []).append((p[x], y(p)))
            items.append((f"{task}: {title}", series, floor))
    plotting.panels(items, path, xlabel="s / image or NFE", note="dashed: DPS at the reference step count")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="super_resolution,inpainting_box,inpainting_random,gaussian_deblur,"
                                       "motion_deblur,nonlinear_deblur,phase_retrieval")
    ap.add_argument("--methods", default="ps,ddrm,mcg,projection,pigdm,reddiff,diffpir,daps,ps_unit,scoreald,"
                                         "sdedit,admm_tv,er,hio,oss,pnp_admm")
    ap.add_argument("--steps", default="10,25,50,100")
    ap.add_argument("--dps_steps", default="250,500", help="more step counts for DPS alone ('' for none)")
    ap.add_argument("--ref_steps", type=int, default=1000)
    ap.add_argument("--zeta_rule", default="total", choices=("total", "fixed"))
    ap.add_argument("--num_images", type=int, default=16)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", default="")
    ap.add_argument("--plot", default="")
    ap.add_argument("--merge", default="", help="an earlier summary JSON: its points are kept (with their FID) "
                    "except those of --methods, which run anew; the reference is kept unless ps is in --methods")
    args = ap.parse_args()

    import jax
    import numpy as np

    from dps_jax import evaluate, experiment, io
    from dps_jax.cli import load_config

    cfg = load_config("configs/eval/paper_table.py")
    cfg.data.num_images = args.num_images
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compilation_cache))
    prior = experiment.load_prior(evaluate.task_config(cfg, "super_resolution", "ps"))
    images = evaluate.load_images(cfg, prior)
    os.makedirs(os.path.join(args.out, "points"), exist_ok=True)
    done = {}            # per (task, method): (steps, seconds per image) of its largest step count so far
    kept = merged_points(args)
    for task, method, steps in points_of(args):
        if (task, method, steps) in kept and method not in args.methods.split(","):
            continue
        path = store_path(args.out, task, method, steps, ".json")
        if os.path.exists(path):
            point = json.load(open(path))
            if "seconds_per_image" in point:
                done[task, method] = steps, point["seconds_per_image"]
            continue
        why = slower_than_reference(ref_seconds(args, task, kept), done.get((task, method)), steps)
        if why:
            print(f"{task} {method} {steps}: skipped, {why}", file=sys.stderr, flush=True)
            continue
        t0 = time.perf_counter()
        point, picked = run_point(cfg, task, method, steps, args.zeta_rule, prior, images)
        if point is None:
            point = {"task": task, "method": method, "steps": steps, "unsupported": picked}
        else:
            buf = _io.BytesIO()
            np.savez_compressed(buf, samples=picked.astype(np.float16))
            io.atomic_write(store_path(args.out, task, method, steps, ".npz"), buf.getvalue())
        io.atomic_write(path, json.dumps(point).encode())
        if "seconds_per_image" in point:
            done[task, method] = steps, point["seconds_per_image"]
        print(f"{task} {method} {steps}: " + (point.get("unsupported") or
              f"{point['psnr']['mean']:.2f} dB, {point['seconds_per_image']:.2f} s/image") +
              f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    # Every stored point of these tasks, also those an earlier run with other step lists made.
    stored = [json.load(open(f)) for task in args.tasks.split(",")
              for f in sorted(glob.glob(store_path(args.out, task, "*", "*", ".json")))]
    rerun = args.methods.split(",")            # with --merge: the methods run anew; the others are kept
    points = [p for p in stored if "unsupported" not in p
              and not ((p["task"], p["method"], p["steps"]) in kept and p["method"] not in rerun)]
    fids = fid_of(args.out, points, images)
    fresh = {(p["task"], p["method"], p["steps"]) for p in points}
    for key, p in kept.items():
        if key not in fresh and p["method"] not in rerun:
            points.append(p)
            fids[key] = p["fid"]
    summary = summarise(args, points, fids)
    print(markdown(summary, args.ref_steps))
    if args.summary:
        with open(args.summary, "w") as fh:
            record = {"date": time.strftime("%Y-%m-%d"), "args": vars(args), "tasks": summary}
            if args.merge:          # where the kept points came from
                with open(args.merge) as f:
                    old = json.load(f)
                record["merged"] = [{k: v for k, v in old.items() if k != "tasks"}]
            json.dump(record, fh, indent=1)
    if args.plot:
        plot(summary, args.plot)


if __name__ == "__main__":
    main()
