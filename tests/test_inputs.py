"""The main job's inputs: image files of every common mode, folder contents, output names, the run's
sanity checks (seed, memory, divergence that stays finite)."""

import io
import os
import types

import numpy as np
import pytest
from PIL import Image

from dps_jax import config_base, data, main, pipeline
from test_main import short_flags

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), np.uint8)


def saved(tmp_path, name, img):
    path = tmp_path / name
    img.save(path)
    return str(path)


def test_image_modes_load_as_the_readme_says(tmp_path):
    """8-bit grey/RGB/RGBA/palette/LA and 16-bit grey, into (H, W, C) in [-1, 1]: alpha dropped, palette
    expanded, 16 bits scaled by 65535 (not clipped to 255), grey repeated for three channels."""
    want = RGB / 127.5 - 1
    np.testing.assert_allclose(data.load_image(saved(tmp_path, "rgb.png", Image.fromarray(RGB))), want, atol=1e-6)
    rgba = np.concatenate([RGB, RNG.integers(0, 256, (12, 16, 1), np.uint8)], -1)
    np.testing.assert_allclose(data.load_image(saved(tmp_path, "rgba.png", Image.fromarray(rgba, "RGBA"))), want, atol=1e-6)
    pal = Image.fromarray(RGB).quantize(16)
    np.testing.assert_allclose(data.load_image(saved(tmp_path, "p.png", pal)),
                               np.asarray(pal.convert("RGB")) / 127.5 - 1, atol=1e-6)
    grey = RGB[..., 0]
    np.testing.assert_allclose(data.load_image(saved(tmp_path, "l.png", Image.fromarray(grey)), channels=3),
                               np.repeat(grey[..., None] / 127.5 - 1, 3, -1), atol=1e-6)
    la = Image.fromarray(np.stack([grey, grey[::-1]], -1), "LA")
    np.testing.assert_allclose(data.load_image(saved(tmp_path, "la.png", la), channels=1)[..., 0], grey / 127.5 - 1, atol=1e-6)
    wide = (np.arange(12 * 16).reshape(12, 16) * 341).astype(np.uint16)       # up to 65131
    x = data.load_image(saved(tmp_path, "g16.png", Image.fromarray(wide)), channels=1)
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    np.testing.assert_allclose(x[..., 0], wide / 65535 * 2 - 1, atol=1e-6)
    assert (x > 0.99).mean() < 0.01                     # the 8-bit conversion would make 75% of it white
    x = data.load_image(str(tmp_path / "g16.png"), image_size=8, channels=3)
    assert x.shape == (8, 8, 3) and x.min() >= -1 and x.max() <= 1 and np.all(x[..., 0] == x[..., 2])


def test_folder_contents_and_output_names(tmp_path):
    for name in ("a.png", "a.jpg", "config.json.png", "b.png"):
        Image.fromarray(RGB).save(tmp_path / name)
    files = data.list_images(str(tmp_path))
    assert data.output_names(files) == ["a_jpg", "a_png", "b", "config_json_png"]
    os.mkfifo(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"x.png is not a regular file"):
        data.list_images(str(tmp_path))
    assert data.output_names(["/d/a.png", "/e/a.png", "/d/metrics.json.png"]) == ["a_png", "a_png-2", "metrics_json_png"]


def fake_runner(steps=4):
    return types.SimpleNamespace(num_steps=steps, solver=types.SimpleNamespace(name="ps", kind="iterative"))


def test_finite_divergence_is_caught():
    """Samples far outside the image range, or a final distance 10x the first step's, are not results."""
    ok = {"samples": np.zeros((2, 4, 4, 1)), "distance": np.tile([4.0, 3.0, 2.0, 1.0], (2, 1))}
    pipeline.check_finite(ok, fake_runner(), "img")
    far = dict(ok, samples=np.zeros((2, 4, 4, 1)))
    far["samples"][1, 0, 0, 0] = 1e4
    with pytest.raises(pipeline.Diverged, match=r"image img, sample 1: it reaches \|x\| = 1e\+04"):
        pipeline.check_finite(far, fake_runner(), "img")
    up = dict(ok, distance=np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 5.0, 9.0, 20.0]]))
    with pytest.raises(pipeline.Diverged, match="sample 1: its final data distance 20 is 20x the first step's 1"):
        pipeline.check_finite(up, fake_runner(), "img")


@pytest.mark.parametrize("seed", [2 ** 32, -1, 2 ** 70])
def test_seed_must_fit_a_key(tmp_path, seed):
    cfg = config_base.task_config("inpainting_box")
    cfg.output.root = str(tmp_path)
    cfg.seed = seed
    with pytest.raises(pipeline.RunError, match=r"seed must be an integer in \[0, 2\^32\)"):
        pipeline.check_run_config(cfg)


def test_memory_estimate_refuses_before_sampling(tmp_path, monkeypatch):
    """num_samples = 10^9 is refused before compiling; a chunk larger than the free memory after compiling,
    with the chunk_size that fits; nothing is written either way."""
    out = io.StringIO()
    argv = ["dps_jax.main", "--config=configs/inpainting_box.py", "--config.solver.name=admm_tv",   # no network to compile
            *short_flags(tmp_path / "out")]
    assert main.cli(argv + ["--config.num_samples=1000000000"], stream=out) == 1
    assert "error: num_samples 1000000000: the samples alone need 7629.4 GiB" in out.getvalue()
    free = iter([2 ** 30, 16 * 2 ** 10])            # the host's memory, then the device's: 16 KiB
    monkeypatch.setattr(pipeline, "available_memory", lambda device: next(free))
    out = io.StringIO()
    assert main.cli(argv, stream=out) == 1
    line = [l for l in out.getvalue().splitlines() if l.startswith("error:")][0]
    assert line.startswith("error: a chunk of 2 samples needs about") and "set --config.chunk_size=1" in line
    assert not os.path.exists(tmp_path / "out")
