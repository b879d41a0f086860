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
    with pytest.raises(ValueError, match=r"seed must (lie in \[0, 4294967295\]|be an integer)"):
        pipeline.check_run_config(cfg)


def test_memory_estimate_refuses_before_sampling(tmp_path, monkeypatch):
    """num_samples = 10^9 is refused before compiling; a chunk larger than the free memory after compiling,
    with the chunk_size that fits; nothing is written either way."""
    out = io.StringIO()
    argv = ["dps_jax.main", "--config=configs/inpainting_box.py", "--config.solver.name=admm_tv",   # no network to compile
            *short_flags(tmp_path / "out")]
    assert main.cli(argv + ["--config.num_samples=1000000000"], stream=out) == 1
    assert "error: num_samples must lie in [1, 4096], got 1000000000" in out.getvalue()
    out = io.StringIO()                 # within every range, too much together: the estimate, before any model
    assert main.cli(argv + ["--config.num_samples=4096", "--config.data.image_size=2048",
                            "--config.data.other_size=True"], stream=out) == 1
    assert "error: data.image_size 2048 with num_samples 4096 needs about 4034.1 GiB for its arrays alone" \
        in out.getvalue()
    free = iter([2 ** 30, 16 * 2 ** 10])            # the host's memory, then the device's: 16 KiB
    monkeypatch.setattr(pipeline, "available_memory", lambda device: next(free))
    out = io.StringIO()
    assert main.cli(argv, stream=out) == 1
    line = [l for l in out.getvalue().splitlines() if l.startswith("error:")][0]
    assert line.startswith("error: a chunk of 2 samples needs about") and "set --config.chunk_size=1" in line
    assert not os.path.exists(tmp_path / "out")


def test_links_at_the_output_root_and_at_run_names(tmp_path, monkeypatch):
    """A dangling link as output.root is one line and creates nothing; a dangling link where a run's folder
    would go is passed over (the run takes the next name), never written through."""
    (tmp_path / "root").symlink_to(tmp_path / "nowhere")
    out = io.StringIO()
    argv = ["dps_jax.main", "--config=configs/inpainting_box.py", f"--config.output.root={tmp_path / 'root'}"]
    assert main.cli(argv, stream=out) == 1
    assert out.getvalue() == (f"error: output.root {tmp_path / 'root'} is a link to {tmp_path / 'nowhere'}, which "
                              f"does not exist\n")
    assert sorted(os.listdir(tmp_path)) == ["root"]
    monkeypatch.setattr(pipeline.time, "strftime", lambda fmt: "20261202-120000")
    (tmp_path / "runs" / "inpainting_box").mkdir(parents=True)
    (tmp_path / "runs" / "inpainting_box" / "20261202-120000").symlink_to(tmp_path / "gone")
    (tmp_path / "runs" / "inpainting_box" / "20261202-120000-2.partial").symlink_to(tmp_path / "gone")
    assert pipeline.new_run_dir(str(tmp_path / "runs"), "inpainting_box").endswith("20261202-120000-3")


@pytest.mark.parametrize("flags, line", [
    (["--config.coordinator_address=::::garbage", "--config.num_processes=2", "--config.process_id=1"],
     "coordinator_address '::::garbage' is not host:port"),
    (["--config.coordinator_address=localhost:99999", "--config.num_processes=2", "--config.process_id=1"],
     "coordinator_address 'localhost:99999' is not host:port"),
    (["--config.num_processes=2", "--config.process_id=2"], "process_id 2 is not below num_processes 2"),
    (["--config.coordinator_address=localhost:{port}", "--config.num_processes=2", "--config.process_id=1"],
     "distributed: process 1 found no process 0 at localhost:{port} within 1 s (ConnectionRefusedError)"),
    (["--config.coordinator_address=localhost:{port}", "--config.num_processes=3", "--config.process_id=0"],
     "distributed: 1 of 3 processes came to localhost:{port} within 1 s; missing process_id 1, 2"),
])
def test_multi_host_failures_are_one_line(tmp_path, flags, line):
    """Each would reach jax's C++ runtime, which aborts the process (exit 134) or waits 300 s; here each is
    one line and status 1 within the timeout (1 s), nothing written."""
    import socket
    with socket.socket() as sock:                      # a port nobody listens on
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    out = io.StringIO()
    argv = ["dps_jax.main", "--config=configs/inpainting_box.py", "--config.distributed=True",
            "--config.distributed_timeout=1", f"--config.output.root={tmp_path / 'out'}",
            *(f.format(port=port) for f in flags)]
    assert main.cli(argv, stream=out) == 1
    assert out.getvalue().startswith("error: " + line.format(port=port)), out.getvalue()
    assert len(out.getvalue().splitlines()) == 1 and not os.path.exists(tmp_path / "out")
