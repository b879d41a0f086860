"""Import a diffusers `UNet2DModel` (google/ddpm-cifar10-32, ddpm-celebahq-256, ddpm-ema-church-256, your own) into
dps_jax, without torch or diffusers.

    python -m checkpoints_convert.diffusers ddpm-cifar10-32/ cifar10.msgpack
    python -m dps_jax.main --config=configs/super_resolution.py --config.model.checkpoint=cifar10.msgpack ...

SRC is a pipeline folder (with unet/ and scheduler/ inside, as `save_pretrained` or a Hub download lays it out) or
a model folder (config.json and diffusion_pytorch_model.safetensors or .bin; the scheduler's config then comes
from --scheduler-config, or the DDPM defaults are assumed and said). The weights are read by the bounded
safetensors reader (`safetensors_io`) or the torch-free pickle reader (`torch_reader`, nothing executed); the
architecture from config.json (`dps_jax.models.diffusers_unet`); from the scheduler's config its beta schedule,
what the network predicts (epsilon, sample or v_prediction) and its variance type. Every mismatch between the
weights and the config is listed before anything is written; the output is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Tuple

import jax
import numpy as np

from checkpoints_convert import cli
from checkpoints_convert.mapping import convert_mapped
from checkpoints_convert.safetensors_io import load_safetensors
from checkpoints_convert.torch_reader import CheckpointError, load_state_dict

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
MAX_CONFIG_BYTES = 1 << 20
PREDICTIONS = {"epsilon": "epsilon", "sample": "start_x", "v_prediction": "v"}
VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
             "fixed_large_log": "fixed_large", "learned_range": "learned_range", "learned": "learned"}
# Attention weights under the names diffusers used before 0.12 (google/ddpm-* on the Hub still carry them).
OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _read_json(path: str) -> dict:
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {os.path.getsize(path)} bytes is too large for a config file")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a JSON config ({str(e)[:80]})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: a config must be a JSON object, got a {type(d).__name__}")
    return d


def locate(src: str, scheduler_config: Optional[str] = None) -> Tuple[str, str, Optional[str]]:
    """(config.json, weights file, scheduler config or None) of a pipeline or model folder."""
    if not os.path.isdir(src):
        raise CheckpointError(f"{src}: expected a diffusers pipeline or model folder (with config.json)")
    model_dir = os.path.join(src, "unet") if os.path.isdir(os.path.join(src, "unet")) else src
    config = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config):
        raise CheckpointError(f"{model_dir}: no config.json (a diffusers model folder holds config.json and "
                              f"{' or '.join(WEIGHT_FILES)})")
    weights = next((os.path.join(model_dir, w) for w in WEIGHT_FILES if os.path.isfile(os.path.join(model_dir, w))),
                   None)
    if weights is None:
        raise CheckpointError(f"{model_dir}: no weights file; expected {' or '.join(WEIGHT_FILES)}")
    if scheduler_config is None:
        guess = os.path.join(os.path.dirname(model_dir) if model_dir != src else src, "scheduler",
                             "scheduler_config.json")
        scheduler_config = guess if os.path.isfile(guess) else None
    return config, weights, scheduler_config


def schedule_of(sched: dict) -> dict:
    """What dps_jax needs from a diffusers scheduler config: {beta_schedule, num_timesteps, mean_type, var_type}."""
    t = sched.get("num_train_timesteps", 1000)
    if not (isinstance(t, int) and 2 <= t <= 100000):
        raise CheckpointError(f"scheduler num_train_timesteps {str(t)[:20]!r}: expected an integer 2 .. 100000")
    kind = sched.get("beta_schedule", "linear")
    if kind == "linear":
        start, end = sched.get("beta_start", 1e-4), sched.get("beta_end", 0.02)
        if not (np.isclose(start * t / 1000, 1e-4, rtol=1e-6) and np.isclose(end * t / 1000, 0.02, rtol=1e-6)):
            raise CheckpointError(f"scheduler betas linear from {start} to {end} over {t} steps: dps_jax's linear "
                                  f"schedule runs from {1e-4 * 1000 / t:.6g} to {0.02 * 1000 / t:.6g}")
        name = "linear"
    elif kind == "squaredcos_cap_v2":
        name = "cosine"
    else:
        raise CheckpointError(f"scheduler beta_schedule {str(kind)[:40]!r} is not implemented; expected 'linear' or "
                              "'squaredcos_cap_v2'")
    prediction = sched.get("prediction_type", "epsilon")
    variance = sched.get("variance_type", "fixed_small")
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"scheduler prediction_type {str(prediction)[:40]!r}: expected one of {sorted(PREDICTIONS)}")
    if variance not in VARIANCES:
        raise CheckpointError(f"scheduler variance_type {str(variance)[:40]!r}: expected one of {sorted(VARIANCES)}")
    return {"beta_schedule": name, "num_timesteps": t, "mean_type": PREDICTIONS[prediction],
            "var_type": VARIANCES[variance]}


def rename_old_attention(state: dict) -> dict:
    """diffusers' pre-0.12 attention names (….attentions.0.query.weight) as today's (….attentions.0.to_q.weight)."""
    out = {}
    for key, w in state.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-2] in OLD_ATTENTION and "attentions" in parts:
            key = ".".join(parts[:-2] + [OLD_ATTENTION[parts[-2]], parts[-1]])
        out[key] = w
    return out


def _to_flax(key: str, names, w: np.ndarray) -> np.ndarray:
    if names[-1] != "kernel":
        return w
    if w.ndim == 4:
        if len(names) > 1 and names[-2] in ("to_q", "to_k", "to_v", "to_out_0"):   # a 1x1 conv stored for a linear
            return w[:, :, 0, 0].T
        return w.transpose(2, 3, 1, 0)
    return w.T


def convert(src: str, dst: str, dtype: str = "float32", scheduler_config: Optional[str] = None,
            allow_nonfinite: bool = False) -> dict:
    """Convert the diffusers folder `src` into the dps_jax checkpoint `dst`; returns what it records (`extra`)."""
    from dps_jax.models import checkpoint, diffusers_unet as du

    config_path, weights, sched_path = locate(src, scheduler_config)
    try:
        config = du.DiffusersUNetConfig.from_diffusers(_read_json(config_path))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    sched = schedule_of(_read_json(sched_path) if sched_path else {})
    if sched["var_type"].startswith("learned") and not config.learn_sigma:
        raise CheckpointError(f"scheduler variance_type {sched['var_type']!r} needs a network with "
                              f"{2 * config.in_channels} output channels; this one has {config.out_channels}")
    if os.path.realpath(weights) == os.path.realpath(dst):
        raise CheckpointError(f"the output {dst} is the input checkpoint; choose another output path")
    state = load_safetensors(weights) if weights.endswith(".safetensors") else load_state_dict(weights)
    state = rename_old_attention(state)
    shapes = du.torch_shapes(config)
    expected = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(du.param_shapes(config))[0]:
        names = tuple(p.key for p in path)
        expected[du.torch_key(names)] = (names, leaf.shape)

    def torch_shape(key, names, got):
        want = shapes[key]
        if names[-1] == "kernel" and len(got) == 4 and len(want) == 2:      # linear stored as a 1x1 conv
            return want + (1, 1)
        return want

    params = convert_mapped(state, expected, torch_shape, _to_flax, np.dtype(dtype), consume=True,
                            allow_nonfinite=allow_nonfinite)
    extra = {"source": str(src), "process": "discrete_vp", **sched,
             "scheduler_config": sched_path or "none (DDPM defaults assumed)"}
    checkpoint.save_checkpoint(dst, params, config, extra=extra, fmt=du.FORMAT)
    return extra


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m checkpoints_convert.diffusers",
                                 description="Convert a diffusers UNet2DModel (pipeline or model folder) for dps_jax "
                                             "(no torch or diffusers needed).")
    ap.add_argument("src", help="a diffusers pipeline folder (unet/, scheduler/) or model folder (config.json)")
    ap.add_argument("dst", help="the dps_jax checkpoint to write (.msgpack)")
    ap.add_argument("--scheduler-config", help="the scheduler_config.json, when SRC is a model folder")
    cli.add_weight_options(ap)
    args = ap.parse_args(argv)
    return cli.run(lambda: convert(args.src, args.dst, args.dtype, args.scheduler_config, args.allow_nonfinite),
                   lambda extra: f"wrote {args.dst} ({extra['mean_type']} network, {extra['beta_schedule']} schedule "
                                 f"of {extra['num_timesteps']} steps, {extra['var_type']} variance; scheduler: "
                                 f"{extra['scheduler_config']})")

if __name__ == "__main__":
    sys.exit(main())
