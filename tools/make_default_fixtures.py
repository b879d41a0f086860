"""The per-task settings the references' own configs pass, read from their clones into one JSON file.

    pip install pyyaml
    python -m tools.make_default_fixtures --official DPS_PATH --daps DAPS_PATH --reddiff REDDIFF_PATH \\
        --diffpir DIFFPIR_PATH --out tests/fixtures

- `dps`: the official DPS code's `configs/<task>_config.yaml`: the step size `conditioning.params.scale` and
  the noise sigma, per dps_jax task (both inpainting tasks read `inpainting_config.yaml`).
- `daps`: DAPS's `configs/task/<task>.yaml`, group `pixel` (the pixel-space model its FFHQ commands run):
  `mcmc_sampler_config` (Langevin `num_steps`, `lr`, `tau`, `lr_min_ratio`) and the operator's sigma, and
  `configs/sampler/edm_daps.yaml` (the annealing and ODE grids).
- `reddiff`: NVlabs/RED-diff's `_configs/algo/pgdm.yaml` and `reddiff.yaml`.
- `diffpir`: yuanzhi-zhu/DiffPIR's three scripts (`main_ddpir_deblur.py`, `_sisr.py`, `_inpainting.py`) have
  no config file: their header values (`iter_num`, `lambda_`, `zeta`, `skip_type`, `noise_level_img`) and the
  lambda and zeta lists their experiment loops run (`lambdas = [lambda_*i for i in range(..)]`, `for zeta_i
  in [...]`), read from each script's syntax tree and evaluated as arithmetic on those header values.

tests/test_configs.py compares the paper presets of dps_jax's task configs with them; a departure is listed
there with its reason. Only YAML and those constant expressions are read: nothing of the references runs.
"""

from __future__ import annotations

import argparse
import json
import os

# dps_jax task -> (the official DPS config, DAPS's task config)
TASKS = {"super_resolution": ("super_resolution", "down_sampling"), "inpainting_box": ("inpainting", "inpainting"),
         "inpainting_random": ("inpainting", "inpainting_rand"), "gaussian_deblur": ("gaussian_deblur", "gaussian_blur"),
         "motion_deblur": ("motion_deblur", "motion_blur"), "nonlinear_deblur": ("nonlinear_deblur", "nonlinear_blur"),
         "phase_retrieval": ("phase_retrieval", "phase_retrieval")}


def load(path):
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    # the official configs write mask ranges as !!python/tuple: read as lists, nothing constructed
    Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


HEADER = ("iter_num", "lambda_", "zeta", "skip_type", "noise_level_img")


def diffpir_settings(script: str) -> dict:
    """A DiffPIR script's header values and the lambda / zeta lists its experiment loops run."""
    import ast

    tree = ast.parse(open(script).read(), script)
    # the names as globals: a list comprehension's scope sees globals, not an eval's locals
    arithmetic = lambda node, scope: eval(compile(ast.Expression(node), script, "eval"),
                                          {"__builtins__": {}, "range": range, **scope})
    header = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in HEADER and node.targets[0].id not in header):
            header[node.targets[0].id] = arithmetic(node.value, {})
    lambdas = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and len(n.targets) == 1
               and isinstance(n.targets[0], ast.Name) and n.targets[0].id == "lambdas"]
    zetas = [n.iter for n in ast.walk(tree) if isinstance(n, ast.For) and isinstance(n.target, ast.Name)
             and n.target.id == "zeta_i"]
    if len(lambdas) != 1 or len(zetas) != 1:
        raise SystemExit(f"{script}: expected one `lambdas = ...` and one `for zeta_i in ...`, found "
                         f"{len(lambdas)} and {len(zetas)}")
    return {**header, "lambdas": arithmetic(lambdas[0], header), "zetas": arithmetic(zetas[0], header)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("official", "daps", "reddiff", "diffpir"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = {"dps": {}, "daps": {}, "reddiff": {}}
    for task, (dps_name, daps_name) in TASKS.items():
        c = load(os.path.join(args.official, "configs", f"{dps_name}_config.yaml"))
        out["dps"][task] = {"method": c["conditioning"]["method"], "scale": c["conditioning"]["params"]["scale"],
                            "sigma": c["measurement"]["noise"]["sigma"]}
        d = load(os.path.join(args.daps, "configs", "task", f"{daps_name}.yaml"))["pixel"]
        # YAML 1.1 reads 1e-4 (no dot) as text: numbers as numbers
        mcmc = {k: float(v) if isinstance(v, str) and k in ("lr", "tau", "lr_min_ratio") else v
                for k, v in d["mcmc_sampler_config"].items()}
        out["daps"][task] = {**mcmc, "sigma": d["operator"]["sigma"]}
    s = load(os.path.join(args.daps, "configs", "sampler", "edm_daps.yaml"))
    out["daps_sampler"] = {"annealing": s["annealing_scheduler_config"], "diffusion": s["diffusion_scheduler_config"]}
    for algo in ("pgdm", "reddiff"):
        out["reddiff"][algo] = load(os.path.join(args.reddiff, "_configs", "algo", f"{algo}.yaml"))
    out["diffpir"] = {name: diffpir_settings(os.path.join(args.diffpir, f"main_ddpir_{name}.py"))
                      for name in ("deblur", "sisr", "inpainting")}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "reference_defaults.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
