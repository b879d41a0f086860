"""Speed of the paper's metrics: LPIPS (AlexNet, VGG16) of image pairs and FID Inception features, in dps_jax
and, with --reference, in the `lpips` and `pytorch-fid` packages on the same weights, in one run.

    python -m benchmarks.metric_speed --num 1000 --size 256 --out benchmarks/metric_speed.json
    # side by side (an environment with torch, torchvision, lpips, pytorch-fid and dps_jax installed):
    python -m benchmarks.metric_speed --num 1000 --size 256 --reference
    python -m benchmarks.metric_speed --num 100 --nets vgg --skip_fid --reference     # VGG: 10 x cheaper run

Each run is appended to the output file.

The weights are random (the fixture rule of `checkpoints_convert.mapping.random_state_dict`): the cost of a
network does not depend on its values. Each measurement runs `num` images (pairs for LPIPS) of size x size
x 3 in batches of `batch` after one warm-up batch (compilation excluded and reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


from checkpoints_convert import metrics as convert_metrics
from checkpoints_convert.mapping import random_state_dict


def images(num, size, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (num, size, size, 3)).astype(np.float32)


def time_jax(fn, xs, batch):
    """(compile + first batch seconds, seconds for all of xs after it) of fn over batches."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*(x[:batch] for x in xs)))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(xs[0]), batch):
        jax.block_until_ready(fn(*(x[i:i + batch] for x in xs)))
    return first, time.perf_counter() - t0


def dps_jax_rows(args):
    import jax

    from dps_jax.models import inception, lpips_net

    rows = []
    x, y = images(args.num, args.size, 0), images(args.num, args.size, 1)
    for net in args.nets:
        config = lpips_net.LPIPSConfig(net)
        shapes = convert_metrics.lpips_torch_shapes(config)
        trunk = random_state_dict({k: v for k, v in shapes.items() if k.startswith("features.")}, 0)
        heads = {k: np.ones(v, np.float32) for k, v in shapes.items() if k.startswith("lin")}
        params = jax.device_put(convert_metrics.convert_lpips(trunk, heads, config))
        module = lpips_net.LPIPS(config)
        fn = jax.jit(lambda a, b, p=params, m=module: m.apply({"params": p}, a, b))
        first, total = time_jax(fn, (x, y), args.batch)
        rows.append({"impl": "dps_jax", "metric": f"lpips_{net}", "num": args.num, "size": args.size,
                     "compile_and_first_batch_s": first, "seconds": total, "per_image_ms": 1e3 * total / args.num})
        print(rows[-1], flush=True)
    if args.skip_fid:
        return rows
    params = jax.device_put(convert_metrics.convert_inception(random_state_dict(convert_metrics.inception_torch_shapes(), 0)))
    module = inception.FIDInception()
    fn = jax.jit(lambda a, p=params: module.apply({"params": p}, a))
    first, total = time_jax(fn, (x,), args.batch)
    rows.append({"impl": "dps_jax", "metric": "fid_inception_features", "num": args.num, "size": args.size,
                 "compile_and_first_batch_s": first, "seconds": total, "per_image_ms": 1e3 * total / args.num})
    print(rows[-1], flush=True)
    return rows


def reference_rows(args):
    import lpips
    import pytorch_fid.inception as fid_inception
    import torch

    torch.set_grad_enabled(False)
    rows = []
    x, y = (torch.from_numpy(images(args.num, args.size, s).transpose(0, 3, 1, 2).copy()) for s in (0, 1))

    def run(fn, xs):
        t0 = time.perf_counter()
        fn(*(a[:args.batch] for a in xs))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(0, args.num, args.batch):
            fn(*(a[i:i + args.batch] for a in xs))
        return first, time.perf_counter() - t0

    for net in args.nets:
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
        first, total = run(model, (x, y))
        rows.append({"impl": f"lpips (torch {torch.__version__}, {torch.get_num_threads()} threads)",
                     "metric": f"lpips_{net}", "num": args.num, "size": args.size,
                     "compile_and_first_batch_s": first, "seconds": total, "per_image_ms": 1e3 * total / args.num})
        print(rows[-1], flush=True)
    if args.skip_fid:
        return rows
    fid_inception.load_state_dict_from_url = lambda *a, **k: {
        k: v for k, v in fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict().items()}
    model = fid_inception.InceptionV3([3]).eval()
    first, total = run(lambda a: model((a + 1) / 2), (x,))
    rows.append({"impl": f"pytorch-fid (torch {torch.__version__}, {torch.get_num_threads()} threads)",
                 "metric": "fid_inception_features", "num": args.num, "size": args.size,
                 "compile_and_first_batch_s": first, "seconds": total, "per_image_ms": 1e3 * total / args.num})
    print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--nets", default="alex,vgg")
    ap.add_argument("--skip_fid", action="store_true", help="LPIPS only")
    ap.add_argument("--reference", action="store_true", help="also time the lpips and pytorch-fid packages")
    ap.add_argument("--out", default="benchmarks/metric_speed.json")
    args = ap.parse_args()
    args.nets = [n for n in args.nets.split(",") if n]
    import jax

    rows = dps_jax_rows(args)
    if args.reference:
        rows += reference_rows(args)
    result = {"date": time.strftime("%Y-%m-%d"), "device": str(jax.devices()[0].device_kind),
              "cpu_count": os.cpu_count(), "rows": rows}
    runs = json.load(open(args.out)) if os.path.exists(args.out) else []
    runs.append(result)
    with open(args.out, "w") as f:
        json.dump(runs, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
