"""Wall time of each task's default main job, from a fresh process, compile included.

    python -m benchmarks.main_job_time [--runs cold]

Runs `python -m dps_jax.main --config=configs/<task>.py` for every task with its defaults (the shipped
prior, one test image, 4 samples, the task's default solver and steps) and prints the wall time, the
compile time and the time per step that the run itself recorded in metrics.json. Each task runs twice
against a fresh compilation cache: the first run compiles (a first run on a new machine), the second
loads the compiled sampler from the cache (every later run with the same shapes); `--runs cold` only
the first.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from dps_jax.config_base import TASKS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="cold,warm", choices=("cold,warm", "cold"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in TASKS:
            cache = os.path.join(tmp, "cache", task)
            for cached in args.runs.split(","):
                out = os.path.join(tmp, cached)
                t0 = time.time()
                proc = subprocess.run([sys.executable, "-m", "dps_jax.main", f"--config=configs/{task}.py",
                                       f"--config.output.root={out}", f"--config.compilation_cache={cache}"],
                                      cwd=REPO, capture_output=True, text=True)
                wall = time.time() - t0
                if proc.returncode:
                    sys.exit(f"{task} failed: {proc.stderr[-1000:]}")
                (run_dir,) = glob.glob(os.path.join(out, task, "*"))
                m = json.load(open(os.path.join(run_dir, "metrics.json")))
                rows.append((task, cached, m["solver"], wall, m["compile_seconds"], m["seconds_per_step"],
                             m["steps"], m["num_samples"], m["mean_psnr_of_mean"]))
    print(f"{'task':<20}{'cache':>6}{'solver':>8}{'wall s':>8}{'compile s':>11}{'ms/step':>9}{'steps':>7}"
          f"{'samples':>9}{'PSNR mean':>11}")
    for task, cached, solver, wall, comp, sps, steps, n, psnr in rows:
        print(f"{task:<20}{cached:>6}{solver:>8}{wall:8.1f}{comp:11.1f}{sps * 1e3:9.0f}{steps:7d}{n:9d}"
              f"{psnr:11.2f}")


if __name__ == "__main__":
    main()
