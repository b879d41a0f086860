"""What the progress line costs: the runner's scan in one compiled call against the same steps split into
several calls with a progress callback between them, timed in turns in one run.

    python -m benchmarks.progress_overhead --repeats 5 --out benchmarks/progress_overhead.json

Two workloads:
  shipped   the main job's default: the shipped 32 x 32 prior, DPS, 4 samples, 50 steps; bare = 50 steps in
            one call, against the main job's automatic split (auto_steps_per_call(50) = 10: 5 calls).
  ffhq256   the FFHQ 256 DPS step (random weights, as benchmarks/step_speed.py), one sample, K steps
            (default 4); bare = K steps in one call, against K / 2 steps per call and 1 step per call.
For each split: seconds per step (fastest turn) and the median of the per-turn ratios split / bare. From
the splits it also prints the cost of one extra call, c = (T t_split - T t_bare) / (calls - 1), and what
that cost adds to runs of 50, 100 and 1000 steps at the automatic split (auto_steps_per_call: 5, 10 and 20
calls): (calls - 1) c / (T t_bare). --out merges: rows of workloads not run are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks import step_speed

from dps_jax import api, operators, solvers
from dps_jax.solvers.runner import auto_steps_per_call

RUN_LENGTHS = (50, 100, 1000)


def shipped_runners():
    pr = api.load_prior()
    op = operators.build("super_resolution", (32, 32, 1), scale_factor=4)
    problem = solvers.make_problem(op, op(jnp.zeros((32, 32, 1))), (32, 32, 1))
    make = lambda k: solvers.build(pr, (32, 32, 1), options={"scale": 10.0, "steps": 50}, num_samples=4,
                                   steps_per_call=k)
    return [make(50), make(auto_steps_per_call(50))], problem, 50


def ffhq_runners(num_steps):
    _, _, _, (pr, problem, coefs, options), _, _ = step_speed.jax_step_fn("ffhq256", 1)
    sub = jax.tree_util.tree_map(lambda a: a[step_speed.STEP_INDEX:step_speed.STEP_INDEX + num_steps][::-1], coefs)
    make = lambda k: solvers.Runner(solvers.get("ps"), options, pr, (256, 256, 3), solvers.Grid(sub, num_steps),
                                    steps_per_call=k)
    splits = sorted({num_steps, max(1, num_steps // 2), 1}, reverse=True)
    return [make(k) for k in splits], problem, num_steps


def measure(name, runners, problem, num_steps, repeats):
    key = jax.random.PRNGKey(0)
    progress = lambda done, total, scalars: None
    calls = [num_steps // r.steps_per_call for r in runners]
    for r, c in zip(runners, calls):                          # compile and warm up
        r(problem, key, progress if c > 1 else None)
    times = [[] for _ in runners]
    for _ in range(repeats):
        for r, c, t in zip(runners, calls, times):
            t0 = time.perf_counter()
            r(problem, key, progress if c > 1 else None)
            t.append((time.perf_counter() - t0) / num_steps)
    bare = times[0]
    row = {"workload": name, "steps": num_steps, "bare_min_s_per_step": min(bare), "splits": []}
    print(f"{name}: bare ({num_steps} steps, 1 call) {min(bare) * 1e3:.2f} ms/step", flush=True)
    for r, c, t in zip(runners[1:], calls[1:], times[1:]):
        ratio = statistics.median(p / b for p, b in zip(t, bare))
        per_call = statistics.median((p - b) * num_steps / (c - 1) for p, b in zip(t, bare))
        at_auto = {t: (t // auto_steps_per_call(t) - 1) * per_call / (t * min(bare)) for t in RUN_LENGTHS}
        row["splits"].append({"steps_per_call": r.steps_per_call, "calls": c, "min_s_per_step": min(t),
                              "median_over_bare": ratio, "extra_call_s": per_call,
                              "overhead_at_auto_split": at_auto, "times": t})
        print(f"  {r.steps_per_call} steps/call ({c} calls, progress between them): {min(t) * 1e3:.2f} ms/step, "
              f"median ratio {ratio:.3f}; one extra call {per_call * 1e3:.1f} ms -> at the automatic split "
              + ", ".join(f"{t} steps {100 * v:+.2f}%" for t, v in at_auto.items()), flush=True)
    row["bare_times"] = bare
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ffhq_steps", type=int, default=4)
    ap.add_argument("--workloads", default="shipped,ffhq256")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = []
    for name in args.workloads.split(","):
        made = shipped_runners() if name == "shipped" else ffhq_runners(args.ffhq_steps)
        rows.append(measure(name, *made, args.repeats))
    stamp = {"date": time.strftime("%Y-%m-%d"), "machine": step_speed.machine(), "jax": jax.__version__,
             "repeats": args.repeats}
    rows = [dict(stamp, **r) for r in rows]
    if args.out and os.path.exists(args.out):
        with open(args.out) as fh:
            kept = [r for r in json.load(fh).get("rows", []) if r["workload"] not in {r["workload"] for r in rows}]
        rows = kept + rows
    result = {"rows": rows}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
