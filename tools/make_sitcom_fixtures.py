"""SITCOM fixtures from the authors' script (sjames40/SITCOM, `SITCOM_with_noise.py`).

    pip install torch==2.13.0 numpy diffusers     # diffusers: the base classes of its `ddim_sampler.DDIMScheduler`
    python -m tools.make_sitcom_fixtures --sitcom SITCOM_PATH --out tests/fixtures

The script is not importable (it parses arguments and loads data at module level), so its own code is run
from its source: its `optimize_input` function and its per-image step loop (`for step_idx, t in
enumerate(scheduler.timesteps)`) are taken from the file's syntax tree and executed unchanged, with the
globals they read set here: its own `DDIMScheduler` (`ddim_sampler.py`), a random network
eps(x, t) = tanh(W x + b t / 1000) on 4 x 4 x 3 images (x flattened height, width, channel), an operator,
y and the arguments. Recorded: x_T, every step's x_t, the x0 its Adam fit returns (before the inpainting
branch), the Gaussian draw it re-noises with, and the last x_{t'}. Cases: `sr` (2 x 2 average pooling, sigma 0.05, 5 steps of 4 Adam iterations: no early stop) and
`inpainting` (a box mask, sigma 0.3, its inpainting branch with scale 0.5: the loss falls under the
noise threshold and the Adam loop stops early).
"""

from __future__ import annotations

import argparse
import ast
import os
import types

import numpy as np

from tools.reference import importable

SHAPE = (4, 4, 3)


def reference_code(path: str):
    """The source of `optimize_input`, `compute_psnr` and the step loop, compiled from the script's tree."""
    with open(path) as f:
        tree = ast.parse(f.read())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("optimize_input", "compute_psnr")]
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For) and ast.unparse(n.iter) == "enumerate(scheduler.timesteps)"]
    if len(funcs) != 2 or len(loops) != 1:
        raise SystemExit(f"{path}: expected optimize_input, compute_psnr and one step loop; the script changed")
    functions = compile(ast.Module(body=funcs, type_ignores=[]), path, "exec")
    loop = compile(ast.Module(body=loops, type_ignores=[]), path, "exec")
    return functions, loop


def run_case(torch, scheduler_cls, code, case: str, seed: int) -> dict:
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    h, w, c = SHAPE
    d = h * w * c
    wm = torch.tensor(rng.standard_normal((d, d)) * 0.3 / np.sqrt(d), dtype=torch.float32)
    bv = torch.tensor(rng.standard_normal(d), dtype=torch.float32)

    class Net(torch.nn.Module):
        in_channels = c

        def forward(self, x, t):
            flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            eps = torch.tanh(flat @ wm.T + bv * (t.reshape(-1, 1) / 1000.0))
            return eps.reshape(x.shape[0], h, w, c).permute(0, 3, 1, 2)

    mask = torch.ones(1, c, h, w)
    mask[:, :, 1:3, 1:4] = 0
    if case == "sr":
        sigma, steps, iterations = 0.05, 5, 4
        operator = types.SimpleNamespace(forward=lambda x, mask=None: F.avg_pool2d(x, 2))
    else:
        sigma, steps, iterations = 0.3, 5, 4
        operator = types.SimpleNamespace(forward=lambda x, mask=None: x * mask)
    ref_img = torch.tensor(np.tanh(rng.standard_normal((1, c, h, w))), dtype=torch.float32)
    y = operator.forward(ref_img, mask=mask)
    torch.manual_seed(seed)
    y_n = y + sigma * torch.randn(y.shape)
    scheduler = scheduler_cls()
    scheduler.set_timesteps(num_inference_steps=steps)
    x_T = torch.randn((1, c, h, w))
    draws, x0s, x_in = [], [], []
    plain_randn = torch.randn

    def randn(*a, **kw):
        z = plain_randn(*a, **kw)
        draws.append(z.detach().clone())
        return z

    functions, loop = code
    g = {"torch": torch, "np": np, "model": Net(), "img_h": h, "img_w": w, "operator": operator, "y_n": y_n, "y": y,
         "ref_img": ref_img, "psnrs": [], "best_img": [None], "mask": mask, "scheduler": scheduler,
         "step_size": 1000 // steps, "input": x_T.clone(),
         "args": types.SimpleNamespace(device="cpu", noiselevel=sigma, learning_rate=0.02, num_steps=iterations),
         "measure_config": {"operator": {"name": "super_resolution" if case == "sr" else "inpainting"}},
         "cond_config": {"params": {"scale": 0.5}}}
    exec(functions, g)
    plain_optimize = g["optimize_input"]

    def optimize_input(*a, **kw):
        x_in.append(a[0].clone())                  # x_t entering the step
        out = plain_optimize(*a, **kw)
        x0s.append(out[1].clone())                # the fit's x0 (before the inpainting branch)
        return out
    g["optimize_input"] = optimize_input
    torch.randn = randn
    try:
        exec(loop, g)
    finally:
        torch.randn = plain_randn
    # Per step: optimize_input's throw-away draw, the loop's overwritten re-noising, the used one.
    if len(draws) != 3 * steps:
        raise SystemExit(f"{case}: {len(draws)} draws for {steps} steps; the loop changed")
    nhwc = lambda t: t.permute(0, 2, 3, 1)[0].numpy()
    return {"sigma": np.float32(sigma), "steps": np.int64(steps), "iterations": np.int64(iterations),
            "w": wm.numpy(), "b": bv.numpy(), "mask": nhwc(mask), "y": nhwc(y_n), "x_T": nhwc(x_T),
            "timesteps": scheduler.timesteps.numpy(), "z": np.stack([nhwc(draws[3 * k + 2]) for k in range(steps)]),
            "x_in": np.stack([nhwc(x) for x in x_in]), "x0_fit": np.stack([nhwc(x) for x in x0s]),
            "x_last": nhwc(g["input"]),
            "alphas_cumprod": scheduler.alphas_cumprod.numpy()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sitcom", required=True, help="a clone of sjames40/SITCOM")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    importable(args.sitcom)
    import torch
    from ddim_sampler import DDIMScheduler

    code = reference_code(os.path.join(args.sitcom, "SITCOM_with_noise.py"))
    arrays = {}
    for i, case in enumerate(("sr", "inpainting")):
        for k, v in run_case(torch, DDIMScheduler, code, case, args.seed + i).items():
            arrays[f"{case}_{k}"] = np.asarray(v)
    path = os.path.join(args.out, "sitcom.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
