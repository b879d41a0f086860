"""CLI: python -m checkpoints_convert IN.pt OUT.msgpack (--model PRESET | --config CONFIG.json)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    from checkpoints_convert import CheckpointError, convert
    from dps_jax.models.unet import PRESETS, UNetConfig, preset

    ap = argparse.ArgumentParser(prog="python -m checkpoints_convert",
                                 description="Convert a guided-diffusion PyTorch checkpoint for dps_jax (no torch needed).")
    ap.add_argument("src", help="the torch checkpoint (.pt, zip or legacy format)")
    ap.add_argument("dst", help="the dps_jax checkpoint to write (.msgpack)")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", choices=sorted(PRESETS), help="a published model's settings")
    group.add_argument("--config", help="a JSON file (or JSON text) of UNetModel arguments")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="storage dtype of the written params (default float32)")
    args = ap.parse_args(argv)
    try:
        if args.model:
            config = preset(args.model)
        else:
            text = args.config
            if not text.lstrip().startswith("{"):
                with open(text) as f:
                    text = f.read()
            config = UNetConfig.from_dict(json.loads(text))
        convert(args.src, args.dst, config, dtype=args.dtype)
    except (CheckpointError, ValueError, OSError) as e:
        # One line: a list of problems becomes "first: a; b; c".
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        print("error: " + (lines[0] + " " + "; ".join(lines[1:]) if len(lines) > 1 else lines[0]), file=sys.stderr)
        return 1
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
