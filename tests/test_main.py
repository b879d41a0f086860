"""The main job end to end on the shipped prior (very short schedules), devices, and bad input."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dps_jax import config_defaults, pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = dict(steps=3, num_samples=2, num_images=1)


def short_config(task, root, **over):
    cfg = config_defaults.task_config(task)
    cfg.sampler.steps, cfg.num_samples, cfg.data.num_images = SHORT["steps"], SHORT["num_samples"], SHORT["num_images"]
    cfg.output.root = str(root)
    cfg.compilation_cache = ""           # tests leave the user's cache alone
    for k, v in over.items():
        node = cfg
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return cfg


def cli(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "dps_jax.main", *args], cwd=REPO, capture_output=True, text=True,
                          env=e, timeout=300)


def short_flags(root):
    return [f"--config.sampler.steps={SHORT['steps']}", f"--config.num_samples={SHORT['num_samples']}",
            f"--config.data.num_images={SHORT['num_images']}", f"--config.output.root={root}",
            "--config.compilation_cache="]


@pytest.mark.parametrize("task", [t for t in config_defaults.TASKS if t != "phase_retrieval"])
def test_task_runs_end_to_end(task, tmp_path):
    run_dir = pipeline.run(short_config(task, tmp_path), stream=open(os.devnull, "w"))
    check_outputs(run_dir, task)


def test_cli_phase_retrieval_end_to_end(tmp_path):
    proc = cli("--config=configs/phase_retrieval.py", *short_flags(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = glob.glob(str(tmp_path / "phase_retrieval" / "*"))
    check_outputs(run_dir, "phase_retrieval")
    assert "step 3/3" in proc.stderr and "distance" in proc.stderr      # the live progress line


def check_outputs(run_dir, task):
    assert not run_dir.endswith((".partial", "-incomplete"))
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert m["task"] == task and m["num_samples"] == 2 and m["steps"] == 3
    assert m["compile_seconds"] > 0 and m["seconds_per_step"] > 0
    (img,) = m["images"]
    assert len(img["samples"]) == 2
    for s in img["samples"]:
        assert np.isfinite([s["psnr"], s["ssim"], s["residual"]]).all()
    assert json.load(open(os.path.join(run_dir, "config.json")))["task"] == task
    d = os.path.join(run_dir, img["image"])
    for f in ["label.png", "input.png", "recon_000.png", "recon_001.png", "mean.png", "std.png", "grid.png",
              "progress.png", "samples.npz"]:
        assert os.path.getsize(os.path.join(d, f)) > 0, f
    assert np.load(os.path.join(d, "samples.npz"))["samples"].shape == (2, 32, 32, 1)


def test_compilation_cache_is_written_and_gives_the_same_samples(tmp_path):
    cache = tmp_path / "cache"
    runs = []
    for i in range(2):
        proc = cli("--config=configs/gaussian_deblur.py", *short_flags(tmp_path / str(i)),
                   f"--config.compilation_cache={cache}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert os.listdir(cache)             # written by the first run, read by the second
        (d,) = glob.glob(str(tmp_path / str(i) / "gaussian_deblur" / "*" / "*" / "samples.npz"))
        runs.append(np.load(d)["samples"])
    np.testing.assert_array_equal(runs[0], runs[1])


def test_two_devices_equal_one_device(tmp_path):
    one = pipeline.run(short_config("inpainting_box", tmp_path / "one"), stream=open(os.devnull, "w"))
    proc = cli("--config=configs/inpainting_box.py", *short_flags(tmp_path / "two"),
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (two,) = glob.glob(str(tmp_path / "two" / "inpainting_box" / "*"))
    assert json.load(open(os.path.join(two, "metrics.json")))["devices"] == 2
    (name,) = [p for p in os.listdir(one) if os.path.isdir(os.path.join(one, p))]
    a = np.load(os.path.join(one, name, "samples.npz"))["samples"]
    b = np.load(os.path.join(two, name, "samples.npz"))["samples"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_divergence_is_reported_and_nothing_is_a_result(tmp_path):
    proc = cli("--config=configs/super_resolution.py", *short_flags(tmp_path), "--config.guidance.scale=1e38")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: sampling diverged (NaN/Inf) at step ") and "-incomplete" in line
    (d,) = glob.glob(str(tmp_path / "super_resolution" / "*"))
    assert d.endswith("-incomplete") and os.path.exists(os.path.join(d, "INCOMPLETE"))
    assert not os.path.exists(os.path.join(d, "metrics.json"))


def _bad(tmp_path, *args, config="configs/inpainting_box.py"):
    # Short flags too, so that a check that wrongly lets the run through fails fast.
    proc = cli(f"--config={config}", *short_flags(tmp_path), *args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "inpainting_box") or not os.listdir(tmp_path / "inpainting_box")
    return lines[0]


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    corrupt = tmp_path / "corrupt.msgpack"
    corrupt.write_bytes(b"\x93garbage")
    cases = [
        ((), "configs/nope.py", "nope.py"),
        (("--config.task=denoise_everything",), None, "unknown task 'denoise_everything'"),
        (("--config.no_such_key=1",), None, "no_such_key"),
        ((f"--config.data.root={empty}",), None, "no images"),
        ((f"--config.data.root={tmp_path / 'missing'}",), None, "image folder not found"),
        ((f"--config.data.root={broken}",), None, "cannot read image"),
        (("--config.data.image_size=30",), None, "data.image_size 30 is not divisible by 4"),
        (("--config.noise.sigma=-0.5",), None, "sigma must be >= 0, got -0.5"),
        (("--config.num_samples=0",), None, "num_samples must be an integer >= 1, got 0"),
        ((f"--config.model.checkpoint={tmp_path / 'missing.msgpack'}",), None, "checkpoint file not found"),
        ((f"--config.model.checkpoint={corrupt}",), None, "not a readable dps_jax checkpoint"),
        (("--config.operator.kernel_size=65",), "configs/gaussian_deblur.py", "kernel_size 65 is too large"),
        (("--config.operator.scale_factor=3.5",), "configs/super_resolution.py", "flag --config.operator.scale_factor=3.5"),
        (("--config.operator.scale_factor=3",), "configs/super_resolution.py", "scale_factor 3 does not divide"),
        ((), "configs/phase_retrieval.py:ffhq256", "needs a converted checkpoint"),
        ((), "configs/phase_retrieval.py:ffhq1024", "unknown config preset 'ffhq1024'"),
    ]
    for args, config, match in cases:
        line = _bad(tmp_path, *args, config=config or "configs/inpainting_box.py")
        assert match in line, (args, line)


def test_mismatched_checkpoint(tmp_path):
    from dps_jax import api
    from dps_jax.models.checkpoint import save_checkpoint
    import dataclasses
    model, params, cfg = api.load_prior()
    other = dataclasses.replace(cfg, model_channels=64)
    path = tmp_path / "mismatch.msgpack"
    save_checkpoint(str(path), params, other)
    line = _bad(tmp_path, f"--config.model.checkpoint={path}")
    assert "do not match the model config" in line and "shape" in line
