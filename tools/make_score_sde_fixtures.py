"""Regenerate tests/fixtures/score_sde_*.pth and score_sde.npz from a clone of yang-song/score_sde_pytorch (torch
and ml_collections besides; seconds).

    python -m tools.make_score_sde_fixtures --score-sde SCORE_SDE_PATH --out tests/fixtures

Three small networks of score_sde's own NCSNpp class, each in the layout of a published config (the config names
and field changes in CASES), 16 x 16 x 3 and 4 base channels:
- ve_skip: NCSN++ as ve/ffhq_256_ncsnpp_continuous builds it (Fourier embedding, input and output pyramids,
  [1, 3, 3, 1] FIR resampling), VE SDE;
- ve_residual: NCSN++ as ve/cifar10_ncsnpp_continuous (residual input pyramid), VE SDE;
- vp_ddpmpp: DDPM++ as vp/cifar10_ddpmpp_continuous (positional embedding, no pyramids, no FIR), VP SDE; read
  also as vp/cifar10_ddpmpp (the discretely trained one: fed the integer timestep).
Each network's parameters are `project_random_state_dict(shapes, seed)`; its EMA is taken (score_sde's
`ExponentialMovingAverage`) and the network then given other random weights (in ve_skip one Adam step fills the
optimizer's state); the file is the dict score_sde's `utils.save_checkpoint` writes (that module imports
tensorflow, so the four entries are assembled here as it does), the network wrapped in DataParallel as its
`create_model` does. The .npz holds, per case and SDE, noisy inputs x at times t, the score score_sde's
`get_score_fn` gives with the EMA weights (as its samplers use them), the noise-free part x_mean of one
`ReverseDiffusionPredictor` step, and the score of the raw weights (for --weights model).

It also reads each published config's get_config() from the clone and records, for every preset of
`checkpoints_convert.score_sde`, the fields that differ from the preset table (the test asserts none), and
the parameter count of the network score_sde's constructor builds from it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import types

import numpy as np

from tools.reference import importable, no_cuda_build, project_random_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ("nf=4", "ch_mult=(1, 2, 2)", "num_res_blocks=1", "attn_resolutions=(4,)", "image_size=16")
CASES = {
    "ve_skip": ("ve/ffhq_256_ncsnpp_continuous", SMALL, 31),
    "ve_residual": ("ve/cifar10_ncsnpp_continuous", SMALL, 32),
    "vp_ddpmpp": ("vp/cifar10_ddpmpp_continuous", SMALL, 33),
}
# the same file read under a second config (the network is the same; the SDE and its score function are not)
ALSO = {"vp_ddpmpp": "vp/cifar10_ddpmpp"}
SECTIONS = {"data": ("image_size", "num_channels", "centered"),
            "training": ("sde", "continuous")}


def _project_module(name):
    """A module of this project, without its package's __init__ (which needs jax)."""
    pkg = types.ModuleType("checkpoints_convert")
    pkg.__path__ = [os.path.join(ROOT, "checkpoints_convert")]
    sys.modules.setdefault("checkpoints_convert", pkg)
    return importlib.import_module(name)


def _config(fields):
    """A score_sde config (ml_collections, as its configs build it) with `fields` (the preset table's names)."""
    import ml_collections
    import torch

    c = ml_collections.ConfigDict()
    for s in ("data", "training", "model"):
        c[s] = ml_collections.ConfigDict()
    for k, v in fields.items():
        section = next((s for s, names in SECTIONS.items() if k in names), "model")
        c[section][k] = list(v) if isinstance(v, tuple) else v
    c.model.dropout = 0.1
    c.model.init_scale = 0.0
    c.model.fourier_scale = 16
    c.model.resamp_with_conv = True
    c.model.ema_rate = 0.999
    c.device = torch.device("cpu")
    return c


def _published(clone, ss):
    """{preset: [fields that differ from the clone's config], parameter count of the network it builds}."""
    from models import ncsnpp  # noqa: F401  (registers the model)
    from models import utils as mutils

    out = {}
    # the configs import their defaults as `configs.default_*`; this project has a `configs` of its own
    saved = sys.modules.get("configs")
    theirs = types.ModuleType("configs")
    theirs.__path__ = [os.path.join(clone, "configs")]
    sys.modules["configs"] = theirs
    for preset in sorted(ss.PRESETS):
        spec = importlib.util.spec_from_file_location("config_" + preset.replace("/", "_"),
                                                      os.path.join(clone, "configs", preset + ".py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cfg = mod.get_config()
        mine = ss.score_sde_config(preset)
        differ = []
        for k, v in mine.items():
            if k.startswith("beta_") and mine["sde"] == "vesde":
                continue            # not read for a VE SDE (the 1024 x 1024 configs leave them out)
            section = next((s for s, names in SECTIONS.items() if k in names), "model")
            theirs = cfg[section].get(k, None)
            theirs = tuple(theirs) if isinstance(theirs, (list, tuple)) else theirs
            if theirs != v and not (isinstance(v, float) and theirs is not None and float(theirs) == v):
                differ.append(f"{section}.{k}: preset {v!r}, config {theirs!r}")
        net = mutils.get_model(cfg.model.name)(cfg)
        out[preset] = {"differ": differ, "params": int(sum(p.numel() for p in net.parameters()))}
    if saved is not None:
        sys.modules["configs"] = saved
    else:
        del sys.modules["configs"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--score-sde", required=True, help="a clone of yang-song/score_sde_pytorch")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    import torch

    no_cuda_build()
    importable(args.score_sde)
    import sde_lib
    import sampling
    from models import ncsnpp  # noqa: F401
    from models import utils as mutils
    from models.ema import ExponentialMovingAverage

    ss = _project_module("checkpoints_convert.score_sde")
    arrays, meta = {}, {"cases": {}, "also": ALSO}
    torch.set_grad_enabled(False)
    for case, (preset, overrides, seed) in CASES.items():
        fields = ss.score_sde_config(preset, overrides)
        config = _config(fields)
        net = ncsnpp.NCSNpp(config)
        state = net.state_dict()
        shapes = {k: tuple(v.shape) for k, v in state.items() if k != "sigmas"}

        def load(s):
            w = project_random_state_dict(shapes, s)
            net.load_state_dict({**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()},
                                 "sigmas": state["sigmas"]})

        load(seed)
        ema = ExponentialMovingAverage(net.parameters(), decay=config.model.ema_rate)
        load(seed + 100)
        model = torch.nn.DataParallel(net)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        if case == "ve_skip":           # one file with the optimizer's moments, as a trained checkpoint has them
            with torch.enable_grad():
                t = torch.full((1,), 0.5)
                model(torch.zeros(1, 3, 16, 16), t + 1).square().mean().backward()
                opt.step()
        saved = {"optimizer": opt.state_dict(), "model": model.state_dict(), "ema": ema.state_dict(), "step": 1}
        torch.save(saved, os.path.join(args.out, f"score_sde_{case}.pth"))

        raw = [p.detach().clone() for p in model.parameters()]
        g = torch.Generator().manual_seed(seed)
        for label, preset_read in [(case, preset)] + ([(case + "_discrete", ALSO[case])] if case in ALSO else []):
            f = ss.score_sde_config(preset_read, overrides)
            if f["sde"] == "vesde":
                sde = sde_lib.VESDE(sigma_min=f["sigma_min"], sigma_max=f["sigma_max"], N=f["num_scales"])
                t = torch.tensor([0.3, 0.75])
            else:
                sde = sde_lib.VPSDE(beta_min=f["beta_min"], beta_max=f["beta_max"], N=f["num_scales"])
                # discrete: times whose timestep t (N - 1) is an integer in float32, as the score function indexes
                t = torch.tensor([0.3, 0.75]) if f["continuous"] else torch.tensor([333, 777]) / 999.0
                if not f["continuous"]:
                    assert torch.equal(t * 999, torch.round(t * 999)), t * 999
            x0 = torch.rand(2, 3, 16, 16, generator=g) * (1.0 if f["sde"] == "vesde" else 2.0) \
                - (0.0 if f["sde"] == "vesde" else 1.0)
            mean, std = sde.marginal_prob(x0, t)
            x = mean + std[:, None, None, None] * torch.randn(x0.shape, generator=g)
            outs = {}
            for weights in ("ema", "model"):
                if weights == "ema":
                    ema.copy_to(model.parameters())
                else:
                    for p, r in zip(model.parameters(), raw):
                        p.copy_(r)
                score_fn = mutils.get_score_fn(sde, model, train=False, continuous=f["continuous"])
                outs[weights] = score_fn(x, t)
                if weights == "ema":
                    predictor = sampling.ReverseDiffusionPredictor(sde, score_fn, probability_flow=False)
                    _, outs["x_mean"] = predictor.update_fn(x, t)
            for p, r in zip(model.parameters(), raw):
                p.copy_(r)
            nchw = lambda a: a.numpy().transpose(0, 2, 3, 1).astype(np.float32)
            arrays.update({f"{label}/x": nchw(x), f"{label}/t": t.numpy().astype(np.float32),
                           f"{label}/score": nchw(outs["ema"]), f"{label}/score_raw": nchw(outs["model"]),
                           f"{label}/x_mean": nchw(outs["x_mean"])})
            meta["cases"][label] = {"file": f"score_sde_{case}.pth", "config": preset_read,
                                    "overrides": list(overrides)}
        print(case, "parameters", sum(p.numel() for p in model.parameters()),
              "score range", float(arrays[f"{case}/score"].min()), float(arrays[f"{case}/score"].max()))
    meta["published"] = _published(args.score_sde, ss)
    for preset, info in meta["published"].items():
        print(f"{preset}: {info['params']:,} parameters; differs: {info['differ'] or 'none'}")
    np.savez_compressed(os.path.join(args.out, "score_sde.npz"), meta=json.dumps(meta), **arrays)


if __name__ == "__main__":
    main()
