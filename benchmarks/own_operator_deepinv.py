"""Your own forward model in deepinv and in dps_jax: the same compressed-sensing problem solved by DPS in
both, in one run, with the lines of user code each needs and the seconds for 8 posterior samples.

    pip install -e '.[bench]'          # torch and deepinv beside dps_jax
    python -m benchmarks.own_operator_deepinv --out benchmarks/own_operator_deepinv.json

The problem (the same arrays on both sides): a 64 x 64 RGB image, 30% of its 2-D Fourier coefficients per
channel (a fixed random mask; real and imaginary parts as real numbers), Gaussian noise sigma 0.05. The
prior: deepinv's `DiffUNet` (the FFHQ 256 ADM layout) with N(0, 0.02) weights, as no pretrained weights can be
downloaded here, saved by torch; deepinv reads the file itself, dps_jax after one converter command
(`--drop-unexpected 'sqrt_*'` leaves out the two schedule buffers of deepinv's state dict). The two networks'
outputs on one input are compared first. Each side then runs DPS (the norm guidance of the paper, weight 1)
with the same number of guided steps on 8 samples at once, from its user function below: the whole call is
what a user waits for; the seconds dps_jax spends compiling inside it are reported beside (each call of the
user function compiles again: its operator is a new function each time).

Lines of user code are counted from the source of the two `user_*` functions (their bodies, imports
included, without blank lines, comments and docstrings): exactly the code that is timed.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

SIZE, CHANNELS, KEEP, SIGMA, NUM_SAMPLES = 64, 3, 0.3, 0.05, 8


def user_dps_jax(y, mask, weights, steps):
    """8 DPS samples of the compressed-sensing problem with dps_jax: (mean, std), each (H, W, C)."""
    import jax.numpy as jnp
    from dps_jax import api, operators
    prior = api.load_prior(weights)

    def fourier(x, d):     # x: (H, W, C); the kept Fourier coefficients, real and imaginary parts
        k = jnp.fft.fft2(x, axes=(0, 1), norm="ortho")
        return jnp.concatenate([k.real, k.imag], -1) * d["mask"][..., None]
    op = operators.from_callables(fourier, (64, 64, 3), linear=True, data={"mask": mask})
    out = api.sample(prior, op, y, solver="ps", options={"steps": steps, "scale": 1.0}, num_samples=8)
    return out["samples"].mean(0), out["samples"].std(0)


def user_deepinv(y, mask, weights, steps):
    """8 DPS samples of the compressed-sensing problem with deepinv: (mean, std), each (C, H, W)."""
    import deepinv as dinv
    import torch
    net = dinv.models.DiffUNet(pretrained=weights)
    mask = torch.as_tensor(mask)

    def fourier(x):     # x: (N, C, H, W); the kept Fourier coefficients, real and imaginary parts
        k = torch.fft.fft2(x, norm="ortho")
        return torch.cat([k.real, k.imag], 1) * mask
    physics = dinv.physics.LinearPhysics(A=fourier, noise_model=dinv.physics.GaussianNoise(0.05))
    dps = dinv.sampling.DPS(net, num_steps=steps + 1, weight=1.0)     # steps + 1 time points: steps calls
    samples = dps(torch.as_tensor(y).expand(8, -1, -1, -1), physics, x_init=(8, 3, 64, 64))
    return samples.mean(0), samples.std(0)


def user_lines(fn) -> int:
    """Non-blank, non-comment lines of `fn`'s body, its docstring left out."""
    src = textwrap.dedent(inspect.getsource(fn))
    tree = ast.parse(src).body[0]
    body = tree.body[1:] if ast.get_docstring(tree) else tree.body
    lines = src.splitlines()[body[0].lineno - 1:tree.end_lineno]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def problem(seed: int = 0):
    """The image (H, W, C) in [-1, 1], the mask (H, W) and y (H, W, 2C) as float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    u = np.linspace(-1, 1, SIZE)
    x = np.stack([np.sin(3 * u)[:, None] * np.cos(2 * u)[None, :],
                  np.tanh(4 * u)[:, None] * np.ones(SIZE)[None, :],
                  np.exp(-4 * (u[:, None] ** 2 + u[None, :] ** 2)) * 2 - 1], -1).astype(np.float32)
    mask = (rng.random((SIZE, SIZE)) < KEEP).astype(np.float32)
    k = np.fft.fft2(x, axes=(0, 1), norm="ortho")
    y = np.concatenate([k.real, k.imag], -1) * mask[..., None]
    y = (y + SIGMA * rng.standard_normal(y.shape) * mask[..., None]).astype(np.float32)
    return x, mask, y


def weights(folder: str, seed: int = 0):
    """deepinv's DiffUNet with N(0, 0.02) weights: the file deepinv loads (the ADM keys), the dps_jax file
    converted from its full state dict by the converter's command, and the max |difference| of the two
    networks' outputs on one input (relative to the output's scale)."""
    import deepinv as dinv
    import torch

    torch.manual_seed(seed)
    net = dinv.models.DiffUNet(pretrained=None).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
    full = os.path.join(folder, "diffunet_state.pt")           # what net.state_dict() gives a deepinv user
    adm = os.path.join(folder, "diffunet_adm.pt")              # the layout DiffUNet(pretrained=path) reads
    state = net.state_dict()
    torch.save(state, full)
    torch.save({k: v for k, v in state.items() if not k.startswith("sqrt_")}, adm)
    dst = os.path.join(folder, "diffunet.msgpack")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "checkpoints_convert", full, dst, "--model", "ffhq256",
                    "--drop-unexpected", "sqrt_*"], check=True)
    convert_s = time.perf_counter() - t0

    import jax.numpy as jnp
    from dps_jax import api
    prior = api.load_prior(dst)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((SIZE, SIZE, CHANNELS)).astype(np.float32)
    t = 500
    with torch.no_grad():
        ref = net.forward_diffusion(torch.as_tensor(x).permute(2, 0, 1)[None], torch.tensor([t]))[0]
    ref = ref.permute(1, 2, 0).numpy()
    got = np.asarray(prior.apply(prior.params, jnp.asarray(x), jnp.asarray(t)))
    return adm, dst, convert_s, float(np.abs(got - ref).max() / np.abs(ref).max())


COMPILE_SECONDS = []


def count_compiles():
    """Record the seconds of each dps_jax compilation (Runner.compile, wrapped here only), so that a call's
    time splits into compiling and the rest."""
    from dps_jax.solvers import runner

    plain = runner.Runner.compile

    def compile(self, problem):
        seconds = plain(self, problem)
        COMPILE_SECONDS.append(seconds)
        return seconds
    runner.Runner.compile = compile


def timed(fn, *args):
    """(seconds, of which compiling, mean, std) of one user call."""
    COMPILE_SECONDS.clear()
    t0 = time.perf_counter()
    mean, std = fn(*args)
    return time.perf_counter() - t0, sum(COMPILE_SECONDS), np.asarray(mean), np.asarray(std)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="guided DPS steps on each side")
    ap.add_argument("--turns", type=int, default=1, help="calls of each user function, alternating sides")
    ap.add_argument("--out", default="", help="write the figures here as JSON")
    args = ap.parse_args(argv)

    import deepinv
    import jax
    import torch

    count_compiles()
    x, mask, y = problem()
    with tempfile.TemporaryDirectory() as folder:
        adm, converted, convert_s, net_rel_diff = weights(folder)
        print(f"network outputs, dps_jax against deepinv: max |diff| {net_rel_diff:.2e} of the output's scale; "
              f"conversion {convert_s:.1f} s", flush=True)
        mask6 = np.concatenate([mask[None]] * 2 * CHANNELS)[None]           # (1, 2C, H, W) for torch
        y_chw = np.moveaxis(y, -1, 0)[None]
        runs = {"dps_jax": [], "deepinv": []}
        for turn in range(args.turns):
            for name, fn, a in (("dps_jax", user_dps_jax, (y, mask, converted, args.steps)),
                                ("deepinv", user_deepinv, (y_chw, mask6, adm, args.steps))):
                seconds, compiling, mean, std = timed(fn, *a)
                if name == "deepinv":
                    mean, std = np.moveaxis(mean, 0, -1), np.moveaxis(std, 0, -1)
                finite = bool(np.isfinite(mean).all() and np.isfinite(std).all())
                runs[name].append({"seconds": round(seconds, 2), "compile_seconds": round(compiling, 2),
                                   "finite": finite, "mean_std_of_samples": round(float(std.mean()), 4)})
                print(f"{name:8s} call {turn + 1}: {seconds:7.1f} s for {NUM_SAMPLES} samples x {args.steps} "
                      f"steps, {compiling:.1f} s of it compiling (finite: {finite})", flush=True)
    result = {
        "command": "python -m benchmarks.own_operator_deepinv " + " ".join(argv if argv is not None else sys.argv[1:]),
        "problem": f"{SIZE}x{SIZE}x{CHANNELS} image, {KEEP:.0%} of its 2-D Fourier coefficients, Gaussian sigma {SIGMA}",
        "prior": "deepinv DiffUNet (ADM, FFHQ 256 layout), N(0, 0.02) weights, run at 64 x 64",
        "steps": args.steps, "num_samples": NUM_SAMPLES,
        "network_max_rel_diff": net_rel_diff, "convert_seconds": round(convert_s, 1),
        "user_lines": {"dps_jax": user_lines(user_dps_jax), "deepinv": user_lines(user_deepinv)},
        "runs": runs,
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "deepinv": deepinv.__version__,
                     "python": platform.python_version()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps({k: result[k] for k in ("user_lines", "runs")}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
