"""Fuzz the torch checkpoint reader: seeded corruptions of a valid file must be read or refused with a
CheckpointError, never escape as another exception, and stay within the reader's bounds.

    python -m benchmarks.fuzz_reader --cases 10000                 # the fixtures, zip and legacy
    python -m benchmarks.fuzz_reader --file ffhq_10m.pt --cases 200

Mutations: 1-4 random byte edits; a truncation; a run of bytes zeroed or set to 0xff; for zip files, two
members' contents swapped and a member's recorded size changed. Each case is written to a temporary file
and read in this process; its time and peak traced memory are recorded against the file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import tracemalloc

import numpy as np

from checkpoints_convert import CheckpointError, load_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIXTURES = [os.path.join(ROOT, "tests", "fixtures", n) for n in ("adm_variants_fp16.pt", "adm_variants_legacy.pt")]


def _members(data: bytes):
    """(start, end) of each stored zip member's bytes, from the local headers."""
    out, at = [], 0
    while (at := data.find(b"PK\x03\x04", at)) >= 0:
        if at + 30 > len(data):
            break
        size = int.from_bytes(data[at + 18:at + 22], "little")
        start = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")
        out.append((at, start, min(start + size, len(data))))
        at += 4
    return out


def _where(n: int, rng: np.random.Generator) -> int:
    """A position: anywhere, or (half the time) in the first 32 KiB or last 8 KiB, where a checkpoint keeps
    its pickle and zip directory; edits of tensor bytes only change values."""
    if rng.integers(2):
        return int(rng.integers(n))
    return int(rng.integers(min(n, 32768))) if rng.integers(2) else int(n - 1 - rng.integers(min(n, 8192)))


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One seeded corruption of `data`."""
    b = bytearray(data)
    kind = rng.integers(6)
    if kind <= 1:                                          # byte edits (twice as likely)
        for _ in range(rng.integers(1, 5)):
            b[_where(len(b), rng)] = rng.integers(256)
    elif kind == 2:
        del b[_where(len(b), rng):]
    elif kind == 3:
        at = _where(len(b), rng)
        n = int(rng.integers(1, 64))
        b[at:at + n] = bytes([0 if rng.integers(2) else 255]) * len(b[at:at + n])
    elif kind == 4 and data[:2] == b"PK":
        members = [m for m in _members(data) if m[2] > m[1]]
        if len(members) >= 2:
            (_, s1, e1), (_, s2, e2) = [members[k] for k in rng.choice(len(members), 2, replace=False)]
            n = min(e1 - s1, e2 - s2)
            b[s1:s1 + n], b[s2:s2 + n] = data[s2:s2 + n], data[s1:s1 + n]
    elif kind == 5 and data[:2] == b"PK":
        members = _members(data)
        hdr = members[rng.integers(len(members))][0]
        field = hdr + (18 if rng.integers(2) else 22)      # compressed or uncompressed size
        b[field:field + 4] = int(rng.integers(2 ** 32)).to_bytes(4, "little")
    else:
        b[_where(len(b), rng)] ^= 1 << int(rng.integers(8))
    return bytes(b)


def try_case(load, case: str, refusal, counts: dict, memory_key: str, memory_base: int, trace_memory: bool) -> None:
    """Load the file `case` with `load`, counting it in `counts` as read, refused (an exception of type
    `refusal`: the longest refusal line kept) or escaped (any other exception, a few kept as examples), with
    the slowest case's seconds and, under `memory_key`, the peak traced memory beyond `memory_base` bytes."""
    if trace_memory:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        load(case)
        counts["read"] += 1
    except refusal as e:
        counts["refused"] += 1
        counts["max_error_chars"] = max(counts.get("max_error_chars", 0), len(str(e)))
    except Exception:                              # an escape: what the reader must never do
        counts["escaped"] += 1
        if len(counts["examples"]) < 5:
            counts["examples"].append(traceback.format_exc(limit=3))
    counts["max_seconds"] = max(counts["max_seconds"], time.perf_counter() - start)
    if trace_memory:
        counts[memory_key] = max(counts[memory_key], tracemalloc.get_traced_memory()[1] - memory_base)
        tracemalloc.stop()


def fuzz(path: str, cases: int, seed: int = 0, trace_memory: bool = True) -> dict:
    """Counts of cases read, refused and escaped; the slowest case's seconds and the largest peak of traced
    memory beyond twice the case's size (the reader's bound is 2 S + a constant)."""
    data = open(path, "rb").read()
    rng = np.random.default_rng(seed)
    counts = {"file": os.path.basename(path), "cases": cases, "read": 0, "refused": 0, "escaped": 0,
              "examples": [], "max_seconds": 0.0, "max_memory_over_2S": 0}
    with tempfile.TemporaryDirectory() as tmp:
        case = os.path.join(tmp, "case.pt")
        for _ in range(cases):
            bad = mutate(data, rng)
            with open(case, "wb") as f:
                f.write(bad)
            try_case(load_state_dict, case, CheckpointError, counts, "max_memory_over_2S", 2 * len(bad), trace_memory)
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", action="append", help="a valid checkpoint to corrupt (default: the test fixtures)")
    ap.add_argument("--cases", type=int, default=10000, help="cases per file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = [fuzz(p, args.cases, args.seed) for p in args.file or FIXTURES]
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "examples"}))
        for e in r["examples"]:
            print(e)
    return 1 if any(r["escaped"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
