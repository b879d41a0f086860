"""Peak memory of `python -m checkpoints_convert` against the size of the checkpoint it converts.

    python -m benchmarks.convert_memory --model ffhq256      # writes a random-weight FFHQ-size .pt (~0.37 GB)

Writes a torch-format checkpoint of the preset's shapes with random float32 weights (no torch needed:
tests/torch_files.py lays out the zip the way torch.save does), converts it in a child process and
reports the child's peak resident memory, minus that of converting a tiny checkpoint (the interpreter,
jax and numpy), as a multiple of the file's size. The random file is written by another child, so this
process stays small (a forked child's peak counts the parent's pages it starts with).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

from checkpoints_convert import torch_writer as torch_files
from checkpoints_convert.adm import _torch_shape, torch_key
from dps_jax.models.unet import param_shapes, preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_random(path: str, model: str) -> int:
    """A torch checkpoint of `model`'s keys and shapes with random float32 weights; returns its size."""
    rng = np.random.default_rng(0)
    arrays = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(preset(model)))[0]:
        names = tuple(k.key for k in p)
        key = torch_key(names)
        ndim = 3 if (".qkv." in key or ".proj_out." in key) and names[-1] == "kernel" else len(leaf.shape)
        arrays[key] = rng.standard_normal(_torch_shape(names[-1], leaf.shape, ndim), np.float32)
    torch_files.write_arrays(path, arrays)
    return os.path.getsize(path)


def peak_rss(args) -> int:
    """Peak resident bytes of one converter child process (os.wait4 reports that child's own rusage;
    Linux gives ru_maxrss in KiB)."""
    proc = subprocess.Popen([sys.executable, "-m", "checkpoints_convert", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(proc.stderr.read().decode())
    return usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ffhq256")
    ap.add_argument("--write", help=argparse.SUPPRESS)        # the child that writes the random file
    args = ap.parse_args()
    if args.write:
        write_random(args.write, args.model)
        return
    with tempfile.TemporaryDirectory() as tmp:
        small = os.path.join(ROOT, "tests", "fixtures", "adm_variants.pt")
        cfg = str(np.load(os.path.join(ROOT, "tests", "fixtures", "adm_variants.npz"))["config"])
        base = peak_rss([small, os.path.join(tmp, "small.msgpack"), "--config", cfg])
        big = os.path.join(tmp, "big.pt")
        subprocess.run([sys.executable, "-m", "benchmarks.convert_memory", "--model", args.model, "--write", big],
                       check=True, cwd=ROOT)
        size = os.path.getsize(big)
        peak = peak_rss([big, os.path.join(tmp, "big.msgpack"), "--model", args.model])
    print(json.dumps({"model": args.model, "file_bytes": size, "baseline_rss_bytes": base, "peak_rss_bytes": peak,
                      "peak_over_baseline_per_file_byte": round((peak - base) / size, 3)}))


if __name__ == "__main__":
    main()
