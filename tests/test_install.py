"""Installed, not editable: the wheel of this repository runs a task from another folder, twice, the second
time from the compilation cache the first wrote.

The wheel is built offline (`--no-build-isolation`, the test extra's setuptools and wheel) from a copy of the
sources and unpacked as pip installs a pure-Python wheel; a fresh interpreter in an empty folder imports it
from there (PYTHONPATH comes before the editable install of the venv).
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv: the site folder, the output folder, the compilation cache. The main job's command line runs in this
# interpreter (main.cli, what `python -m dps_jax.main` calls) after the API and evaluate's help.
SCRIPT = textwrap.dedent('''
    import io, sys
    import dps_jax
    from dps_jax import api, config_base, evaluate, main
    site, out, cache = sys.argv[1:]
    assert dps_jax.__file__.startswith(site), dps_jax.__file__
    assert config_base.CONFIG_DIR.startswith(site), config_base.CONFIG_DIR
    assert api.task_config("super_resolution").solver.name == "ddrm"       # the API finds the task configs
    text = io.StringIO()
    assert evaluate.cli(["dps_jax.evaluate", "--help"], out=text) == 0 and "configs/eval/paper_table.py" in text.getvalue()
    status = main.cli(["dps_jax.main", "--config=configs/super_resolution.py", "--config.sampler.steps=2",
                       "--config.num_samples=2", f"--config.output.root={out}", f"--config.compilation_cache={cache}"])
    sys.exit(status)
''')


def test_wheel_runs_a_task_from_another_folder_and_reuses_its_compilation_cache(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    for name in ("dps_jax", "configs", "checkpoints_convert"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.iterdir()
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
        names = z.namelist()
    assert "dps_jax/configs/phase_retrieval.py" in names and "dps_jax/assets/fmnist32.msgpack" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    cache = tmp_path / "cache"
    runs = []
    for i in range(2):
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(site), f"out{i}", str(cache)], cwd=elsewhere,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert os.listdir(cache)
        assert "step 2/2" in proc.stderr and "nan" not in proc.stderr                 # the progress line
        (run_dir,) = glob.glob(str(elsewhere / f"out{i}" / "super_resolution" / "*"))
        m = json.load(open(os.path.join(run_dir, "metrics.json")))
        assert m["solver"] == "ddrm" and m["steps"] == 2 and m["num_samples"] == 2
        (d,) = glob.glob(os.path.join(run_dir, "*", "samples.npz"))
        runs.append((np.load(d)["samples"], m))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[1][1]["compile_seconds"] < runs[0][1]["compile_seconds"]
