"""Import a score_sde_pytorch checkpoint (yang-song/score_sde_pytorch: NCSN++ and DDPM++, VE and VP SDEs) into
dps_jax, without torch.

    python -m checkpoints_convert.score_sde checkpoint_48.pth ffhq256_ve.msgpack --config ve/ffhq_256_ncsnpp_continuous
    python -m checkpoints_convert.score_sde checkpoint_8.pth cifar10_vp.msgpack --config vp/cifar10_ddpmpp_continuous \\
        --set model.num_res_blocks=8          # a config of your own: a published one with fields changed

A score_sde checkpoint holds the optimizer's state, the network's state_dict (a flat list `all_modules.N`) and
its exponential moving average (a list of tensors in the order of the network's trainable parameters); the
architecture is not in the file but in the config .py that trained it, so it is named here (`--config`, the
published configs' path in that repository, with `--set` for your own values; the configs are data below, no
config file is run). The EMA weights are read by default, as score_sde samples with them.

NCSN++ and DDPM++ are the networks EDM re-implemented as its SongUNet, so the list is mapped onto
`dps_jax.models.edm_unet`'s keys (its attention's three 1 x 1 projections become one qkv convolution); how the
network is read as a prior follows from the SDE:
- VE (continuous; data in [0, 1], output scaled by 1 / sigma): the network at x in [0, 1] with noise sigma' is
  EDM's VEPrecond at 2 x - 1 with sigma = 2 sigma' -> process 've', epsilon;
- VP continuous (beta 0.1 .. 20, centred data, fed 999 t): VPPrecond -> process 'vp', epsilon;
- VP discrete (DDPM's linear table of num_scales steps, fed the timestep): process 'discrete_vp', epsilon.
Discrete VE (SMLD) networks, sub-VP SDEs and the 'ddpm' model (DDPM's own UNet: use diffusers' google/ddpm-*)
are refused in one line.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
from typing import Dict, List, Tuple

import numpy as np

from checkpoints_convert import cli
from checkpoints_convert.mapping import convert_mapped
from checkpoints_convert.torch_reader import CheckpointError, is_tensor, load_selected, tensor_shape

# The fields of score_sde's configs (configs/default_*_configs.py and the task configs) that decide the network
# and the SDE, as published. Keys: the config's path under configs/, without .py.
_BASE = dict(sde="vesde", continuous=True, image_size=32, num_channels=3, centered=False, sigma_min=0.01,
             sigma_max=50.0, beta_min=0.1, beta_max=20.0, num_scales=1000, name="ncsnpp", nf=128, ch_mult=(1, 2, 2, 2),
             num_res_blocks=4, attn_resolutions=(16,), conditional=True, fir=True, fir_kernel=(1, 3, 3, 1),
             skip_rescale=True, resblock_type="biggan", progressive="none", progressive_input="residual",
             progressive_combine="sum", embedding_type="fourier", scale_by_sigma=True, nonlinearity="swish",
             normalization="GroupNorm", attention_type="ddpm")
_VE256 = dict(image_size=256, sigma_max=348.0, num_scales=2000, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2,
              progressive="output_skip", progressive_input="input_skip")
_VE1024 = dict(image_size=1024, sigma_max=1348.0, num_scales=2000, nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1,
               progressive="output_skip", progressive_input="input_skip")
_VP = dict(sde="vpsde", centered=True, scale_by_sigma=False, embedding_type="positional")
_DDPMPP = dict(_VP, fir=False, progressive_input="none")
PRESETS: Dict[str, dict] = {
    "ve/cifar10_ncsnpp_continuous": {},
    "ve/cifar10_ncsnpp_deep_continuous": dict(num_res_blocks=8),
    "ve/celebahq_256_ncsnpp_continuous": _VE256,
    "ve/ffhq_256_ncsnpp_continuous": _VE256,
    "ve/church_ncsnpp_continuous": dict(_VE256, sigma_max=380.0),
    "ve/bedroom_ncsnpp_continuous": dict(_VE256, sigma_max=378.0),
    "ve/celebahq_ncsnpp_continuous": _VE1024,
    "ve/ffhq_ncsnpp_continuous": _VE1024,
    "ve/cifar10_ncsnpp": dict(continuous=False, embedding_type="positional"),
    "vp/cifar10_ddpmpp_continuous": _DDPMPP,
    "vp/cifar10_ddpmpp_deep_continuous": dict(_DDPMPP, num_res_blocks=8),
    "vp/cifar10_ncsnpp_continuous": _VP,
    "vp/cifar10_ncsnpp_deep_continuous": dict(_VP, num_res_blocks=8),
    "vp/cifar10_ddpmpp": dict(_DDPMPP, continuous=False),
    "vp/cifar10_ncsnpp": dict(_VP, continuous=False),
}
FIELDS = tuple(_BASE)


def score_sde_config(preset: str, overrides: Tuple[str, ...] = ()) -> dict:
    """The fields of a published config, with `overrides` ('model.nf=64', 'data.image_size=64': the section is
    optional) applied; values are Python literals."""
    if preset not in PRESETS:
        raise CheckpointError(f"unknown score_sde config {preset[:60]!r}; expected one of {sorted(PRESETS)}")
    cfg = dict(_BASE, **PRESETS[preset])
    for item in overrides:
        name, sep, value = item.partition("=")
        field = name.strip().split(".")[-1]
        if not sep or field not in cfg:
            raise CheckpointError(f"--set {item[:60]!r}: expected FIELD=VALUE with FIELD one of {sorted(cfg)}")
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            value = value.strip()           # a bare word: a string ('biggan')
        if isinstance(cfg[field], tuple) and isinstance(value, list):
            value = tuple(value)
        if type(value) is not type(cfg[field]) and not (isinstance(cfg[field], float) and isinstance(value, int)):
            raise CheckpointError(f"--set {item[:60]!r}: {field} takes a value of type {type(cfg[field]).__name__}, "
                                  f"got {value!r:.40}")
        cfg[field] = float(value) if isinstance(cfg[field], float) else value
    return cfg


def _refuse_unless(ok: bool, what: str):
    if not ok:
        raise CheckpointError(what)


def edm_config(cfg: dict):
    """The `EDMUNetConfig` that computes the same network as score_sde's NCSN++ / DDPM++ under `cfg`, or the
    reason it cannot be read."""
    from dps_jax.models import edm_unet as eu

    _refuse_unless(cfg["name"] == "ncsnpp", f"model.name {cfg['name']!r}: only 'ncsnpp' (NCSN++ and DDPM++) is ported; "
                   "DDPM's own UNet ('ddpm') is the one diffusers ships (google/ddpm-*: checkpoints_convert.diffusers)")
    fixed = dict(resblock_type="biggan", conditional=True, skip_rescale=True, progressive_combine="sum",
                 nonlinearity="swish", normalization="GroupNorm", attention_type="ddpm")
    for field, want in fixed.items():
        _refuse_unless(cfg[field] == want, f"model.{field} {cfg[field]!r} is not implemented; expected {want!r}")
    _refuse_unless(cfg["progressive"] in ("none", "output_skip"),
                   f"model.progressive {cfg['progressive']!r} is not implemented; expected 'none' or 'output_skip'")
    encoders = {"none": "standard", "input_skip": "skip", "residual": "residual"}
    _refuse_unless(cfg["progressive_input"] in encoders,
                   f"model.progressive_input {cfg['progressive_input']!r}: expected one of {sorted(encoders)}")
    if cfg["sde"] == "vesde":
        _refuse_unless(cfg["continuous"], "a discretely trained VE network (SMLD: fed the index of a table of "
                       f"{cfg['num_scales']} sigmas) is not supported; its continuous counterpart is")
        _refuse_unless(not cfg["centered"] and cfg["scale_by_sigma"] and cfg["embedding_type"] == "fourier",
                       "a VE network is read as score_sde's published ones are trained: data in [0, 1] "
                       "(centered False), output divided by sigma (scale_by_sigma True), Fourier embedding")
        precond = "VEPrecond"
    elif cfg["sde"] == "vpsde":
        _refuse_unless(cfg["centered"] and not cfg["scale_by_sigma"] and cfg["embedding_type"] == "positional",
                       "a VP network is read as score_sde's published ones are trained: data in [-1, 1] "
                       "(centered True), scale_by_sigma False, positional embedding")
        _refuse_unless((cfg["beta_min"], cfg["beta_max"]) == (0.1, 20.0),
                       f"VP SDE with beta {cfg['beta_min']} .. {cfg['beta_max']}: dps_jax's VP schedule is 0.1 .. 20")
        _refuse_unless(cfg["continuous"] or cfg["num_scales"] >= 2,
                       f"a discrete VP table of {cfg['num_scales']} steps")
        _refuse_unless(not cfg["continuous"] or cfg["num_scales"] == 1000, "a continuous VP network is read at "
                       f"timestep 999 t, as score_sde feeds it; num_scales {cfg['num_scales']} is not 1000")
        precond = "VPPrecond" if cfg["continuous"] else "DiscreteVP"
    else:
        raise CheckpointError(f"training.sde {cfg['sde']!r}: expected 'vesde' or 'vpsde' (sub-VP is not supported)")
    fourier = cfg["embedding_type"] == "fourier"
    try:
        return eu.EDMUNetConfig(
            img_resolution=int(cfg["image_size"]), in_channels=int(cfg["num_channels"]),
            out_channels=int(cfg["num_channels"]), model_channels=int(cfg["nf"]), channel_mult=tuple(cfg["ch_mult"]),
            channel_mult_emb=4, num_blocks=int(cfg["num_res_blocks"]), attn_resolutions=tuple(cfg["attn_resolutions"]),
            embedding_type=cfg["embedding_type"], channel_mult_noise=2 if fourier else 1,
            encoder_type=encoders[cfg["progressive_input"]],
            decoder_type="skip" if cfg["progressive"] == "output_skip" else "standard",
            resample_filter=tuple(cfg["fir_kernel"]) if cfg["fir"] else (1, 1), precond=precond,
            vp_timesteps=int(cfg["num_scales"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None


def module_list(config) -> List[Tuple[str, str]]:
    """score_sde's `all_modules` in order, each as (kind, the EDM layer it becomes): kinds 'fourier', 'linear',
    'conv', 'norm', 'resblock', 'attn' (the attention that follows a block, part of that block in EDM),
    'combine' (the input pyramid's 1 x 1 conv), 'pyramid_down' (the residual input pyramid's conv)."""
    mods = [("fourier", "map_noise")] if config.embedding_type == "fourier" else []
    mods += [("linear", "map_layer0"), ("linear", "map_layer1")]
    levels = len(config.channel_mult)
    res = [config.img_resolution >> i for i in range(levels)]
    name = lambda section, r, what: f"{section}.{r}x{r}_{what}"
    mods.append(("conv", name("enc", res[0], "conv")))
    for level in range(levels):
        for i in range(config.num_blocks):
            mods.append(("resblock", name("enc", res[level], f"block{i}")))
            if res[level] in config.attn_resolutions:
                mods.append(("attn", name("enc", res[level], f"block{i}")))
        if level < levels - 1:
            mods.append(("resblock", name("enc", res[level + 1], "down")))
            if config.encoder_type == "skip":
                mods.append(("combine", name("enc", res[level + 1], "aux_skip")))
            elif config.encoder_type == "residual":
                mods.append(("pyramid_down", name("enc", res[level + 1], "aux_residual")))
    low = res[-1]
    mods += [("resblock", name("dec", low, "in0")), ("attn", name("dec", low, "in0")),
             ("resblock", name("dec", low, "in1"))]
    for level in reversed(range(levels)):
        for i in range(config.num_blocks + 1):
            mods.append(("resblock", name("dec", res[level], f"block{i}")))
        if res[level] in config.attn_resolutions:
            mods.append(("attn", name("dec", res[level], f"block{config.num_blocks}")))
        if config.decoder_type == "skip":
            mods += [("norm", name("dec", res[level], "aux_norm")), ("conv", name("dec", res[level], "aux_conv"))]
        if level > 0:
            mods.append(("resblock", name("dec", res[level - 1], "up")))
    if config.decoder_type != "skip":
        mods += [("norm", name("dec", res[0], "aux_norm")), ("conv", name("dec", res[0], "aux_conv"))]
    return mods


# Each kind's parameters: (score_sde's name, EDM's name, how the tensor is laid out).
_PARTS = {
    "fourier": [("W", "freqs", "same")],
    "linear": [("weight", "weight", "same"), ("bias", "bias", "same")],
    "conv": [("weight", "weight", "same"), ("bias", "bias", "same")],
    "norm": [("weight", "weight", "same"), ("bias", "bias", "same")],
    "combine": [("Conv_0.weight", "weight", "same"), ("Conv_0.bias", "bias", "same")],
    "pyramid_down": [("Conv2d_0.weight", "weight", "same"), ("Conv2d_0.bias", "bias", "same")],
    "resblock": [(f"{a}.{w}", f"{b}.{w}", "same") for a, b in (("GroupNorm_0", "norm0"), ("Conv_0", "conv0"),
                 ("Dense_0", "affine"), ("GroupNorm_1", "norm1"), ("Conv_1", "conv1"), ("Conv_2", "skip"))
                 for w in ("weight", "bias")],
    "attn": [("GroupNorm_0.weight", "norm2.weight", "same"), ("GroupNorm_0.bias", "norm2.bias", "same")] +
            [(f"NIN_{j}.{w}", f"qkv.{'weight' if w == 'W' else 'bias'}", f"qkv{j}") for j in range(3)
             for w in ("W", "b")] + [("NIN_3.W", "proj.weight", "proj"), ("NIN_3.b", "proj.bias", "same")],
}


def key_map(config) -> Dict[str, Tuple[str, str, tuple]]:
    """{score_sde key (without 'module.'): (EDM key, layout, the score_sde shape)} for every tensor the network
    uses, built from the EDM port's key table."""
    from dps_jax.models import edm_unet as eu

    shapes = eu.param_shapes(config)
    out = {}
    for index, (kind, layer) in enumerate(module_list(config)):
        for src, dst, layout in _PARTS[kind]:
            dst = f"{layer}.{dst}"
            if dst not in shapes:
                continue                                # e.g. a block without a skip projection
            shape = shapes[dst]
            if layout.startswith("qkv"):                # (3 C, C, 1, 1) / (3 C,) -> NIN's (C, C) / (C,)
                shape = (shape[1], shape[1]) if len(shape) == 4 else (shape[0] // 3,)
            elif layout == "proj":
                shape = shape[:2]
            out[f"all_modules.{index}.{src}"] = (dst, layout, tuple(shape))
    return out


def _assemble(config, params: Dict[str, np.ndarray], keys) -> Dict[str, np.ndarray]:
    """The EDM port's params from score_sde tensors (already checked and converted to the output dtype)."""
    from dps_jax.models import edm_unet as eu

    out, qkv = {}, {}
    for src, (dst, layout, _) in keys.items():
        w = params[src]
        if layout == "same":
            out[dst] = w
        elif layout == "proj":                          # NIN: y = x W + b, so W is (in, out)
            out[dst] = np.ascontiguousarray(w.T[:, :, None, None])
        else:
            qkv.setdefault(dst, {})[int(layout[3:])] = w
    for dst, parts in qkv.items():
        # EDM's qkv output channels are laid out (channel, q / k / v); NIN_0, _1, _2 are q, k, v
        if dst.endswith(".weight"):
            w = np.stack([parts[j].T for j in range(3)], axis=1)          # (C_out, 3, C_in)
            out[dst] = np.ascontiguousarray(w.reshape(-1, w.shape[-1])[:, :, None, None])
        else:
            out[dst] = np.ascontiguousarray(np.stack([parts[j] for j in range(3)], axis=1).reshape(-1))
    f = np.asarray(config.resample_filter, np.float64)
    f = (np.outer(f, f) / f.sum() ** 2)[None, None]
    for name, shape in eu.param_shapes(config).items():
        if name.endswith(".resample_filter"):           # score_sde keeps its FIR kernel in the config
            out[name] = f.astype(next(iter(params.values())).dtype)
    return out


def _select(cfg: dict, weights: str):
    """The selector of the checkpoint's tensors: the network's state_dict with, for weights='ema', the EMA's
    shadow parameters in place of the trainable ones (their order is the state_dict's, less buffers and frozen
    parameters: the sigma table, and the Fourier embedding's fixed W)."""
    def select(obj):
        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            raise CheckpointError("not a score_sde checkpoint: expected a dict with 'model' (and 'ema', "
                                  "'optimizer', 'step')")
        model = obj["model"]
        bad = [k for k, v in model.items() if not isinstance(k, str) or not is_tensor(v)]
        if bad:
            raise CheckpointError(f"the model's state_dict holds entries that are not tensors: {bad[:4]}")
        prefix = "module." if model and all(k.startswith("module.") for k in model) else ""
        model = {k[len(prefix):]: v for k, v in model.items()}
        if weights == "model":
            return model
        ema = obj.get("ema")
        shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
        if not isinstance(shadow, list) or not all(is_tensor(t) for t in shadow):
            raise CheckpointError("the checkpoint has no EMA ('ema' with a list 'shadow_params' of tensors); "
                                  "read the raw weights with --weights model")
        frozen = {"sigmas"} | ({"all_modules.0.W"} if cfg["embedding_type"] == "fourier" else set())
        trainable = [k for k in model if k not in frozen]
        if len(trainable) != len(shadow):
            raise CheckpointError(f"the EMA holds {len(shadow)} tensors, the network {len(trainable)} trainable "
                                  "ones: not the EMA of this network")
        out = dict(model)
        for k, t in zip(trainable, shadow):
            if tensor_shape(t) != tensor_shape(model[k]):
                raise CheckpointError(f"the EMA's tensor for {k} is {tensor_shape(t)}, the network's "
                                      f"{tensor_shape(model[k])}: not the EMA of this network")
            out[k] = t
        return out
    return select


def _check_sigmas(cfg: dict, sigmas: np.ndarray):
    """The network's sigma table (a buffer score_sde saves) against the config's VE range: a mismatched config
    would read the network at the wrong noise levels."""
    want = np.exp(np.linspace(np.log(cfg["sigma_max"]), np.log(cfg["sigma_min"]), cfg["num_scales"]))
    if sigmas.shape != want.shape or not np.allclose(sigmas, want, rtol=1e-4):
        got = f"{sigmas.size} sigmas from {float(sigmas.flat[0]):.6g} to {float(sigmas.flat[-1]):.6g}" \
            if sigmas.size else "an empty table"
        raise CheckpointError(f"the checkpoint's sigma table ({got}) is not the config's ({cfg['num_scales']} from "
                              f"{cfg['sigma_max']:g} to {cfg['sigma_min']:g}): check --config / --set model.sigma_max")


def convert(src: str, dst: str, preset: str, overrides: Tuple[str, ...] = (), weights: str = "ema",
            dtype: str = "float32", allow_nonfinite: bool = False) -> dict:
    """Convert the score_sde checkpoint `src`, trained under config `preset` (+ `overrides`), into `dst`."""
    from dps_jax.models import checkpoint, edm_unet as eu

    if weights not in ("ema", "model"):
        raise CheckpointError(f"--weights {weights!r}: expected 'ema' or 'model'")
    cfg = score_sde_config(preset, tuple(overrides))
    config = edm_config(cfg)
    state = load_selected(src, _select(cfg, weights))
    sigmas = state.pop("sigmas", None)
    if sigmas is not None and cfg["sde"] == "vesde":
        _check_sigmas(cfg, np.asarray(sigmas, np.float64))
    keys = key_map(config)
    expected = {k: ((k,), shape) for k, (_, _, shape) in keys.items()}
    flat = convert_mapped(state, expected, lambda k, names, got: keys[k][2], lambda k, names, w: w,
                          np.dtype(dtype), consume=True, allow_nonfinite=allow_nonfinite)
    params = _assemble(config, flat, keys)
    sde = {"sde": cfg["sde"], "continuous": cfg["continuous"]}
    sde.update({"sigma_min": cfg["sigma_min"], "sigma_max": cfg["sigma_max"]} if cfg["sde"] == "vesde" else
               {"beta_min": cfg["beta_min"], "beta_max": cfg["beta_max"], "num_scales": cfg["num_scales"]})
    extra = {"source": str(src), "score_sde_config": preset, "overrides": list(overrides), "weights": weights,
             **sde, **{k: v for k, v in eu.prior_options(config).items() if k != "schedule"}}
    checkpoint.save_checkpoint(dst, params, config, extra=extra, fmt=eu.FORMAT)
    return extra


def parameter_count(config) -> int:
    """The network's parameters as score_sde's constructor counts them (with the Fourier embedding's W)."""
    return int(sum(math.prod(shape) for _, _, shape in key_map(config).values()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m checkpoints_convert.score_sde",
                                 description="Convert a score_sde_pytorch checkpoint (NCSN++ / DDPM++; VE or VP SDE) "
                                             "for dps_jax, reading it as data (no torch).")
    ap.add_argument("src", help="the score_sde checkpoint (checkpoint_N.pth)")
    ap.add_argument("dst", help="the dps_jax checkpoint to write (.msgpack)")
    ap.add_argument("--config", required=True, metavar="NAME",
                    help="the score_sde config it was trained with, as its path under configs/ without .py "
                         f"({', '.join(sorted(PRESETS))})")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a field of that config (repeatable), e.g. model.nf=64 or data.image_size=64")
    ap.add_argument("--weights", default="ema", choices=["ema", "model"],
                    help="the EMA weights score_sde samples with (default) or the raw network's")
    cli.add_weight_options(ap)
    args = ap.parse_args(argv)
    return cli.run(lambda: convert(args.src, args.dst, args.config, tuple(args.set), args.weights, args.dtype,
                                   args.allow_nonfinite),
                   lambda extra: f"wrote {args.dst} (score_sde {extra['score_sde_config']}, {extra['weights']} "
                                 f"weights: a {extra['process']} prior, {extra['mean_type']} output)")


if __name__ == "__main__":
    sys.exit(main())
