"""How the cost of DPS grows with the number of posterior samples N and with the image size.

    python -m benchmarks.cost_scaling --out benchmarks/cost_scaling.json --plot benchmarks/cost_scaling.png

Two sweeps, each configuration timed in a fresh process (so its peak memory is its own):
  samples  the shipped prior (32 x 32 Fashion-MNIST, `dps_jax/assets`), super-resolution x4, N samples
           drawn at once (vmapped) for N in --samples;
  size     a UNet of the FFHQ 256 layout (128 channels, multipliers 1,1,2,2,4,4, one ResBlock per level,
           attention at 1/16 of the side, learned variance) with N(0, 0.02) weights at sides --sizes,
           N in --size_samples.
Each run is what the main job runs: `solvers.Runner` with `chunk_size` = N, --steps DPS steps in one
compiled `lax.scan` (step 500 of 1000 onwards), timed after a compiling warm-up, best of --repeats.
Reported: seconds per step per sample, the peak resident memory of the process (device memory on a GPU)
and the device memory XLA's analysis gives the largest compiled program (arguments, outputs, temporaries). The main job's automatic chunk size (`runner.auto_chunk_size`) follows these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

STEP_INDEX, FACTOR, SCALE = 500, 4, 1.0


def ffhq_layout(size: int) -> dict:
    """create_model arguments of the FFHQ 256 model's layout at side `size` (attention at 1/16 of it)."""
    from dps_jax.models.unet import PRESETS

    args = dict(PRESETS["ffhq256"], image_size=size, channel_mult="1,1,2,2,4,4")
    args["attention_resolutions"] = str(max(1, size // 16))
    return args


def build(sweep: str, size: int, num_samples: int, steps: int):
    """The Runner of one configuration and its problem: (runner, problem)."""
    import jax

    from dps_jax import diffusion, operators, prior as prior_lib, schedule, solvers
    from dps_jax.models.unet import UNet, create_model_config, normal_params

    if sweep == "samples":
        pr = prior_lib.load()
        size, channels = pr.image_size, pr.channels
    else:
        cfg = create_model_config(**ffhq_layout(size))
        pr = prior_lib.from_unet(UNet(cfg), normal_params(cfg, 0.02, 0), "learned_range")
        channels = 3
    shape = (size, size, channels)
    op = operators.build("super_resolution", shape, scale_factor=FACTOR)
    y = jax.random.normal(jax.random.PRNGKey(1), (size // FACTOR, size // FACTOR, channels))
    problem = solvers.make_problem(op, y, shape)
    coefs = diffusion.step_coefficients(schedule.build_tables("linear", 1000))
    xs = jax.tree_util.tree_map(lambda a: a[STEP_INDEX:STEP_INDEX + steps][::-1], coefs)
    spec = solvers.get("ps")
    runner = solvers.Runner(spec, solvers.make_options(spec, scale=SCALE), pr, shape, solvers.Grid(xs, steps),
                            num_samples=num_samples, chunk_size=num_samples, steps_per_call=steps)
    return runner, problem


def peak_mib():
    """Peak memory so far: the device's on a GPU, else this process's resident set (VmHWM)."""
    import jax

    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats:
        return stats["peak_bytes_in_use"] / 2 ** 20
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024


def measure(sweep: str, size: int, num_samples: int, steps: int, repeats: int) -> dict:
    """Time one configuration in this process: best seconds per step per sample, peak memory."""
    import jax

    runner, problem = build(sweep, size, num_samples, steps)
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    runner(problem, key)                                   # compiles, then runs once
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(problem, key)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"sweep": sweep, "size": size, "num_samples": num_samples, "steps": steps,
            "s_per_step_per_sample": best / steps / num_samples, "s_per_step": best / steps,
            "first_call_s": first, "times_s": times, "peak_mib": peak_mib(),
            "program_mib": runner.memory_bytes(problem)[0] / 2 ** 20, "backend": jax.default_backend()}


def in_child(sweep, size, num_samples, steps, repeats):
    """`measure` in a fresh process (its own peak memory); None where it ran out of memory or failed."""
    cmd = [sys.executable, "-m", "benchmarks.cost_scaling", "--_child", json.dumps([sweep, size, num_samples, steps, repeats])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        print(f"  {sweep} size {size} N {num_samples} failed: {proc.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows):
    """Markdown rows: sweep, side, N, s / step / sample, relative to N = 1 at that side, peak MiB."""
    base = {(r["sweep"], r["size"]): r["s_per_step_per_sample"] for r in rows if r["num_samples"] == 1}
    out = ["| prior | side | N | ms / step / sample | per sample vs N = 1 | peak memory MiB | XLA program MiB |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        name = "shipped (FMNIST 32)" if r["sweep"] == "samples" else "FFHQ layout"
        rel = r["s_per_step_per_sample"] / base[(r["sweep"], r["size"])] if (r["sweep"], r["size"]) in base else None
        out.append(f"| {name} | {r['size']} | {r['num_samples']} | {1e3 * r['s_per_step_per_sample']:.1f} | "
                   f"{'-' if rel is None else format(rel, '.2f')} | {r['peak_mib']:.0f} | "
                   f"{r['program_mib']:.0f} |")
    return "\n".join(out)


def plot(rows, path):
    """Two log-log panels: s / step / sample against N (shipped prior) and against the side (FFHQ layout)."""
    from benchmarks import plot as plotting

    by_n = {"shipped prior": [(r["num_samples"], r["s_per_step_per_sample"]) for r in rows if r["sweep"] == "samples"]}
    by_size = {}
    for r in rows:
        if r["sweep"] == "size":
            by_size.setdefault(f"N = {r['num_samples']}", []).append((r["size"], r["s_per_step_per_sample"]))
    mem = {"shipped prior": [(r["num_samples"], r["peak_mib"]) for r in rows if r["sweep"] == "samples"]}
    plotting.panels([("s / step / sample vs N (32 x 32)", by_n, None),
                     ("s / step / sample vs side (FFHQ layout)", by_size, None),
                     ("peak MiB vs N (32 x 32)", mem, None)], path, xlabel="N or side", note="")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default="1,2,4,8,16,64")
    ap.add_argument("--sizes", default="32,64,128,256")
    ap.add_argument("--size_samples", default="1,4")
    ap.add_argument("--steps", type=int, default=10, help="DPS steps per timed run (at most 4 at side 128, 2 at 256)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    ap.add_argument("--plot", default="")
    ap.add_argument("--_child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return print(json.dumps(measure(*json.loads(args._child))))

    configs = [("samples", 32, n) for n in map(int, args.samples.split(","))]
    configs += [("size", s, n) for s in map(int, args.sizes.split(",")) for n in map(int, args.size_samples.split(","))]
    rows = []
    for sweep, size, n in configs:
        steps = args.steps if size <= 64 else min(args.steps, 4 if size <= 128 else 2)
        row = in_child(sweep, size, n, steps, args.repeats)
        if row:
            rows.append(row)
            print(f"{sweep:8s} side {size:4d} N {n:3d}: {1e3 * row['s_per_step_per_sample']:9.2f} ms/step/sample, "
                  f"peak {row['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d"), "rows": rows}, fh, indent=1)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
