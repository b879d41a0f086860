"""The GPU figures in one prepared run: one JSON and a markdown summary, each part within a printed budget.

    pip install -e '.[cuda,bench]'            # on the GPU machine: jax with CUDA, torch, deepinv
    python -m benchmarks.gpu_suite --torch_repo /tmp/dps_official --out benchmarks/gpu_suite.json \
        --md benchmarks/gpu_suite.md
    python -m benchmarks.gpu_suite --dry_run --out /tmp/gpu_suite.json    # a CPU check at 32 px, seconds

Three parts, run in this order, each with a budget in seconds (--budget step,solvers,scaling; 8 minutes in
all by default). A part prints its budget when it starts and its time when it ends; once its budget is
spent it skips its remaining configurations and records them as skipped, so the run always finishes and
always writes its files.

  step     One DPS step (the FFHQ 256 UNet layout, N(0, 0.02) weights, super-resolution x4, step 500 of 1000),
           per sample, for N = 1, 4, 8, 16 (--samples): dps_jax in float32 and in bfloat16 (vmapped over N),
           the official PyTorch code (--torch_repo; N steps one after another, as its batch would couple the
           samples) and deepinv's DPS (its solver arithmetic in float32; one batch of N). The minimum of
           --repeats steps after a warm-up; the compile time apart; peak device memory of the configuration
           (PyTorch: torch.cuda.max_memory_allocated; dps_jax: XLA's memory analysis of the step's program,
           arguments + outputs + temporaries) and, for dps_jax, the achieved TFLOP/s (XLA's cost analysis).
           torch's TF32 settings are recorded as they were (its defaults).
  solvers  Seconds per image of every solver of the comparison table at its paper / reference step count
           on one task each (SOLVER_TASKS): its real step grid, of which the first --solver_steps steps run
           (the same program as the whole run, one sample); seconds per step times the grid's length,
           compile time apart. Options: the task config's settings for the ffhq256 preset.
  scaling  Cost against N for the FFHQ 256 layout: dps_jax's runner (the main job's), --scaling_steps DPS
           steps in one compiled lax.scan, N samples vmapped: seconds per step per sample, and XLA's memory
           analysis of the program (the GPU curve of `benchmarks.cost_scaling`).

--dry_run: the CPU, a 32 x 32 UNet of one resolution step (step_speed's `micro`), the fmnist32 preset's
operators, N = 1, a few solvers and steps: it checks that the suite runs and writes what it should, not speed.

The JSON: {"machine": {...device, driver, versions...}, "args": {...}, "parts": {"step": {"rows": [...],
"seconds", "budget", "skipped"}, "solvers": {...}, "scaling": {...}}}; a row of "step" is {"implementation",
"dtype", "N", "ms_per_sample", "compile_s", "peak_mib", "tflops"}, of "solvers" {"solver", "task", "steps",
"nfe", "seconds_per_image", "seconds_per_step", "compile_s"}, of "scaling" {"num_samples", "steps",
"s_per_step_per_sample", "compile_s", "peak_mib"}. The markdown has one table per part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from benchmarks import step_speed

# Each solver of the comparison table on one task it supports, at its paper / reference step count (None:
# the task config's ffhq256 value, e.g. DAPS's `1k` preset of 200 levels).
SOLVER_TASKS = [
    ("ps", "super_resolution", 1000), ("ddrm", "super_resolution", 20), ("mcg", "inpainting_box", 1000),
    ("projection", "inpainting_box", 1000), ("pigdm", "super_resolution", 100),
    ("reddiff", "super_resolution", 1000), ("diffpir", "gaussian_deblur", 100), ("daps", "phase_retrieval", None),
    ("ps_unit", "motion_deblur", 1000), ("scoreald", "motion_deblur", 1000), ("sdedit", "super_resolution", 1000),
    ("admm_tv", "gaussian_deblur", None), ("pnp_admm", "gaussian_deblur", None), ("hio", "phase_retrieval", None),
    # the newer samplers at their references' counts (MCGdiff: 64 particles x 100 times; SITCOM 20 levels; PnP-DM
    # 100 iterations). SITCOM's Adam loop may stop early and PnP-DM's first iterations (rho near 10) walk the
    # most EDM levels, so their first steps scaled by the step count bound their time from above.
    ("tmpd", "super_resolution", 1000), ("mcgdiff", "super_resolution", None), ("sitcom", "super_resolution", None),
    ("pnpdm", "gaussian_deblur", None),
]
DRY_SOLVERS = "ps,ddrm,daps,hio"
PARTS = ("step", "solvers", "scaling")


class Budget:
    """Seconds a part may spend; `left()` is False once they are spent."""

    def __init__(self, name: str, seconds: float):
        self.name, self.seconds, self.start = name, float(seconds), time.perf_counter()
        print(f"== {name}: budget {self.seconds:.0f} s", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> bool:
        return self.elapsed() < self.seconds

    def close(self) -> float:
        print(f"== {self.name}: {self.elapsed():.0f} s of {self.seconds:.0f}", flush=True)
        return self.elapsed()


def machine_info() -> dict:
    """The device, its driver and the libraries' versions."""
    import jax

    info = {"platform": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()],
            "host": step_speed.machine(), "python": platform.python_version(),
            **{p: step_speed._version(p) for p in ("jax", "jaxlib", "flax", "torch", "deepinv")}}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0:
            info["nvidia_smi"] = out.stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _min_ms(fn, repeats: int) -> float:
    fn()                                          # warm-up (compiles on the torch side's first call)
    return min(step_speed._timed(fn) for _ in range(repeats)) * 1e3


# ---- part 1: the step -------------------------------------------------------------------------------

def step_rows(args, budget: Budget) -> tuple:
    rows, skipped = [], []
    for n in args.samples:
        for dtype in ("float32", "bfloat16"):
            if not budget.left():
                skipped.append(f"dps_jax {dtype} N={n}")
                continue
            run, compile_s, flops, _, _, need_mib = step_speed.jax_step_fn(args.model, n, dtype=dtype)
            ms = _min_ms(run, args.repeats) / n
            rows.append({"implementation": "dps_jax", "dtype": dtype, "N": n, "ms_per_sample": ms,
                         "compile_s": compile_s, "peak_mib": need_mib,
                         "tflops": flops / n / (ms * 1e-3) / 1e12 if flops else None})
            print(f"dps_jax {dtype} N={n}: {ms:.2f} ms / sample", flush=True)
    for name, make in (("official", lambda n: _official(args)), ("deepinv", lambda n: _deepinv(args, n))):
        for n in args.samples:
            if not budget.left():
                skipped.append(f"{name} N={n}")
                continue
            try:
                row = make(n)
            except Exception as e:              # torch, the clone or deepinv missing: say so, go on
                skipped.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
                break
            rows.append({**row, "N": n})
            print(f"{name} N={n}: {row['ms_per_sample']:.2f} ms / sample", flush=True)
    return rows, skipped


def _torch_memory(reset: bool = False):
    import torch

    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return torch.cuda.max_memory_allocated() / 2 ** 20


def _official(args) -> dict:
    """The official step; N samples are N steps in a row, so the per-sample time is the one step's."""
    import torch

    if not args.torch_repo:
        raise FileNotFoundError("no --torch_repo (a clone of DPS2022/diffusion-posterior-sampling)")
    _torch_memory(reset=True)
    step, new_x = step_speed.torch_step_fn(args.torch_repo, args.model)
    x = new_x()
    ms = _min_ms(lambda: step(x.clone()), args.repeats)
    return {"implementation": "official", "dtype": "float32", "ms_per_sample": ms, "compile_s": None,
            "peak_mib": _torch_memory(), "tflops": None, "tf32": _tf32(torch)}


def _deepinv(args, n: int) -> dict:
    import torch

    _torch_memory(reset=True)
    step = step_speed.deepinv_step_fn(args.model, n, "float32")
    ms = _min_ms(step, args.repeats) / n
    return {"implementation": "deepinv", "dtype": "float32", "ms_per_sample": ms, "compile_s": None,
            "peak_mib": _torch_memory(), "tflops": None, "tf32": _tf32(torch)}


def _tf32(torch) -> dict:
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


# ---- part 2: every solver ------------------------------------------------------------------------

def solver_rows(args, budget: Budget) -> tuple:
    import jax
    import numpy as np

    from dps_jax import config_base, experiment, prior as prior_lib, solvers
    from dps_jax.models.unet import UNet, create_model_config, normal_params

    cfg_model = create_model_config(**step_speed.MODELS[args.model])
    size = cfg_model.image_size
    pr = prior_lib.from_unet(UNet(cfg_model), normal_params(cfg_model, 0.02, 0), "learned_range")
    preset = "fmnist32" if args.dry_run else "ffhq256"
    wanted = set(args.solvers.split(",")) if args.solvers else None
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(5), (size, size, 3), minval=-1, maxval=1))
    rows, skipped = [], []
    for name, task, steps in SOLVER_TASKS:
        if wanted is not None and name not in wanted:
            continue
        if not budget.left():
            skipped.append(f"{name} on {task}")
            continue
        cfg = config_base.task_config(task, preset, pick=False)
        cfg.solver.name, cfg.num_samples, cfg.data.image_size = name, 1, size
        if steps is not None:
            cfg.solver[solvers.config_key(name)].steps = steps
        full = experiment.build_runner(cfg, pr, (size, size, 3))
        k = min(args.solver_steps, full.num_steps)
        part = jax.tree_util.tree_map(lambda a: a[:k], full.xs)
        runner = solvers.Runner(full.solver, full.options, full.model, full.image_shape,
                                solvers.Grid(part, full.evaluations), num_samples=1, steps_per_call=k)
        problem, key = experiment.measure(cfg, x, 0, (size, size, 3))
        compile_s = runner.compile(problem)
        per_step = min(step_speed._timed(lambda: runner(problem, key)) for _ in range(args.repeats)) / k
        rows.append({"solver": name, "task": task, "steps": full.num_steps, "nfe": full.evaluations,
                     "seconds_per_step": per_step, "seconds_per_image": per_step * full.num_steps,
                     "compile_s": compile_s})
        print(f"{name} on {task}: {full.num_steps} steps, {per_step * full.num_steps:.2f} s / image", flush=True)
    return rows, skipped


# ---- part 3: cost against N ----------------------------------------------------------------------

def scaling_rows(args, budget: Budget) -> tuple:
    """Per N: dps_jax's runner (the main job's) on the suite's model, K DPS steps in one compiled lax.scan
    from step 500 on, N samples vmapped; seconds per step per sample (best of --repeats) and XLA's memory
    analysis of the program."""
    import jax

    from dps_jax import diffusion, operators, prior as prior_lib, schedule, solvers
    from dps_jax.models.unet import UNet, create_model_config, normal_params

    cfg = create_model_config(**step_speed.MODELS[args.model])
    size, k = cfg.image_size, args.scaling_steps
    pr = prior_lib.from_unet(UNet(cfg), normal_params(cfg, 0.02, 0), "learned_range")
    op = operators.build("super_resolution", (size, size, 3), scale_factor=step_speed.FACTOR)
    y = jax.random.normal(jax.random.PRNGKey(1), (size // step_speed.FACTOR, size // step_speed.FACTOR, 3))
    problem = solvers.make_problem(op, y, (size, size, 3))
    coefs = diffusion.step_coefficients(schedule.build_tables("linear", 1000))
    xs = jax.tree_util.tree_map(lambda a: a[step_speed.STEP_INDEX:step_speed.STEP_INDEX + k], coefs)
    spec = solvers.get("ps")
    options = solvers.make_options(spec, scale=step_speed.SCALE)
    rows, skipped = [], []
    for n in args.scaling_samples:
        if not budget.left():
            skipped.append(f"N={n}")
            continue
        runner = solvers.Runner(spec, options, pr, (size, size, 3), solvers.Grid(xs, k), num_samples=n,
                                chunk_size=n, steps_per_call=k)
        compile_s = runner.compile(problem)
        key = jax.random.PRNGKey(0)
        best = min(step_speed._timed(lambda: runner(problem, key)) for _ in range(args.repeats))
        rows.append({"num_samples": n, "steps": k, "s_per_step_per_sample": best / k / n, "compile_s": compile_s,
                     "peak_mib": runner.memory_bytes(problem)[0] / 2 ** 20})
        print(f"scaling N={n}: {best / k / n * 1e3:.2f} ms / step / sample", flush=True)
    return rows, skipped


# ---- output --------------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    m, parts = result["machine"], result["parts"]
    lines = [f"GPU suite, {result['date']}: {', '.join(m['devices'])} ({m['platform']}); "
             f"{'; '.join(m.get('nvidia_smi', [])) or m['host']}; jax {m['jax']}, jaxlib {m['jaxlib']}, "
             f"flax {m['flax']}, torch {m['torch']}, deepinv {m['deepinv']}"
             + (" (dry run: CPU check, not speed)" if result["args"]["dry_run"] else ""), ""]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lines += ["One DPS step, per sample:", "",
              "| implementation | dtype | N | ms / sample | compile s | peak MiB | TFLOP/s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in parts["step"]["rows"]:
        lines.append(f"| {r['implementation']} | {r['dtype']} | {r['N']} | {r['ms_per_sample']:.2f} | "
                     f"{fmt(r['compile_s'], '.1f')} | {fmt(r['peak_mib'], '.0f')} | {fmt(r['tflops'], '.1f')} |")
    lines += ["", "Every solver at its reference step count (one task each):", "",
              "| solver | task | steps | NFE | s / image | compile s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in parts["solvers"]["rows"]:
        lines.append(f"| `{r['solver']}` | {r['task']} | {r['steps']} | {r['nfe']} | {r['seconds_per_image']:.2f} | "
                     f"{r['compile_s']:.1f} |")
    lines += ["", "Cost against N (dps_jax's runner, one lax.scan):", "",
              "| N | ms / step / sample | peak MiB |", "| --- | --- | --- |"]
    for r in parts["scaling"]["rows"]:
        lines.append(f"| {r['num_samples']} | {r['s_per_step_per_sample'] * 1e3:.2f} | {r['peak_mib']:.0f} |")
    for name in PARTS:
        p = parts[name]
        lines.append(f"\n{name}: {p['seconds']:.0f} s of a {p['budget']:.0f} s budget"
                     + (f"; skipped: {'; '.join(p['skipped'])}" if p["skipped"] else ""))
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torch_repo", default="", help="a clone of DPS2022/diffusion-posterior-sampling")
    ap.add_argument("--out", default="benchmarks/gpu_suite.json")
    ap.add_argument("--md", default="", help="the markdown summary (default: --out with .md)")
    ap.add_argument("--budget", default="180,180,120", help="seconds for step, solvers, scaling")
    ap.add_argument("--samples", default="1,4,8,16")
    ap.add_argument("--scaling_samples", default="1,2,4,8,16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--solver_steps", type=int, default=10)
    ap.add_argument("--scaling_steps", type=int, default=10)
    ap.add_argument("--solvers", default="", help="a subset of SOLVER_TASKS' solvers (default: all)")
    ap.add_argument("--dry_run", action="store_true")
    args = ap.parse_args(argv)
    args.model = "micro" if args.dry_run else "ffhq256"
    if args.dry_run:
        args.samples, args.scaling_samples = "1", "2"
        args.repeats, args.solver_steps, args.scaling_steps = 1, 2, 2
        args.solvers = args.solvers or DRY_SOLVERS
    args.samples = [int(n) for n in args.samples.split(",")]
    args.scaling_samples = [int(n) for n in args.scaling_samples.split(",")]
    budgets = [float(b) for b in args.budget.split(",")]
    if len(budgets) != len(PARTS) or min(budgets) < 0:
        ap.error(f"--budget takes {len(PARTS)} numbers >= 0 (step, solvers, scaling), got {args.budget!r}")
    args.budgets = dict(zip(PARTS, budgets))
    unknown = set(args.solvers.split(",")) - {s for s, _, _ in SOLVER_TASKS} if args.solvers else set()
    if unknown:
        ap.error(f"unknown solvers {sorted(unknown)}; expected some of {[s for s, _, _ in SOLVER_TASKS]}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")    # torch and jax share the device
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
              "args": {k: v for k, v in vars(args).items() if k != "budgets"}, "parts": {}}
    for name, fn in (("step", step_rows), ("solvers", solver_rows), ("scaling", scaling_rows)):
        budget = Budget(name, args.budgets[name])
        rows, skipped = fn(args, budget)
        result["parts"][name] = {"rows": rows, "skipped": skipped, "budget": budget.seconds,
                                 "seconds": budget.close()}
    from dps_jax import io

    io.atomic_write(args.out, json.dumps(result, indent=1).encode())
    md = args.md or os.path.splitext(args.out)[0] + ".md"
    io.atomic_write(md, markdown(result).encode())
    print(markdown(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
