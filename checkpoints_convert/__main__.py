"""CLI: python -m checkpoints_convert IN.pt OUT.msgpack (--model PRESET | --config CONFIG.json |
--kernel-config CONFIG.json)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    from checkpoints_convert import cli, convert
    from dps_jax.models import kernel_wizard
    from dps_jax.models.unet import PRESETS, UNetConfig, preset

    ap = argparse.ArgumentParser(prog="python -m checkpoints_convert",
                                 description="Convert a guided-diffusion PyTorch checkpoint (or the KernelWizard of "
                                             "nonlinear deblurring) for dps_jax (no torch needed).")
    ap.add_argument("src", help="the torch checkpoint (.pt, zip or legacy format)")
    ap.add_argument("dst", help="the dps_jax checkpoint to write (.msgpack)")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", choices=sorted(PRESETS) + sorted(kernel_wizard.PRESETS),
                       help="a published model's settings (gopro_wvae: the KernelWizard GOPRO_wVAE.pth)")
    group.add_argument("--config", help="a JSON file (or JSON text) of UNetModel arguments")
    group.add_argument("--kernel-config", help="a JSON file (or JSON text) of KernelWizardConfig fields")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="storage dtype of the written params (default float32)")
    ap.add_argument("--key", help="the entry holding the state_dict, in a checkpoint that holds several "
                                  "(for example ema or model)")
    ap.add_argument("--strip-prefix", help="a prefix to remove from every key (module. is removed by itself)")
    ap.add_argument("--allow-nonfinite", action="store_true", help="convert weights that hold NaN or inf")
    ap.add_argument("--drop-unexpected", action="append", default=[], metavar="PATTERN",
                    help="leave out the checkpoint's keys the model does not take that match this glob pattern "
                         "(repeatable; e.g. 'sqrt_*' for deepinv's DiffUNet); one that matches none is an error")
    args = ap.parse_args(argv)

    try:
        if args.model:
            config = kernel_wizard.PRESETS.get(args.model) or preset(args.model)
        else:
            text = args.config or args.kernel_config
            if not text.lstrip().startswith("{"):
                with open(text) as f:
                    text = f.read()
            config = (UNetConfig if args.config else kernel_wizard.KernelWizardConfig).from_dict(json.loads(text))
    except (ValueError, TypeError, OSError) as e:     # a bad --config: JSON, keys or values
        return cli.fail(f"--{'config' if args.config else 'kernel-config'}: {e}")
    return cli.run(lambda: convert(args.src, args.dst, config, dtype=args.dtype, key=args.key,
                                   strip_prefix=args.strip_prefix, allow_nonfinite=args.allow_nonfinite,
                                   drop_unexpected=args.drop_unexpected),
                   lambda _: f"wrote {args.dst}")

if __name__ == "__main__":
    sys.exit(main())
