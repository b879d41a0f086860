"""Fuzz the msgpack weight-file reader: seeded corruptions of the shipped weight files must be read or refused
with one short line (a WeightFileError: CheckpointFormatError, DenoiserFormatError), never escape as another
exception, and stay within the reader's bounds.

    python -m benchmarks.fuzz_weights --cases 2000            # each shipped msgpack file
    python -m benchmarks.fuzz_weights --cases 200 --file ffhq256.msgpack

Mutations: byte edits, truncations, runs of bytes zeroed or set to 0xff (`benchmarks.fuzz_reader.mutate`),
and structural edits of the decoded tree: a key dropped, renamed or made an integer; a leaf made NaN, a
bool, a complex number, a list, a timestamp or an array of another shape or dtype; a map nested deeply; a
string made long. Each case is written to a temporary file and loaded by the file's own loader; its time,
peak traced memory beyond the case's size, and the error line's length are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import flax.serialization
import msgpack
import numpy as np

from benchmarks.fuzz_reader import mutate, try_case
from dps_jax.models import classifier, dncnn, kernel_wizard, msgpack_io, stylegan2
from dps_jax.models.checkpoint import SHIPPED_PRIOR, load_checkpoint

ASSETS = os.path.join(os.path.dirname(SHIPPED_PRIOR))
LOADERS = {
    "fmnist32.msgpack": load_checkpoint,
    "fmnist_classifier.msgpack": classifier.load,
    "kernel_wizard_fmnist32.msgpack": kernel_wizard.load,
    "dncnn_fmnist32.msgpack": dncnn.load,
    "stylegan2_fmnist32.msgpack": stylegan2.load,
}


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, prefix + (k,))
    else:
        yield prefix


def structural(data: bytes, rng: np.random.Generator) -> bytes:
    """One seeded edit of the decoded tree, packed again."""
    tree = flax.serialization.msgpack_restore(data)
    paths = list(_leaves(tree))
    path = paths[rng.integers(len(paths))]
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    key, kind = path[-1], int(rng.integers(11))
    leaf = parent.get(key)
    if kind == 0:
        parent.pop(key)
    elif kind == 1:
        parent[key + "_x"] = parent.pop(key)
    elif kind == 2:
        parent[int(rng.integers(100))] = parent.pop(key)
    elif kind == 3 and isinstance(leaf, np.ndarray) and leaf.size:
        a = np.array(leaf, np.float32)
        a.flat[rng.integers(a.size)] = np.nan if rng.integers(2) else np.inf
        parent[key] = a
    elif kind == 4:
        parent[key] = True
    elif kind == 5:
        parent[key] = complex(1.0, 2.0)
    elif kind == 6:
        parent[key] = [1.0, 2.0, 3.0]
    elif kind == 7:
        parent[key] = msgpack.Timestamp(1, 0)
    elif kind == 8 and isinstance(leaf, np.ndarray):
        parent[key] = np.zeros(tuple(d + 1 for d in leaf.shape) or (2,), leaf.dtype)
    elif kind == 9:
        node = {"x": 1}
        for _ in range(int(rng.integers(10, 400))):
            node = {"x": node}
        parent[key] = node
    else:
        parent[key] = "x" * int(rng.integers(1, 2_000_000))
    return msgpack.packb(tree, default=flax.serialization._msgpack_ext_pack, strict_types=False)


def fuzz(name: str, cases: int, seed: int = 0, trace_memory: bool = True) -> dict:
    path = name if os.path.isabs(name) or os.path.exists(name) else os.path.join(ASSETS, name)
    loader = LOADERS.get(os.path.basename(path), load_checkpoint)
    data = open(path, "rb").read()
    rng = np.random.default_rng(seed)
    counts = {"file": os.path.basename(path), "bytes": len(data), "cases": cases, "read": 0, "refused": 0,
              "escaped": 0, "examples": [], "max_seconds": 0.0, "max_memory_over_size": 0, "max_error_chars": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cases):
            # a fresh name per case: a loader that caches by path must not answer from an earlier case
            case = os.path.join(tmp, f"{i:06d}_{os.path.basename(path)}")
            try:
                bad = structural(data, rng) if i % 2 else mutate(data, rng)
            except Exception:                      # an edit msgpack itself cannot pack: a byte edit instead
                bad = mutate(data, rng)
            with open(case, "wb") as f:
                f.write(bad)
            try_case(loader, case, msgpack_io.WeightFileError, counts, "max_memory_over_size", len(bad), trace_memory)
            os.remove(case)
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", action="append", help="a weight file (default: every shipped msgpack file)")
    ap.add_argument("--cases", type=int, default=2000, help="cases per file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    results = [fuzz(p, args.cases, args.seed) for p in args.file or list(LOADERS)]
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "examples"}))
        for e in r["examples"]:
            print(e)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["escaped"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
