"""Speed of one DPS step, dps_jax against the official PyTorch implementation and deepinv, side by side in one run.

    git -C <mirror> archive HEAD | tar -x -C /tmp/dps_official      # a clone of DPS2022/diffusion-posterior-sampling
    pip install -e '.[bench]'                 # torch, the official code's imports, deepinv
    python -m benchmarks.step_speed --torch_repo /tmp/dps_official --deepinv --model ffhq256 --out benchmarks/step_speed.json

The step is what DPS repeats 1000 times: the UNet forward at x_t, x0_hat (Tweedie), the gradient of
||y - A(x0_hat)|| with respect to x_t through the network, the DDPM update and the guidance update.
Both sides use random weights of the published architecture (no checkpoint needed), super-resolution
x4 as A (the official resizer) and Gaussian noise.

  torch   the official UNetModel, its DDPM sampler (`p_sample`, `q_sample`) and its `ps` conditioning,
          imported from --torch_repo (never copied); N = 4 runs four steps one after another, since its
          batch would couple the samples through one norm.
  jax     dps_jax's jitted step, N = 1 and N = 4 (vmapped).
  deepinv (with --deepinv) the installed package's `deepinv.sampling.DPS` around its ADM `DiffUNet` (the FFHQ
          256 layout, or ImageNet 256's with `large_model`), random weights, its `Downsampling` operator; one
          step is one guided denoiser call of its DDPM solver, N = 4 one batch (its guidance differentiates
          the per-sample norms, so the batch does not couple the samples). Timed at its default precision
          (float64 for the SDE's arithmetic, float32 in the network) and all in float32.
Runs alternate between the implementations after a warm-up; each figure is repeated --repeats times and the minimum
and median are reported. Also: a whole K-step run (one lax.scan, and one step per compiled call with a progress
callback between calls, the main job's most chatty setting), compile time,
peak resident memory (each side measured alone in a fresh process), achieved GFLOP/s (from XLA's cost
analysis) next to the rate of a large float32 matrix product measured in the same run, and the
time of a whole 1000-step reconstruction per image for each implementation, extrapolated from the steps
timed here (a full run of a 256 x 256 model takes hours on a CPU).

With --n1_turns K it runs only the N = 1 steps, K turns in rotating order, and reports dps_jax's time over
each peer's in the same turn (median and quartiles): on a shared machine whose speed drifts by more than
the differences measured, the per-turn ratio is the figure that holds still.
With --isolate as well, each program runs in a fresh process of its own in every turn (the minimum of
--repeats steps after a warm-up), so that no program's threads or caches can weigh on the next one's time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# On a GPU, JAX would otherwise take 75% of device memory at start-up, leaving PyTorch (same process)
# too little and making "peak memory" meaningless; both now allocate as they go.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from dps_jax.models.unet import PRESETS
from tools.reference import importable

# guided-diffusion create_model arguments: the published models' presets (dps_jax's one vocabulary), and
# a tiny one for smoke tests. The official create_model takes them as they are.
MODELS = {
    "ffhq256": PRESETS["ffhq256"],
    "imagenet256": PRESETS["imagenet256"],
    "tiny": dict(image_size=32, num_channels=32, num_res_blocks=1, learn_sigma=True, attention_resolutions="8",
                 channel_mult="1,2", num_heads=4, num_head_channels=16, use_scale_shift_norm=True,
                 resblock_updown=True),
    # the least UNet with every kind of layer, for checks that only need the programs to run (gpu_suite's dry run)
    "micro": dict(image_size=32, num_channels=32, num_res_blocks=1, learn_sigma=True, attention_resolutions="16",
                  channel_mult="1,1", num_heads=1, num_head_channels=-1, use_scale_shift_norm=True,
                  resblock_updown=False),
}
SCALE, SIGMA, FACTOR, STEP_INDEX = 0.3, 0.05, 4, 500


# ---- torch side --------------------------------------------------------------------------------

def torch_step_fn(torch_repo: str, model_name: str, seed: int = 0):
    """A function running one official DPS step on a (1, 3, S, S) tensor, and its inputs."""
    import torch

    importable(torch_repo)
    # The official util/img_utils imports the motion-blur package at module level; the step does not use it.
    sys.modules.setdefault("motionblur", types.ModuleType("motionblur"))
    mb = types.ModuleType("motionblur.motionblur")
    mb.Kernel = None
    sys.modules.setdefault("motionblur.motionblur", mb)
    from guided_diffusion.condition_methods import get_conditioning_method
    from guided_diffusion.gaussian_diffusion import create_sampler
    from guided_diffusion.unet import create_model
    from util.resizer import Resizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    model = create_model(**MODELS[model_name]).eval().to(device)
    with torch.no_grad():                 # random, non-zero weights everywhere (zero_module layers too);
        for p in model.parameters():      # requires_grad stays on, as in the official sampling script
            p.normal_(0, 0.02)
    sampler = create_sampler(sampler="ddpm", steps=1000, noise_schedule="linear", model_mean_type="epsilon",
                             model_var_type="learned_range", dynamic_threshold=False, clip_denoised=True,
                             rescale_timesteps=False, timestep_respacing="1000")
    size = MODELS[model_name]["image_size"]

    class SR:                                # the official SR forward, without its torchvision import
        def __init__(self):
            self.down = Resizer((1, 3, size, size), 1 / FACTOR).to(device)

        def forward(self, data, **kwargs):
            return self.down(data)

    noiser = types.SimpleNamespace(__name__="gaussian")
    cond = get_conditioning_method("ps", SR(), noiser, scale=SCALE)
    y = torch.randn(1, 3, size // FACTOR, size // FACTOR, device=device)
    t = torch.tensor([STEP_INDEX], device=device)

    def step(x):
        x = x.requires_grad_()
        out = sampler.p_sample(x=x, t=t, model=model)
        noisy = sampler.q_sample(y, t=t)
        x_next, dist = cond.conditioning(x_t=out["sample"], measurement=y, noisy_measurement=noisy, x_prev=x,
                                         x_0_hat=out["pred_xstart"])
        if device == "cuda":
            torch.cuda.synchronize()
        return x_next.detach_(), float(dist.detach())

    return step, lambda: torch.randn(1, 3, size, size, device=device)


# ---- deepinv side -------------------------------------------------------------------------------

DEEPINV_DTYPES = {"default": "float64", "float32": "float32"}


def deepinv_model(model_name: str, seed: int = 0):
    """deepinv's ADM `DiffUNet` in the layout of `model_name`, N(0, 0.02) weights as on the other sides,
    and a one-element list counting its calls."""
    import deepinv
    import torch

    if model_name not in ("ffhq256", "imagenet256"):
        raise ValueError(f"deepinv's DiffUNet has the ffhq256 and imagenet256 layouts only, not {model_name!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    net = deepinv.models.DiffUNet(large_model=model_name == "imagenet256", pretrained=None).eval().to(device)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
    calls = [0]
    forward = net.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    net.forward = counted
    return net, calls


def deepinv_step_fn(model_name: str, num_samples: int, dtype: str, model=None):
    """A function running one step of deepinv's DPS on N samples at once: its solver's arithmetic in
    `dtype` ("default" = float64, or "float32"), the network in float32 as deepinv always runs it.
    `model` is a `deepinv_model(...)` pair to share between configurations."""
    import deepinv
    import torch

    net, calls = model or deepinv_model(model_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = MODELS[model_name]["image_size"]
    physics = deepinv.physics.Downsampling(img_size=(3, size, size), factor=FACTOR, filter="bicubic",
                                           device=device, noise_model=deepinv.physics.GaussianNoise(SIGMA))
    torch_dtype = getattr(torch, DEEPINV_DTYPES[dtype])
    sampler = deepinv.sampling.DPS(net, num_steps=1000, weight=SCALE, dtype=torch_dtype, device=device)
    y = torch.randn(num_samples, 3, size // FACTOR, size // FACTOR, device=device)
    # Two time points around the middle of the schedule: the DDPM solver's one step between them is one
    # guided network call (counted below, so a change in deepinv's loop cannot go unnoticed).
    t_mid = STEP_INDEX / 1000
    timesteps = torch.tensor([t_mid, t_mid - 1e-3], dtype=torch_dtype, device=device)

    def step():
        calls[0] = 0
        x = sampler(y, physics, x_init=(num_samples, 3, size, size), timesteps=timesteps, denoise_output=False)
        if device == "cuda":
            torch.cuda.synchronize()
        if calls[0] != 1:
            raise RuntimeError(f"deepinv's step called its network {calls[0]} times, expected 1")
        return x

    return step


# ---- jax side ----------------------------------------------------------------------------------

def jax_step_fn(model_name: str, num_samples: int, seed: int = 0, dtype: str = "float32", donate: bool = False,
                compiler_options: dict | None = None):
    """dps_jax's jitted step on N samples (vmapped) and what the benchmark reads from it: (run, compile
    seconds, FLOPs, the parts of a K-step run, XLA temporaries MiB, MiB the program needs). `dtype` is the
    UNet's compute dtype; `donate` hands x_t's buffer to the step (each run then copies x_t first);
    `compiler_options` are XLA options for this compilation alone (e.g. {"xla_cpu_scheduler_type": ...})."""
    import jax
    import jax.numpy as jnp

    from dps_jax import diffusion, operators, prior, schedule, solvers
    from dps_jax.models.unet import UNet, create_model_config, normal_params

    cfg = create_model_config(**MODELS[model_name])
    model = UNet(cfg, dtype=jnp.dtype(dtype))
    # N(0, 0.02) weights as on the torch side, with no init program, so peak memory counts the step alone.
    params = normal_params(cfg, 0.02, seed)
    size = cfg.image_size
    op = operators.build("super_resolution", (size, size, 3), scale_factor=FACTOR)
    tables = schedule.build_tables("linear", 1000)
    coefs = diffusion.step_coefficients(tables, reverse=False)
    c = jax.tree_util.tree_map(lambda a: a[STEP_INDEX], coefs)
    y = jax.random.normal(jax.random.PRNGKey(1), (size // FACTOR, size // FACTOR, 3))
    problem = solvers.make_problem(op, y, (size, size, 3))
    dps = solvers.get("ps")
    options = solvers.make_options(dps, scale=SCALE)
    pr = prior.from_unet(model, params, "learned_range")

    def one(params, x, key):
        noise = dps.draw(key, x, problem, options)
        x_next, record = dps.update(x, c, noise, problem, pr.replace(params=params), options)
        return x_next, record["distance"]

    f = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)), donate_argnums=(1,) if donate else ())
    x, keys = jax_inputs(num_samples, size)
    t0 = time.time()
    compiled = f.lower(params, x, keys).compile(compiler_options)
    compile_s = time.time() - t0
    flops = cpu_flops(f, params, x, keys) if on_accelerator() else _flops(compiled)
    mem = compiled.memory_analysis()
    temp_mib = mem.temp_size_in_bytes / 2 ** 20
    need_mib = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2 ** 20

    def run():
        out = compiled(params, jnp.copy(x) if donate else x, keys)
        jax.block_until_ready(out)
        return out

    return run, compile_s, flops, (pr, problem, coefs, options), temp_mib, need_mib


def jax_inputs(num_samples: int, size: int):
    """The x_t (N, S, S, 3) every jax step of the benchmark starts from, and its N sampling keys."""
    import jax

    return (jax.random.normal(jax.random.PRNGKey(2), (num_samples, size, size, 3)),
            jax.random.split(jax.random.PRNGKey(3), num_samples))


def _flops(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def cpu_flops(f, *args):
    """FLOPs of jitted `f` compiled for the CPU (shapes only, nothing runs). On a GPU the compiled
    program's convolutions are cuDNN calls that XLA's cost analysis does not count, so the same program's
    CPU compilation gives the count there."""
    import jax

    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    specs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), args)
    return _flops(f.lower(*specs).compile())


def jax_loop_run(parts, num_steps: int, steps_per_call: int):
    """Seconds per step of a K-step reverse run of one sample (compile excluded) by the runner the main
    job uses: K steps in one compiled lax.scan (steps_per_call=K, no progress), or in K / steps_per_call
    calls with a progress callback between them (what the main job does to show its progress bar)."""
    import jax

    from dps_jax import solvers

    pr, problem, coefs, options = parts
    sub = jax.tree_util.tree_map(lambda a: a[STEP_INDEX:STEP_INDEX + num_steps][::-1], coefs)
    size = problem.y.shape[0] * FACTOR
    runner = solvers.Runner(solvers.get("ps"), options, pr, (size, size, 3), solvers.Grid(sub, num_steps),
                            steps_per_call=steps_per_call)
    progress = None if steps_per_call == num_steps else (lambda done, total, scalars: None)
    key = jax.random.PRNGKey(0)
    runner(problem, key, progress)
    return _timed(lambda: runner(problem, key, progress)) / num_steps


def matmul_gflops(n=4096, repeats=3):
    """The machine's float32 matrix-product rate (GFLOP/s), the practical ceiling for convolutions, at
    JAX's default precision (TF32 on a recent GPU, where the product is 8192 square to fill the chip)."""
    import jax
    import jax.numpy as jnp

    if on_accelerator():
        n, repeats = 8192, 10

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = min(_timed(lambda: jax.block_until_ready(f(a))) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def on_accelerator():
    """Whether JAX runs on a GPU (or other accelerator) rather than the CPU."""
    import jax

    return jax.default_backend() != "cpu"


def machine():
    """The processor, its core count and, where JAX runs on an accelerator, the device's name."""
    import jax

    desc = f"{platform.machine()}, {os.cpu_count()} cores"
    return f"{jax.devices()[0].device_kind}, {desc}" if on_accelerator() else desc


def available_mib():
    """Memory the next program can have: the device's free memory, or MemAvailable on CPU."""
    import jax

    stats = jax.devices()[0].memory_stats()
    if on_accelerator() and stats:
        return (stats["bytes_limit"] - stats["bytes_in_use"]) / 2 ** 20
    with open("/proc/meminfo") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("MemAvailable:")) / 1024


def whole_run_seconds(stats, scan_per_step, compile_s, num_steps=1000):
    """Seconds per image of a whole `num_steps` reconstruction, extrapolated from the steps timed here:
    num_steps x the fastest step per sample of each configuration; dps_jax's N = 1 figure uses its K-step
    `lax.scan` (the sampler's real loop) and adds its compile time."""
    whole = {k: num_steps * v["per_sample_min_s"] for k, v in stats.items()}
    whole["jax_n1"] = num_steps * scan_per_step + compile_s
    return whole


def _version(package):
    """The installed version of `package` (without importing it: an --isolate parent never loads torch)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def head_to_head(args):
    """--n1_turns K: only the N = 1 steps (official, dps_jax, deepinv float32 and default with --deepinv),
    K turns after a warm-up (with --isolate, each measurement a fresh process that warms up itself), the
    order rotated each turn so that none always follows the same program.
    Each turn's dps_jax time over each peer's in the same turn is one ratio: the shared machine's drift,
    which moves all alike within a turn (+-15% between minutes here), cancels in it. Reports the median
    ratio and its quartiles."""
    names = ["official", "dps_jax"] + (["deepinv_float32", "deepinv_default"] if args.deepinv else [])
    if args.isolate:
        # Each program in a fresh process, alone: nothing of one (thread pools still spinning, allocator
        # caches, a second framework's memory) can slow the next, at the price of a build per measurement.
        progs = {name: (lambda name=name: _n1_in_child(name, args)) for name in names}
    else:
        progs = {name: (lambda f=f: _timed(f)) for name, f in n1_programs(names, args.torch_repo, args.model).items()}
        for prog in progs.values():
            prog()
    t = {name: [] for name in names}
    result = {"model": args.model, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "torch": _version("torch"), "jax": _version("jax"),
              "turns": args.n1_turns, "isolated": args.isolate,
              "repeats_per_process": args.repeats if args.isolate else None,
              "seconds": t, "dps_jax_time_over": {}}
    for turn in range(args.n1_turns):
        order = names[turn % len(names):] + names[:turn % len(names)]
        for name in order:
            t[name].append(progs[name]())
        print(f"turn {turn + 1}/{args.n1_turns}: " + ", ".join(f"{n} {t[n][-1]:.3f}s" for n in order),
              file=sys.stderr, flush=True)
        if args.out:                  # the turns so far, for a run stopped before its end
            with open(args.out, "w") as fh:
                json.dump(dict(result, turns_done=turn + 1), fh, indent=2)
    result["turns_done"] = args.n1_turns
    how = f", each a fresh process (min of {args.repeats} steps)" if args.isolate else ""
    print(f"\nDPS step, {args.model}, N = 1, {args.n1_turns} turns{how}, {result['machine']}")
    for name in names:
        print(f"{name:<18} min {min(t[name]):7.3f} s  median {statistics.median(t[name]):7.3f} s")
    for name in (n for n in names if n != "dps_jax"):
        ratios = [j / o for j, o in zip(t["dps_jax"], t[name])]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        result["dps_jax_time_over"][name] = {"median": statistics.median(ratios), "quartiles": [q[0], q[2]]}
        print(f"dps_jax time / {name} time, same turn: median {statistics.median(ratios):.3f} "
              f"(quartiles {q[0]:.3f} - {q[2]:.3f})")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


def n1_programs(names, torch_repo, model_name):
    """The N = 1 step of each named program ("official", "dps_jax", "deepinv_float32", "deepinv_default"),
    as argument-less functions."""
    progs = {}
    if "official" in names:
        step, make_x = torch_step_fn(torch_repo, model_name)
        progs["official"] = lambda: step(make_x())
    if "dps_jax" in names:
        progs["dps_jax"] = jax_step_fn(model_name, 1)[0]
    deepinv = [n for n in names if n.startswith("deepinv_")]
    if deepinv:
        net = deepinv_model(model_name)
        progs.update({n: deepinv_step_fn(model_name, 1, n[len("deepinv_"):], net) for n in deepinv})
    return {n: progs[n] for n in names}


def _n1_child(name, torch_repo, model_name, repeats):
    """In a fresh process: build one program's N = 1 step, warm it up, print the minimum of `repeats` steps."""
    prog = n1_programs([name], torch_repo, model_name)[name]
    prog()
    print(json.dumps({"seconds": min(_timed(prog) for _ in range(repeats))}))


def _in_child(flags, env=None):
    """Run this script with `flags` in a fresh process; the JSON object its last line prints."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.step_speed", *flags], capture_output=True, text=True,
                          cwd=REPO, env=env)
    if proc.returncode:
        raise RuntimeError(f"step_speed.py {' '.join(flags)} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _n1_in_child(name, args):
    return _in_child(["--_n1_child", name, "--torch_repo", args.torch_repo, "--model", args.model,
                      "--repeats", str(args.repeats)])["seconds"]


def _peak_memory_child(side, torch_repo, model_name):
    """Run one N = 1 step in this (fresh) process and print its peak memory in MiB: device memory on
    a GPU, else the resident set of the process; and (jax) the compile time."""
    compile_s = None
    if side in ("torch", "deepinv"):
        import torch

        if side == "torch":
            step, make_x = torch_step_fn(torch_repo, model_name)
            step(make_x())
        else:
            deepinv_step_fn(model_name, 1, "default")()
        if torch.cuda.is_available():
            return print(json.dumps({"peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20}))
    else:
        import jax

        run, compile_s, *_ = jax_step_fn(model_name, 1)
        run()
        stats = jax.devices()[0].memory_stats()
        if on_accelerator() and stats:
            return print(json.dumps({"peak_mib": stats["peak_bytes_in_use"] / 2 ** 20, "compile_s": compile_s}))
    # VmHWM belongs to this process image (ru_maxrss would carry the parent's peak across fork + exec).
    with open("/proc/self/status") as fh:
        hwm_kib = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
    print(json.dumps({"peak_mib": hwm_kib / 1024, "compile_s": compile_s}))


def peak_memory(side, torch_repo, model_name, cache_dir=""):
    """Peak memory of one step in a fresh process; `cache_dir` turns on XLA's persistent compilation cache."""
    env = dict(os.environ, **({"JAX_COMPILATION_CACHE_DIR": cache_dir} if cache_dir else {}))
    return _in_child(["--_memory_child", side, "--torch_repo", torch_repo or "", "--model", model_name], env)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch_repo", required=True, help="path of a clone of DPS2022/diffusion-posterior-sampling")
    ap.add_argument("--deepinv", action="store_true", help="also time deepinv's DPS (the installed package)")
    ap.add_argument("--model", default="ffhq256", choices=sorted(MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scan_steps", type=int, default=3)
    ap.add_argument("--n1_turns", type=int, default=0,
                    help="instead of the full benchmark: K turns of the N = 1 steps alone, in rotating order, "
                         "and the median of dps_jax's time over each peer's in the same turn")
    ap.add_argument("--isolate", action="store_true",
                    help="with --n1_turns: each program in a fresh process per turn, timed alone "
                         "(the minimum of --repeats steps after a warm-up)")
    ap.add_argument("--out", default="")
    ap.add_argument("--_memory_child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--_n1_child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child:
        return _peak_memory_child(args._memory_child, args.torch_repo, args.model)
    if args._n1_child:
        return _n1_child(args._n1_child, args.torch_repo, args.model, args.repeats)
    if args.n1_turns < 0:
        ap.error(f"--n1_turns must be 0 (the full benchmark) or a number of turns, got {args.n1_turns}")
    if args.isolate and not args.n1_turns:
        ap.error("--isolate goes with --n1_turns K (the N = 1 steps in turns)")
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.n1_turns:
        return head_to_head(args)

    sides = ("torch", "jax") + (("deepinv",) if args.deepinv else ())
    mem = {side: peak_memory(side, args.torch_repo, args.model)["peak_mib"] for side in sides}
    # The same jax step again, twice, with a persistent compilation cache: the first run fills it, the
    # second loads the compiled step (what a rerun of the main job does by default).
    with tempfile.TemporaryDirectory() as cache:
        peak_memory("jax", "", args.model, cache)
        cached = peak_memory("jax", "", args.model, cache)
    import torch

    step, make_x = torch_step_fn(args.torch_repo, args.model)
    run1, compile1, flops1, parts, temp1, _ = jax_step_fn(args.model, 1)
    run4, compile4, flops4, parts4, temp4, need4 = jax_step_fn(args.model, 4)
    del parts4                                    # only the N = 1 loop runs are built from parts
    # Four vmapped samples hold four sets of activations. Where XLA says they do not fit beside the loaded
    # PyTorch model (ImageNet 256 on 24 GiB), they are timed in this run after the alternating repeats,
    # once that model is freed, rather than let the kernel's OOM killer end the run.
    n4_later = need4 > 0.9 * available_mib()
    if n4_later:
        print(f"jax_n4 after the PyTorch model is freed: needs {need4 / 1024:.1f} GiB, "
              f"{available_mib() / 1024:.1f} GiB available beside it", file=sys.stderr, flush=True)
        del run4
    peers = {}
    if args.deepinv:
        net = deepinv_model(args.model)
        peers = {f"deepinv_{p}_n{n}": deepinv_step_fn(args.model, n, p, net) for n in (1, 4) for p in DEEPINV_DTYPES}
    # Warm-up: first calls allocate and (torch) pick kernels.
    step(make_x()); run1()
    if not n4_later:
        run4()
    for peer in peers.values():
        peer()

    t = {"torch_n1": [], "torch_n4": [], "jax_n1": [], "jax_n4": [], **{k: [] for k in peers}}
    for r in range(args.repeats):
        t["torch_n1"].append(_timed(lambda: step(make_x())))
        t["jax_n1"].append(_timed(run1))
        t["torch_n4"].append(_timed(lambda: [step(make_x()) for _ in range(4)]))
        if not n4_later:
            t["jax_n4"].append(_timed(run4))
        for name, peer in peers.items():
            t[name].append(_timed(peer))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.4f}s" for k, v in t.items() if v),
              file=sys.stderr, flush=True)
    scan_per_step = jax_loop_run(parts, args.scan_steps, args.scan_steps)
    progress_per_step = jax_loop_run(parts, args.scan_steps, 1)
    limit = matmul_gflops()

    n4_note = ""
    if n4_later:
        del step, make_x, run1, parts, peers
        gc.collect()
        run4, *_ = jax_step_fn(args.model, 4)
        if need4 > 0.9 * available_mib():
            n4_note = f"not measured: N = 4 vmapped needs {need4 / 1024:.1f} GiB, {available_mib() / 1024:.1f} available"
            del t["jax_n4"]
        else:
            n4_note = "timed after the alternating repeats, the PyTorch model freed: it did not fit beside it"
            run4()
            for r in range(args.repeats):
                t["jax_n4"].append(_timed(run4))
                print(f"jax_n4 {r + 1}/{args.repeats}: {t['jax_n4'][-1]:.4f}s", file=sys.stderr, flush=True)
    n4_skipped = "jax_n4" not in t

    stats = {k: {"min_s": min(v), "median_s": statistics.median(v), "per_sample_min_s": min(v) / (4 if "n4" in k else 1)}
             for k, v in t.items()}
    whole = whole_run_seconds(stats, scan_per_step, compile1)
    result = {
        "model": args.model, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        # Precision of float32 convolutions and matrix products as each framework leaves it by default:
        # on a GPU both run convolutions in TF32; torch keeps matrix products (attention) in full float32.
        "precision": {"torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                      "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                      "jax_default_matmul_precision": str(__import__("jax").config.jax_default_matmul_precision)},
        "torch": torch.__version__, "jax": __import__("jax").__version__, "repeats": args.repeats,
        "steps": stats, "jax_scan_seconds_per_step": scan_per_step, "jax_one_step_per_call_with_progress_seconds_per_step": progress_per_step,
        "compile_seconds": {"n1": compile1, "n4": compile4, "n1_from_persistent_cache": cached["compile_s"]},
        "xla_temp_mib": {"n1": temp1, "n4": temp4}, "jax_peak_mib_from_persistent_cache": cached["peak_mib"],
        "device": __import__("jax").devices()[0].device_kind,
        "gflop_per_step_n1": flops1 / 1e9,
        "jax_gflops_n1": flops1 / 1e9 / stats["jax_n1"]["min_s"],
        "jax_gflops_n4": None if n4_skipped else flops4 / 1e9 / stats["jax_n4"]["min_s"], "jax_n4_note": n4_note,
        "matmul_gflops_limit": limit, "peak_mib": mem, "whole_run_1000_steps_s_per_image": whole,
        "speedup_n1": stats["torch_n1"]["min_s"] / stats["jax_n1"]["min_s"],
        "speedup_n4_per_sample": None if n4_skipped else stats["torch_n4"]["min_s"] / stats["jax_n4"]["min_s"],
    }
    if peers:
        for p in DEEPINV_DTYPES:
            result[f"speedup_vs_deepinv_{p}_n1"] = stats[f"deepinv_{p}_n1"]["min_s"] / stats["jax_n1"]["min_s"]
            result[f"speedup_vs_deepinv_{p}_n4_per_sample"] = (
                None if n4_skipped else stats[f"deepinv_{p}_n4"]["min_s"] / stats["jax_n4"]["min_s"])
    print(f"\nDPS step, {args.model}, {result['machine']}, torch {result['torch']}, jax {result['jax']}")
    print(f"{'':<22}{'min s':>9}{'median s':>10}{'s / sample':>12}")
    for k, v in stats.items():
        print(f"{k:<22}{v['min_s']:9.4f}{v['median_s']:10.4f}{v['per_sample_min_s']:12.4f}")
    for k, v in result.items():
        if k.startswith("speedup_vs_deepinv") and v is not None:
            print(f"{k} {v:.2f}x")
    print("whole 1000-step reconstruction, s per image (extrapolated): "
          + ", ".join(f"{k} {v:.0f}" for k, v in whole.items()))
    print(f"speed-up N=1 {result['speedup_n1']:.2f}x, N=4 per sample "
          + ("-" if n4_skipped else f"{result['speedup_n4_per_sample']:.2f}x") + (f" ({n4_note})" if n4_note else ""))
    print(f"K-step run: one lax.scan {scan_per_step:.4f} s/step, one step per call with progress "
          f"{progress_per_step:.4f} s/step; "
          f"compile {compile1:.1f}s (N=1), {compile4:.1f}s (N=4)")
    print(f"XLA cost: {result['gflop_per_step_n1']:.0f} GFLOP/step; achieved {result['jax_gflops_n1']:.1f} GFLOP/s "
          f"(N=1), {'-' if n4_skipped else format(result['jax_gflops_n4'], '.1f')} (N=4); float32 matmul limit {limit:.1f} GFLOP/s")
    print(f"peak memory (RSS on CPU, device memory on GPU): torch {mem['torch']:.0f} MiB, jax {mem['jax']:.0f} MiB "
          f"(XLA temporaries {temp1:.0f} MiB); jax with a warm compilation cache {cached['peak_mib']:.0f} MiB, "
          f"compile {cached['compile_s']:.1f}s")
    if on_accelerator():
        print("  (on a GPU, jax's first-run peak includes the scratch of XLA's compile-time autotuning of "
              "convolutions; the warm-cache figure is the step's own)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
