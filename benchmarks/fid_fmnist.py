"""FID-FMNIST and KID-FMNIST of the shipped prior's unconditional samples, against Fashion-MNIST's test split.

    python -m benchmarks.fid_fmnist --num_samples 2000 --steps 50 --out benchmarks/fid_fmnist.json
    python -m benchmarks.fid_fmnist --num_samples 2000 --generator dps_jax/assets/stylegan2_fmnist32.msgpack

`--generator`: the samples of a StyleGAN2 generator instead (fresh latents and noise maps, no truncation; the
shipped one is BKS-styleGAN2's prior), scored the same way.

Draws `num_samples` unconditional samples (`--sampler` DDPM, the default of the shipped configs, or DDIM
with eta 0; `steps` respaced steps: the shipped configs use 50, the paper 1000) in batches of `batch`, keeping them in `<out>.<steps>.npz` so an interrupted run resumes. The
features are the shipped classifier's (`metrics.fid.load_features("")`). Prints and records, with the
floors a perfect generator would reach at the same sample count: the FID / KID of `num_samples` training
images against the same test images, and of the test images against themselves split in two.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from dps_jax import api, data, evaluate, io, operators
from dps_jax.metrics import fid


def draw(prior, steps, sampler, num_samples, batch, store, seed):
    """Unconditional samples (num_samples, 32, 32, 1), resumed from and saved to `store` batch by batch."""
    have = np.load(store)["samples"] if os.path.exists(store) else np.zeros((0, 32, 32, 1), np.float32)
    op = operators.build("identity", (32, 32, 1))
    seconds = 0.0
    while len(have) < num_samples:
        t0 = time.perf_counter()
        out = api.sample(prior, op, np.zeros((32, 32, 1), np.float32), solver="vanilla",
                         options={"steps": steps, "sampler": sampler}, num_samples=batch, seed=seed + len(have))
        seconds += time.perf_counter() - t0
        have = np.concatenate([have, out["samples"]])
        with io.atomic_writer(store) as f:
            np.savez(f, samples=have)
        print(f"{len(have)}/{num_samples} samples, {seconds / (len(have)):.3f} s per sample this run", flush=True)
    return have[:num_samples]


def draw_generator(path, num_samples, seed):
    """num_samples images (num_samples, S, S, C) of the StyleGAN2 generator in `path`: z and noise maps N(0, I)."""
    import jax

    from dps_jax.models import stylegan2

    params, config = stylegan2.load(path)

    @jax.jit
    def batch(key):
        kz, kn = jax.random.split(key)
        noises = [jax.random.normal(jax.random.fold_in(kn, i), (100,) + s)
                  for i, s in enumerate(stylegan2.noise_shapes(config))]
        return stylegan2.generate(params, config, jax.random.normal(kz, (100, config.style_dim)), noises)

    out = [np.asarray(batch(jax.random.PRNGKey(seed + i))) for i in range(-(-num_samples // 100))]
    return np.clip(np.concatenate(out)[:num_samples], -1, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_samples", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"], help="ddim: eta 0")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/fid_fmnist.json")
    ap.add_argument("--generator", default="", help="a StyleGAN2 generator file: its samples instead of the prior's")
    args = ap.parse_args()

    if args.generator:
        samples, key = draw_generator(args.generator, args.num_samples, args.seed), "stylegan2"
    else:
        prior = api.load_prior()
        tag = f"{args.sampler}{args.steps}" if args.sampler != "ddpm" else f"{args.steps}"
        samples = draw(prior, args.steps, args.sampler, args.num_samples, args.batch, f"{args.out}.{tag}.npz",
                       args.seed)
        key = f"{args.sampler}{args.steps}"
    net = fid.load_features("")
    test = data.fashion_mnist("test")
    train = data.fashion_mnist("train")[np.random.default_rng(args.seed).choice(60000, args.num_samples, replace=False)]
    f_test, f_samples, f_train = net(test), net(samples), net(train)
    half = len(test) // 2
    source = ({"generator": os.path.basename(args.generator), "generator_sha256": evaluate.file_hash(args.generator)}
              if args.generator else {"sampler": args.sampler, "steps": args.steps})
    row = {**source, "num_samples": args.num_samples, "test_images": len(test),
           "fid_samples_vs_test": fid.fid(f_samples, f_test), "kid_samples_vs_test": fid.kid(f_samples, f_test),
           "fid_train_vs_test": fid.fid(f_train, f_test), "kid_train_vs_test": fid.kid(f_train, f_test),
           "fid_test_half_vs_half": fid.fid(f_test[:half], f_test[half:]),
           "date": time.strftime("%Y-%m-%d")}
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    results[f"{key}_n{args.num_samples}"] = row
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
