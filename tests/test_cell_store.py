"""The comparison's cell store read as untrusted input (dps_jax.cell_store), Ctrl-C leaving a store the same
command resumes, and output folders that would be read back as inputs."""

import io
import json
import os
import pickle
import zipfile

import numpy as np

from dps_jax import cell_store, evaluate
from test_evaluate import CONFIG, config, fake_run_cell

SHAPE = (2, 8, 8, 1)
IDENTITY = {"seed": 0, "solver.name": "ddrm"}


def good_cell(n=2):
    row = {"psnr": 20.0, "ssim": 0.5, "residual": 1.0}
    return {"task": "super_resolution", "method": "ddrm", "num_images": n, "samples_per_image": 1, "nfe": 4,
            "seconds_per_image": 0.1, "compile_seconds": 1.0, "identity": IDENTITY,
            "metrics": {k: {"mean": v, "se": 0.0} for k, v in row.items()}, "per_image": [row] * n, "shown": None}


def forge(path, cell, npz: bytes):
    """A cell whose digest matches its (hostile) content: only the checks after the digest can refuse it."""
    with open(cell_store.samples_path(str(path)), "wb") as f:
        f.write(npz)
    cell = {**cell, "digest": cell_store.digest(cell, npz)}
    path.write_text(json.dumps(cell))


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_a_written_cell_reads_back(tmp_path):
    path = tmp_path / "c.json"
    samples = np.random.default_rng(0).uniform(-1, 1, SHAPE)
    cell = cell_store.write(str(path), good_cell(), samples)
    got, why = cell_store.read(str(path), IDENTITY, SHAPE)
    assert why == "" and got == cell
    np.testing.assert_allclose(cell_store.load_samples(str(path), SHAPE), samples, atol=1e-3)   # float16


def hostile_cells(tmp_path):
    """(name, write the cell at path, the reason read gives)."""
    good_npz = npz_bytes(samples=np.zeros(SHAPE, np.float16))
    nan_metrics = good_cell()
    nan_metrics["metrics"]["psnr"]["mean"] = float("nan")
    bomb = io.BytesIO()                 # a small file that inflates to 50 MB under the right member name
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("samples.npy", b"\x00" * (50 << 20))
    return [
        ("truncated", lambda p: p.write_text(json.dumps(good_cell())[:30]), "its JSON is unreadable (JSONDecodeError)"),
        ("not_object", lambda p: p.write_text("[1, 2, 3]"), "its JSON is a list, not an object"),
        ("nested", lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "its JSON is unreadable (RecursionError)"),
        ("keyless", lambda p: p.write_text("{}"), "its npz is missing or not a file"),
        ("huge", lambda p: os.truncate(p, cell_store.MAX_JSON_BYTES + 1) if p.touch() is None else None,
         f"its JSON has {cell_store.MAX_JSON_BYTES + 1} bytes, more than"),
        ("folder", lambda p: p.mkdir(), "its JSON is missing or not a file"),
        ("no_identity", lambda p: forge(p, {k: v for k, v in good_cell().items() if k != "identity"}, good_npz),
         "written by an earlier version, with no identity"),
        ("other_seed", lambda p: forge(p, {**good_cell(), "identity": {**IDENTITY, "seed": 5}}, good_npz),
         "computed with other settings: seed 5 -> 0"),
        ("nan_metrics", lambda p: forge(p, nan_metrics, good_npz), "its metric psnr is not a finite mean"),
        ("wrong_count", lambda p: forge(p, good_cell(3), good_npz), "it holds 3 images, expected 2"),
        ("string_seconds", lambda p: forge(p, {**good_cell(), "seconds_per_image": "fast"}, good_npz),
         "its seconds_per_image is fast, not a finite number"),
        ("negative_cpu", lambda p: forge(p, {**good_cell(), "cpu_seconds_per_image": -1.0}, good_npz),
         "its cpu_seconds_per_image is -1.0, not a finite number >= 0"),
        ("float64", lambda p: forge(p, good_cell(), npz_bytes(samples=np.zeros(SHAPE))),
         "its samples are float64 (2, 8, 8, 1), expected float16"),
        ("pickled", lambda p: forge(p, good_cell(), npz_bytes(samples=np.array([{"x": 1}], dtype=object))),
         "its samples are object"),
        ("two_arrays", lambda p: forge(p, good_cell(), npz_bytes(samples=np.zeros(SHAPE, np.float16), x=np.ones(1))),
         "its npz holds ['samples.npy', 'x.npy'], not one array"),
        ("wrong_shape", lambda p: forge(p, good_cell(), npz_bytes(samples=np.zeros((2, 8, 8, 3), np.float16))),
         "expected float16 (2, 8, 8, 1)"),
        ("nan_samples", lambda p: forge(p, good_cell(), npz_bytes(samples=np.full(SHAPE, np.nan, np.float16))),
         "its samples hold NaN or Inf"),
        ("truncated_npz", lambda p: forge(p, good_cell(), good_npz[:40]), "its npz is unreadable (BadZipFile)"),
        ("bomb", lambda p: forge(p, good_cell(), bomb.getvalue()), "its npz declares 52428800 bytes, more than"),
        ("pickle_file", lambda p: forge(p, good_cell(), pickle.dumps(np.zeros(SHAPE))), "its npz is unreadable"),
    ]


def test_every_hostile_cell_is_named_and_recomputed_never_used(tmp_path):
    for name, make, why in hostile_cells(tmp_path):
        path = tmp_path / f"{name}.json"
        make(path)
        cell, reason = cell_store.read(str(path), IDENTITY, SHAPE)
        assert cell is None and why in reason, (name, reason)
        assert "\n" not in reason and len(reason) < 200, (name, reason)


def test_a_bad_cell_in_a_comparison_is_said_and_recomputed(tmp_path, monkeypatch):
    computed = []
    monkeypatch.setattr(evaluate, "run_cell", fake_run_cell(computed))
    cfg = config(tmp_path / "out", methods="ddrm", tasks="super_resolution")
    cfg.metrics.fid_weights = "none"                    # no FID network to compile
    evaluate.evaluate(cfg, io.StringIO())
    npz = tmp_path / "out" / "cells" / "super_resolution__ddrm.npz"
    npz.write_bytes(npz.read_bytes()[:50])
    computed.clear()
    stream = io.StringIO()
    evaluate.evaluate(cfg, stream)
    assert computed == [("super_resolution", "ddrm")]
    assert "cell super_resolution / ddrm: changed after it was written (its digest does not match): recomputed" \
        in stream.getvalue()


def test_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path, monkeypatch):
    computed = []
    monkeypatch.setattr(evaluate, "run_cell", fake_run_cell(computed, interrupt_at=1))
    out = tmp_path / "out"
    argv = ["evaluate", f"--config={CONFIG}", "--config.data.source=folder", "--config.data.num_images=2",
            "--config.tasks=super_resolution,gaussian_deblur", "--config.methods=ddrm",
            "--config.metrics.fid_weights=none", f"--config.output.root={out}"]
    stream = io.StringIO()
    assert evaluate.cli(argv, stream) == 130
    (line,) = [l for l in stream.getvalue().splitlines() if l.startswith("error:")]
    assert line == (f"error: interrupted; the finished cells are kept in {out}/cells; the same command goes on "
                    f"from them")
    assert computed == [("super_resolution", "ddrm")] and not os.path.exists(out / "table.md")
    computed.clear()
    monkeypatch.setattr(evaluate, "run_cell", fake_run_cell(computed))
    stream = io.StringIO()
    assert evaluate.cli(argv, stream) == 0
    assert computed == [("gaussian_deblur", "ddrm")] and "1 cells done before, 1 to run" in stream.getvalue()


def test_an_output_folder_inside_the_image_folder_is_refused(tmp_path):
    from dps_jax import main
    from helpers import random_image_folder

    images = random_image_folder(tmp_path / "images", num=2, size=32)
    for inside in (images, os.path.join(images, "results")):
        stream = io.StringIO()
        argv = ["evaluate", f"--config={CONFIG}", "--config.data.source=folder", f"--config.data.root={images}",
                f"--config.output.root={inside}"]
        assert evaluate.cli(argv, stream) == 1
        assert stream.getvalue().startswith(f"error: output.root {inside} is inside the image folder {images}: the "
                                            f"next run would read its pictures as input images"), stream.getvalue()
        stream = io.StringIO()
        argv = ["main", "--config=configs/inpainting_box.py", f"--config.data.root={images}",
                f"--config.output.root={inside}"]
        assert main.cli(argv, stream) == 1 and "is inside the image folder" in stream.getvalue()
    assert sorted(os.listdir(images)) == ["0.png", "1.png"]
