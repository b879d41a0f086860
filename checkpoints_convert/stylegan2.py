"""Import a StyleGAN2 generator in the layout of rosinality's stylegan2-pytorch (what BKS-styleGAN2 loads:
`stylegan2-ffhq-config-f.pt` as its `convert_weight.py` writes it, or a training checkpoint of its `train.py`)
into dps_jax, without torch.

    python -m checkpoints_convert.stylegan2 stylegan2-ffhq-config-f.pt models/stylegan2_ffhq256.msgpack

    python -m checkpoints_convert.stylegan2 --warmup-kernel kernel.pth kernel.npy

The generator under `--key` (g_ema by default, the averaged weights its samples use) is read by the bounded
torch reader; its configuration (size, style_dim, n_mlp, the channels per resolution) follows from its tensors'
shapes, every tensor is then checked against the key table of the JAX port (`dps_jax.models.stylegan2`),
every mismatch listed, and the FIR kernels its constructor stores must be those of `--blur-kernel`. The
mapping network's learning-rate multiplier is not in the file: `--lr-mlp` (0.01, the published networks').
`--warmup-kernel` converts the other file BKS-styleGAN2 loads, the blur latent its kernel DIP is warmed up
towards (experiments/pretrained/kernel.pth, one tensor), into the `.npy` of its option `warmup_kernel`.
"""

from __future__ import annotations

import argparse
import io
import re
import sys

import numpy as np

from checkpoints_convert import cli
from checkpoints_convert.mapping import convert_mapped
from checkpoints_convert.torch_reader import CheckpointError, is_tensor, load_selected, load_state_dict


def config_of(state, blur_kernel=(1, 3, 3, 1), lr_mlp: float = 0.01):
    """The StyleGAN2Config a generator state_dict was built with, from its shapes."""
    from dps_jax.models import stylegan2 as sg

    def shape(key):
        if key not in state:
            raise CheckpointError(f"not a StyleGAN2 generator (rosinality's layout): no {key!r}")
        return tuple(np.shape(state[key]))

    mlp = sorted(int(m.group(1)) for k in state for m in [re.fullmatch(r"style\.(\d+)\.weight", k)] if m)
    rgbs = sorted(int(m.group(1)) for k in state for m in [re.fullmatch(r"to_rgbs\.(\d+)\.bias", k)] if m)
    if not mlp or mlp != list(range(1, len(mlp) + 1)):
        raise CheckpointError(f"mapping layers style.N numbered {mlp[:10]}; expected 1 .. n_mlp")
    if rgbs != list(range(len(rgbs))):
        raise CheckpointError(f"to_rgbs numbered {rgbs[:10]}; expected 0 .. N - 1")
    style_dim = shape("style.1.weight")[0]
    channels = [(4, shape("input.input")[1])]
    for n in range(len(rgbs)):
        channels.append((2 ** (n + 3), shape(f"convs.{2 * n}.conv.weight")[1]))
    try:
        return sg.StyleGAN2Config(size=2 ** (len(rgbs) + 2), style_dim=int(style_dim), n_mlp=len(mlp),
                                  channels=tuple(channels), blur_kernel=tuple(blur_kernel), lr_mlp=float(lr_mlp),
                                  image_channels=int(shape("to_rgb1.bias")[1]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None


def convert(src: str, dst: str, key: str = "g_ema", dtype: str = "float32", blur_kernel=(1, 3, 3, 1),
            lr_mlp: float = 0.01, allow_nonfinite: bool = False) -> dict:
    """Convert the generator under `key` of `src` into the dps_jax checkpoint `dst`."""
    from dps_jax.models import checkpoint, stylegan2 as sg

    state = load_state_dict(src, key=key)
    config = config_of(state, blur_kernel, lr_mlp)
    shapes = sg.param_shapes(config)
    for name, want in sg.buffers(config).items():       # FIR kernels: fixed by blur_kernel, stored as buffers
        got = state.get(name)
        if got is not None and (np.shape(got) != want.shape or not np.allclose(got, want, atol=1e-6)):
            raise CheckpointError(f"{name} is not the FIR kernel of blur_kernel {list(blur_kernel)} "
                                  "(pass the network's --blur-kernel)")
    expected = {k: ((k,), s) for k, s in shapes.items()}
    params = convert_mapped(state, expected, lambda k, names, got: shapes[k], lambda k, names, w: w,
                            np.dtype(dtype), consume=True, allow_nonfinite=allow_nonfinite)
    extra = {"source": str(src), "key": key, "parameters": int(sum(int(np.prod(s)) for k, s in shapes.items()
                                                                      if not k.endswith(".kernel")
                                                                      and not k.startswith("noises.")))}
    checkpoint.save_checkpoint(dst, params, config, extra=extra, fmt=sg.FORMAT)
    return {**extra, "size": config.size}


def convert_warmup_kernel(src: str, dst: str) -> tuple:
    """The tensor saved in `src` (BKS's kernel.pth: (1, kernel_dim, h, w)) as the .npy `dst`; returns its shape."""
    from dps_jax import io as dps_io

    def select(obj):
        if not is_tensor(obj):
            raise CheckpointError(f"{src}: expected one saved tensor (BKS's kernel.pth), got a {type(obj).__name__}")
        return {"z": obj}

    z = load_selected(src, select)["z"]
    if z.ndim != 4 or z.shape[0] != 1 or not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
        raise CheckpointError(f"{src}: a warm-up blur latent is finite floats (1, kernel_dim, h, w); got {z.dtype} "
                              f"{z.shape}")
    buf = io.BytesIO()
    np.save(buf, np.float32(z), allow_pickle=False)
    dps_io.atomic_write(dst, buf.getvalue())
    return tuple(z.shape)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m checkpoints_convert.stylegan2",
                                 description="Convert a StyleGAN2 generator (rosinality's stylegan2-pytorch layout) for "
                                             "dps_jax, without torch.")
    ap.add_argument("src", help="the checkpoint (.pt): convert_weight.py's output or a train.py checkpoint")
    ap.add_argument("dst", help="the dps_jax checkpoint to write (.msgpack)")
    ap.add_argument("--key", default="g_ema", help="the entry holding the generator (default g_ema)")
    ap.add_argument("--blur-kernel", default="1,3,3,1", help="the generator's FIR filter (default 1,3,3,1)")
    ap.add_argument("--lr-mlp", type=float, default=0.01, help="the mapping network's learning-rate multiplier")
    ap.add_argument("--warmup-kernel", action="store_true",
                    help="src is BKS's warm-up blur latent (kernel.pth); write it as the .npy dst")
    cli.add_weight_options(ap)
    args = ap.parse_args(argv)
    if args.warmup_kernel:
        return cli.run(lambda: convert_warmup_kernel(args.src, args.dst),
                       lambda shape: f"wrote {args.dst} (a warm-up blur latent of shape {shape})")

    def run():
        try:
            kernel = tuple(int(v) for v in args.blur_kernel.split(","))
        except ValueError:
            raise CheckpointError(f"--blur-kernel {args.blur_kernel!r:.40}: expected integers separated by commas")
        return convert(args.src, args.dst, args.key, args.dtype, kernel, args.lr_mlp, args.allow_nonfinite)

    return cli.run(run, lambda extra: f"wrote {args.dst} (a {extra['size']} x {extra['size']} StyleGAN2 generator, "
                                      f"{extra['parameters']:,} parameters)")


if __name__ == "__main__":
    sys.exit(main())
