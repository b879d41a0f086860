"""Import the feature networks of the paper's metrics from their PyTorch files, without torch.

    python -m checkpoints_convert.metrics lpips alexnet-owt-7be5be79.pth alex.pth lpips_alex.msgpack
    python -m checkpoints_convert.metrics lpips vgg16-397923af.pth vgg.pth lpips_vgg.msgpack --net vgg
    python -m checkpoints_convert.metrics fid pt_inception-2015-12-05-6726825d.pth fid_inception.msgpack
    python -m checkpoints_convert.metrics vgg19 vgg19-dcbb9e9d.pth vgg19.msgpack

LPIPS takes torchvision's ImageNet trunk (its `classifier.*` weights are not used) and the linear heads of
the `lpips` package (`lpips/weights/v0.1/<net>.pth`, keys lin0..lin4). FID takes `pytorch-fid`'s Inception
file (its `fc.*` logits layer and `num_batches_tracked` counters are not used). VGG19 (BKS-generic's
perceptual loss) takes torchvision's ImageNet trunk up to relu5_1 (`features.0` .. `features.28`). Files are read by the same
restricted reader as the UNet checkpoints (`torch_reader`): data only, every tensor checked against its
bytes, cost bounded by the file's size.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Dict

import jax
import numpy as np

from checkpoints_convert import cli
from checkpoints_convert.mapping import convert_mapped
from checkpoints_convert.torch_reader import CheckpointError, load_state_dict
from dps_jax.models import inception, lpips_net, vgg19

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _paths(shapes):
    return [(tuple(p.key for p in path), leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]]


def _conv_torch_shape(names, shape):
    if names[-1] == "kernel":
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    return tuple(shape)


def _conv_to_flax(names, w):
    return w.transpose(2, 3, 1, 0) if names[-1] == "kernel" else w


# ---- LPIPS -------------------------------------------------------------------------------------

def lpips_torch_key(path) -> str:
    """("conv3", "kernel") -> "features.3.weight" (torchvision trunk); ("lin2",) -> "lin2.model.1.weight"."""
    if path[0].startswith("lin"):
        return f"{path[0]}.model.1.weight"
    return f"features.{path[0][4:]}.{'weight' if path[1] == 'kernel' else 'bias'}"


def lpips_torch_shapes(config: lpips_net.LPIPSConfig) -> Dict[str, tuple]:
    """Every key of the trunk file and the heads file of `config`'s LPIPS, with its torch shape."""
    out = {}
    for names, shape in _paths(lpips_net.param_shapes(config)):
        out[lpips_torch_key(names)] = (1, shape[0], 1, 1) if names[0].startswith("lin") else \
            _conv_torch_shape(names, shape)
    return out


def convert_lpips(trunk: Dict[str, np.ndarray], heads: Dict[str, np.ndarray], config: lpips_net.LPIPSConfig,
                  dtype=np.float32, allow_nonfinite: bool = False):
    """The Flax params of `config`'s LPIPS from the trunk's and the heads' state_dicts (heads must be >= 0)."""
    trunk = {k: v for k, v in trunk.items() if not k.startswith("classifier.")}
    clash = sorted(set(trunk) & set(heads))
    if clash:
        raise CheckpointError(f"the trunk and the heads file both hold {clash[0]!r}: pass the heads file second")
    expected = {lpips_torch_key(names): (names, shape) for names, shape in _paths(lpips_net.param_shapes(config))}
    shapes = lpips_torch_shapes(config)
    params = convert_mapped({**trunk, **heads}, expected, lambda key, names, got: shapes[key],
                            lambda key, names, w: w.reshape(-1) if names[0].startswith("lin") else _conv_to_flax(names, w),
                            dtype, consume=True, allow_nonfinite=allow_nonfinite)
    # The v0.1 heads are non-negative (the distance is a weighted sum of squares).
    for l in range(len(config.channels)):
        w = params[f"lin{l}"]
        if np.min(w) < 0:
            raise CheckpointError(f"lin{l} has negative weights (min {np.min(w):.3g}): not the lpips package's "
                                  "v0.1 heads")
    return params


# ---- FID Inception -----------------------------------------------------------------------------

def inception_torch_key(path) -> str:
    """("Mixed_5b", "branch1x1", "bn", "mean") -> "Mixed_5b.branch1x1.bn.running_mean"."""
    *modules, leaf = path
    return ".".join(modules) + "." + ("weight" if leaf == "kernel" else _BN[leaf] if modules[-1] == "bn" else leaf)


def inception_torch_shapes() -> Dict[str, tuple]:
    return {inception_torch_key(n): _conv_torch_shape(n, s) for n, s in _paths(inception.param_shapes())}


def _unused_inception_key(k: str) -> bool:
    return k.startswith(("fc.", "AuxLogits.")) or k.endswith(".num_batches_tracked")


def convert_inception(state: Dict[str, np.ndarray], dtype=np.float32, allow_nonfinite: bool = False):
    """The Flax params of the FID Inception from pytorch-fid's state_dict."""
    state = {k: v for k, v in state.items() if not _unused_inception_key(k)}
    expected = {inception_torch_key(n): (n, s) for n, s in _paths(inception.param_shapes())}
    shapes = {k: _conv_torch_shape(n, s) for k, (n, s) in expected.items()}
    params = convert_mapped(state, expected, lambda key, names, got: shapes[key],
                            lambda key, names, w: _conv_to_flax(names, w), dtype, consume=True,
                            allow_nonfinite=allow_nonfinite)
    bad = [k for k, (n, _) in expected.items() if n[-1] == "var" and np.min(_leaf(params, n)) < 0]
    if bad:
        raise CheckpointError(f"{len(bad)} batch-norm running variances are negative, first {bad[0]}: "
                              "not an Inception checkpoint")
    return params


def _leaf(tree, names):
    for n in names:
        tree = tree[n]
    return tree


# ---- VGG19 (BKS-generic's perceptual loss) -----------------------------------------------------

def vgg19_torch_key(path) -> str:
    """("conv28", "kernel") -> "features.28.weight"."""
    return f"features.{path[0][4:]}.{'weight' if path[1] == 'kernel' else 'bias'}"


def _unused_vgg19_key(k: str) -> bool:
    """torchvision's classifier and the trunk past relu5_1 (convolutions 30, 32, 34)."""
    return k.startswith("classifier.") or (k.startswith("features.") and k.split(".")[1].isdigit()
                                           and int(k.split(".")[1]) > vgg19.BLOCKS[-1][-1][0])


def convert_vgg19(state: Dict[str, np.ndarray], config: vgg19.VGG19Config = vgg19.VGG19Config(), dtype=np.float32,
                  allow_nonfinite: bool = False):
    """The params of `vgg19.features` from torchvision's VGG19 state_dict."""
    state = {k: v for k, v in state.items() if not _unused_vgg19_key(k)}
    expected = {vgg19_torch_key(n): (n, s) for n, s in _paths(vgg19.param_shapes(config))}
    shapes = {k: _conv_torch_shape(n, s) for k, (n, s) in expected.items()}
    return convert_mapped(state, expected, lambda key, names, got: shapes[key],
                          lambda key, names, w: _conv_to_flax(names, w), dtype, consume=True,
                          allow_nonfinite=allow_nonfinite)


# ---- command line ------------------------------------------------------------------------------

def convert_lpips_files(trunk_path: str, heads_path: str, dst: str, net: str = "alex", dtype="float32",
                        allow_nonfinite: bool = False) -> None:
    from dps_jax.models import checkpoint

    config = lpips_net.LPIPSConfig(net=net)
    _refuse_overwrite(dst, trunk_path, heads_path)
    params = convert_lpips(load_state_dict(trunk_path), load_state_dict(heads_path), config, np.dtype(dtype),
                           allow_nonfinite)
    checkpoint.save_checkpoint(dst, params, config, extra={"source": [str(trunk_path), str(heads_path)]},
                               fmt=lpips_net.FORMAT)


def convert_inception_file(src: str, dst: str, dtype="float32", allow_nonfinite: bool = False) -> None:
    from dps_jax.models import checkpoint

    _refuse_overwrite(dst, src)
    params = convert_inception(load_state_dict(src), np.dtype(dtype), allow_nonfinite)
    checkpoint.save_checkpoint(dst, params, inception.InceptionConfig(), extra={"source": str(src)},
                               fmt=inception.FORMAT)


def convert_vgg19_file(src: str, dst: str, dtype="float32", allow_nonfinite: bool = False) -> None:
    from dps_jax.models import checkpoint

    _refuse_overwrite(dst, src)
    params = convert_vgg19(load_state_dict(src), vgg19.VGG19Config(), np.dtype(dtype), allow_nonfinite)
    checkpoint.save_checkpoint(dst, params, vgg19.VGG19Config(), extra={"source": str(src)}, fmt=vgg19.FORMAT)


def _refuse_overwrite(dst, *sources):
    from checkpoints_convert import _same_file

    for s in sources:
        if _same_file(s, dst):
            raise CheckpointError(f"the output {dst} is the input {s}; choose another output path")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m checkpoints_convert.metrics",
                                 description="Import the LPIPS, FID or VGG19 feature networks from their PyTorch files "
                                             "(no torch needed).")
    sub = ap.add_subparsers(dest="metric", required=True)
    lp = sub.add_parser("lpips", help="torchvision trunk + lpips v0.1 heads -> one dps_jax file")
    lp.add_argument("trunk", help="torchvision weights: alexnet-owt-7be5be79.pth or vgg16-397923af.pth")
    lp.add_argument("heads", help="the lpips package's heads: lpips/weights/v0.1/alex.pth or vgg.pth")
    lp.add_argument("dst", help="the dps_jax file to write (.msgpack)")
    lp.add_argument("--net", default="alex", choices=sorted(lpips_net.TRUNKS))
    fid = sub.add_parser("fid", help="pytorch-fid's Inception (pt_inception-2015-12-05-6726825d.pth)")
    fid.add_argument("src")
    fid.add_argument("dst", help="the dps_jax file to write (.msgpack)")
    vgg = sub.add_parser("vgg19", help="torchvision's VGG19 (vgg19-dcbb9e9d.pth), BKS-generic's perceptual loss")
    vgg.add_argument("src")
    vgg.add_argument("dst", help="the dps_jax file to write (.msgpack)")
    for p in (lp, fid, vgg):
        cli.add_weight_options(p)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.metric == "lpips":
            convert_lpips_files(args.trunk, args.heads, args.dst, args.net, args.dtype, args.allow_nonfinite)
        elif args.metric == "vgg19":
            convert_vgg19_file(args.src, args.dst, args.dtype, args.allow_nonfinite)
        else:
            convert_inception_file(args.src, args.dst, args.dtype, args.allow_nonfinite)
    except (CheckpointError, OSError, ValueError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
