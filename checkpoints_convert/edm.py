"""Import an EDM network pickle (NVlabs/edm: edm-ffhq-64x64-uncond-vp.pkl, edm-afhqv2-64x64-uncond-ve.pkl, your
own SongUNet snapshots) into dps_jax, without torch and without running the source the pickle carries.

    python -m checkpoints_convert.edm edm-ffhq-64x64-uncond-vp.pkl models/edm_ffhq64_vp.msgpack
    python -m dps_jax.main --config=configs/super_resolution.py --config.model.checkpoint=models/edm_ffhq64_vp.msgpack \
        --config.data.image_size=64 ...

The pickle is read as data (`edm_pickle`); the network's configuration is the constructor arguments it recorded
(the preconditioning object's and the SongUNet's); its tensors are checked against the key table of the JAX
port (`dps_jax.models.edm_unet`), every mismatch listed, and written atomically with the configuration. How the
network is read as a prior follows from its preconditioning: EDMPrecond -> EDM's D(x; sigma), VPPrecond -> a
continuous VP epsilon network, VEPrecond -> a VE one.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from checkpoints_convert import cli
from checkpoints_convert.edm_pickle import load_network
from checkpoints_convert.mapping import convert_mapped
from checkpoints_convert.torch_reader import CheckpointError

EDM_PRECONDITIONINGS = ("EDMPrecond", "VPPrecond", "VEPrecond")
# Constructor arguments that do not change a network's output at sampling time.
IGNORED = ("dropout", "label_dropout", "use_fp16", "sigma_min", "sigma_max", "epsilon_t", "model_type",
           "img_channels")
SONG_KEYS = ("img_resolution", "in_channels", "out_channels", "model_channels", "channel_mult", "channel_mult_emb",
             "num_blocks", "attn_resolutions", "embedding_type", "channel_mult_noise", "encoder_type", "decoder_type",
             "resample_filter", "augment_dim", "label_dim")


def config_of(net, class_label: int = -1):
    """The EDMUNetConfig of a network read by `edm_pickle.load_network`, or the reason it cannot run.
    `class_label`: the class a class-conditional network is read at (-1: the zero label, EDM's own default)."""
    from dps_jax.models import edm_unet as eu

    if net.class_name not in EDM_PRECONDITIONINGS:
        raise CheckpointError(f"the network is a {net.class_name[:60]!r}; expected one of {list(EDM_PRECONDITIONINGS)}")
    inner = net.inner
    if inner is None or inner.class_name not in ("SongUNet", "DhariwalUNet"):
        name = inner.class_name if inner is not None else "missing model"
        raise CheckpointError(f"the preconditioned model is a {name[:60]!r}; the JAX port covers SongUNet (DDPM++, "
                              "NCSN++) and DhariwalUNet (ADM)")
    outer = net.init_kwargs
    if net.class_name == "VPPrecond" and (outer.get("beta_d", 19.9), outer.get("beta_min", 0.1)) != (19.9, 0.1):
        raise CheckpointError(f"VPPrecond with beta_d {outer.get('beta_d')} and beta_min {outer.get('beta_min')}: "
                              "dps_jax's continuous VP process is beta_d 19.9, beta_min 0.1")
    unknown = sorted(set(inner.init_kwargs) - set(SONG_KEYS) - set(IGNORED))
    if unknown:
        raise CheckpointError(f"{inner.class_name} arguments this port does not know: {unknown[:6]}")
    kwargs = {k: v for k, v in inner.init_kwargs.items() if k in SONG_KEYS}
    if inner.class_name == "DhariwalUNet":       # its defaults differ from SongUNet's, and it has no such options
        kwargs = {"model_channels": 192, "channel_mult": (1, 2, 3, 4), "num_blocks": 3, "attn_resolutions": (32, 16, 8),
                  **kwargs}
    try:
        return eu.EDMUNetConfig(**kwargs, model_type=inner.class_name, class_label=int(class_label),
                                 precond=net.class_name, sigma_data=float(outer.get("sigma_data", 0.5)),
                                 vp_timesteps=int(outer.get("M", 1000)))
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None


def convert(src: str, dst: str, key: str = "ema", dtype: str = "float32", allow_nonfinite: bool = False,
            class_label: int = -1) -> dict:
    """Convert the network under `key` of the EDM pickle `src` into the dps_jax checkpoint `dst`."""
    from dps_jax.models import checkpoint, edm_unet as eu

    net = load_network(src, key)
    config = config_of(net, class_label)
    if config.vp_timesteps != 1000:
        raise CheckpointError(f"VPPrecond with M = {config.vp_timesteps}: dps_jax reads continuous VP networks at "
                              "timestep 999 s")
    shapes = eu.param_shapes(config)
    state = {}
    for k, a in net.state_dict.items():
        if not k.startswith("model."):
            raise CheckpointError(f"a tensor {k[:60]!r} outside the preconditioned model")
        state[k[len("model."):]] = a
    expected = {k: ((k,), s) for k, s in shapes.items()}
    params = convert_mapped(state, expected, lambda k, names, got: shapes[k], lambda k, names, w: w,
                            np.dtype(dtype), consume=True, allow_nonfinite=allow_nonfinite)
    extra = {"source": str(src), "key": key, **eu.prior_options(config)}
    checkpoint.save_checkpoint(dst, params, config, extra=extra, fmt=eu.FORMAT)
    return extra


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m checkpoints_convert.edm",
                                 description="Convert an EDM network pickle (SongUNet: DDPM++ / NCSN++) for dps_jax, "
                                             "reading it as data (no torch; nothing it carries is run).")
    ap.add_argument("src", help="the EDM pickle (.pkl)")
    ap.add_argument("dst", help="the dps_jax checkpoint to write (.msgpack)")
    ap.add_argument("--key", default="ema", help="the pickle's entry holding the network (default ema)")
    cli.add_weight_options(ap)
    ap.add_argument("--class-label", type=int, default=-1,
                    help="the class a class-conditional network (ImageNet 64) is read at; -1: none (EDM's zero label)")
    args = ap.parse_args(argv)
    return cli.run(lambda: convert(args.src, args.dst, args.key, args.dtype, args.allow_nonfinite, args.class_label),
                   lambda extra: f"wrote {args.dst} (a {extra['process']} prior, {extra['mean_type']} output)")

if __name__ == "__main__":
    sys.exit(main())
