"""The step grids of the references for every step count T = 1 .. 1000, from their own functions.

    pip install torch==2.13.0 numpy omegaconf
    python -m tools.make_grid_fixtures --official DPS_PATH --reddiff REDDIFF_PATH --out tests/fixtures

- `dps_space_timesteps`: the official DPS code's `guided_diffusion.gaussian_diffusion.space_timesteps(1000,
  str(T))`, the respacing its configs name (`timestep_respacing`); dps_jax's DPS, MCG, Score-SDE and the
  other solvers that walk the table take `steps` as that respacing.
- `reddiff_get_timesteps`: NVlabs/RED-diff's `utils.functions.get_timesteps(cfg)` with its
  `_configs/exp/default.yaml` and `exp.num_steps = T`, the steps of its PiGDM and RED-diff; DDRM's runner
  (`runners/diffusion.py`, `skip = num_timesteps // timesteps; seq = range(0, num_timesteps, skip)`) writes
  the same expression inline, with no function to call.

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
                                     ("reddiff", "a clone of NVlabs/RED-diff")], network=False).parse_args()
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
    arrays = {}
    for name, grids in (("dps_space_timesteps", dps), ("reddiff_get_timesteps", reddiff)):
        arrays[name], arrays[f"{name}_offsets"] = flat(grids)
    np.savez_compressed(os.path.join(args.out, "reference_grids.npz"), **arrays)
    print(f"wrote {os.path.join(args.out, 'reference_grids.npz')}")


if __name__ == "__main__":
    main()
