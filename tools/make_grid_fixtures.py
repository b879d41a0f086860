"""The step grids of the references for every step count T = 1 .. 1000, from their own functions.

    pip install torch==2.13.0 numpy omegaconf
    python -m tools.make_grid_fixtures --official DPS_PATH --reddiff REDDIFF_PATH --diffpir DIFFPIR_PATH \
        --daps DAPS_PATH --out tests/fixtures

- `dps_space_timesteps`: the official DPS code's `guided_diffusion.gaussian_diffusion.space_timesteps(1000,
  str(T))`, the respacing its configs name (`timestep_respacing`); dps_jax's DPS, MCG, Score-SDE and the
  other solvers that walk the table take `steps` as that respacing.
- `reddiff_get_timesteps`: NVlabs/RED-diff's `utils.functions.get_timesteps(cfg)` with its
  `_configs/exp/default.yaml` and `exp.num_steps = T`, the steps of its PiGDM and RED-diff; DDRM's runner
  (`runners/diffusion.py`, `skip = num_timesteps // timesteps; seq = range(0, num_timesteps, skip)`) writes
  the same expression inline, with no function to call.
- `diffpir_quad_seq`: the `skip_type == "quad"` branch of yuanzhi-zhu/DiffPIR's `main_ddpir_sisr.py` (the
  lines of its sampling loop that build `seq`, taken from the script's syntax tree and executed as they
  are) with `num_train_timesteps = 1000`, `iter_num = T`; dps_jax's "quadT" keeps 999 - seq, and refuses a T
  whose seq repeats a timestep (the script runs the repeats).
- `daps_annealing_sigmas`: zhangbingliang2019/DAPS's `cores.scheduler.EDMScheduler(T, 100, 0.1, "poly-7")
  .sigma_steps` (its annealing grid; `configs/sampler/edm_daps.yaml`), for T = 1 .. 50 and 100, 200, 400,
  1000 (`daps_annealing_steps`): a closed form whose count is what can go wrong.

Each is stored flat (`<name>`, ascending per T) with `<name>_offsets` (T = 1 .. 1000: grid T is
`<name>[offsets[T - 1]:offsets[T]]`). tests/test_schedule.py compares dps_jax's grids with them for every T.
"""

from __future__ import annotations

import os

import numpy as np

from tools import make_fixtures as mf
from tools.reference import importable

T_MAX = 1000


def flat(grids):
    offsets = np.cumsum([0] + [len(g) for g in grids]).astype(np.int64)
    return np.concatenate([np.asarray(sorted(g), np.int64) for g in grids]), offsets


def main():
    args = mf.arguments(__doc__, 0, [("official", "a clone of DPS2022/diffusion-posterior-sampling"),
                                     ("reddiff", "a clone of NVlabs/RED-diff"),
                                     ("diffpir", "a clone of yuanzhi-zhu/DiffPIR"),
                                     ("daps", "a clone of zhangbingliang2019/DAPS")], network=False).parse_args()
    os.makedirs(args.out, exist_ok=True)
    official = mf.import_official(args.official)
    dps = [official.diffusion.space_timesteps(T_MAX, str(t)) for t in range(1, T_MAX + 1)]
    importable(args.reddiff)
    from omegaconf import OmegaConf
    from utils.functions import get_timesteps

    exp = OmegaConf.load(os.path.join(args.reddiff, "_configs", "exp", "default.yaml"))
    reddiff = []
    for t in range(1, T_MAX + 1):
        exp.num_steps = t
        reddiff.append(get_timesteps(OmegaConf.create({"exp": exp})))
    quad = diffpir_quad_branch(os.path.join(args.diffpir, "main_ddpir_sisr.py"))
    diffpir = [quad(t) for t in range(1, T_MAX + 1)]
    arrays = {}
    for name, grids in (("dps_space_timesteps", dps), ("reddiff_get_timesteps", reddiff)):
        arrays[name], arrays[f"{name}_offsets"] = flat(grids)
    # in the script's order (not sorted): a repeat must stay visible
    arrays["diffpir_quad_seq"] = np.concatenate([np.asarray(g, np.int64) for g in diffpir])
    arrays["diffpir_quad_seq_offsets"] = np.cumsum([0] + [len(g) for g in diffpir]).astype(np.int64)
    importable(args.daps)
    from cores.scheduler import EDMScheduler

    steps = list(range(1, 51)) + [100, 200, 400, 1000]
    sigmas = [EDMScheduler(t, sigma_max=100, sigma_min=0.1, timestep="poly-7").sigma_steps.numpy() for t in steps]
    arrays["daps_annealing_steps"] = np.asarray(steps, np.int64)
    arrays["daps_annealing_sigmas"] = np.concatenate(sigmas).astype(np.float32)
    arrays["daps_annealing_sigmas_offsets"] = np.cumsum([0] + [len(g) for g in sigmas]).astype(np.int64)
    np.savez_compressed(os.path.join(args.out, "reference_grids.npz"), **arrays)
    print(f"wrote {os.path.join(args.out, 'reference_grids.npz')}")


def diffpir_quad_branch(script: str):
    """iter_num -> seq: the body of the script's `elif skip_type == "quad":` branch, compiled from its source."""
    import ast

    tree = ast.parse(open(script).read(), script)
    branches = [n for n in ast.walk(tree) if isinstance(n, ast.If) and isinstance(n.test, ast.Compare)
                and isinstance(n.test.left, ast.Name) and n.test.left.id == "skip_type"
                and any(isinstance(c, ast.Constant) and c.value == "quad" for c in n.test.comparators)]
    if len(branches) != 1:
        raise SystemExit(f"{script}: expected one skip_type == 'quad' branch, found {len(branches)}")
    code = compile(ast.Module(body=branches[0].body, type_ignores=[]), script, "exec")

    def seq(iter_num: int):
        scope = {"np": np, "num_train_timesteps": T_MAX, "iter_num": iter_num}
        exec(code, scope)
        return scope["seq"]
    return seq


if __name__ == "__main__":
    main()
