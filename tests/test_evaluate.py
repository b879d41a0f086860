"""The comparison table command: cells, n/a reasons, outputs, resuming, bad input."""

import io
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from dps_jax import data, evaluate
from dps_jax.metrics import fid, lpips
from helpers import paper_table_config, random_lpips_file, tiny_prior_file

TESTS = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ["DPS_JAX_SUITE_CACHE"]


CONFIG = os.path.join(TESTS, "..", "configs", "eval", "paper_table.py")


def config(out, **over):
    """The paper-table config, shrunk: 2 shipped images, 2 tasks, 2 methods, few steps."""
    c = paper_table_config()
    c.data.source, c.data.num_images = "folder", 2           # two of the shipped test images
    c.tasks, c.methods = "super_resolution,phase_retrieval", "ddrm,hio"
    c.cells.solver.hio.steps, c.cells.solver.ddrm.steps = 20, 4          # every cell's overrides, typed fields
    c.output.root, c.compilation_cache, c.pr_samples = str(out), CACHE, 2
    for k, v in over.items():
        setattr(c, k, v)
    return c


def test_table_cells_reasons_and_files(tmp_path, monkeypatch):
    stream = io.StringIO()
    cfg = config(tmp_path)
    cfg.metrics.lpips_weights = random_lpips_file(tmp_path / "lpips.msgpack")
    cfg.model.checkpoint = tiny_prior_file(tmp_path / "prior.msgpack")    # a small random prior: the table is under test
    evaluate.evaluate(cfg, stream)
    summary = json.load(open(tmp_path / "table.json"))
    cells = {(c["task"], c["method"]): c for c in summary["cells"]}
    assert set(cells) == {("super_resolution", "ddrm"), ("phase_retrieval", "hio")}
    assert cells[("super_resolution", "ddrm")]["nfe"] == 4                   # solver.ddrm.steps, overridden
    assert cells[("phase_retrieval", "hio")]["nfe"] == 0
    pr = cells[("phase_retrieval", "hio")]["metrics"]
    assert pr["psnr_oracle"]["mean"] >= pr["psnr"]["mean"]                   # the oracle is the best by PSNR
    for c in cells.values():
        assert np.isfinite(c["metrics"]["psnr"]["mean"]) and c["metrics"]["psnr"]["se"] >= 0
        assert c["num_images"] == 2 and c["seconds_per_image"] > 0
        # Sampling time excludes compiling: DDRM's 4 steps and HIO's 20 iterations on 32 x 32 images take
        # milliseconds, their programs seconds to compile.
        assert 0 < c["seconds_per_image"] < c["compile_seconds"]
        # processor time of the same sampling (all threads): positive, and on an idle machine not far below it
        assert 0 < c["cpu_seconds_per_image"] and c["cpu_seconds_per_image"] > 0.2 * c["seconds_per_image"]
        assert c["identity"]["seed"] == 0 and c["identity"]["images.count"] == 2 and c["provenance"]["versions"]["jax"]
        # The paper's metrics from the kept reconstructions: FID-FMNIST / KID-FMNIST and LPIPS.
        recon = np.load(tmp_path / "cells" / f"{c['task']}__{c['method']}.npz")["samples"].astype(np.float32)
        truth = np.stack([data.load_image(p, 32, 1) for p in data.list_images(data.SHIPPED_IMAGES)[:2]])
        q = c["quality"]
        net = fid.load_features("")
        assert q["fid"] == pytest.approx(fid.fid(net(recon), net(truth)), rel=1e-9) and q["fid"] > 0
        d = lpips.load(cfg.metrics.lpips_weights)(recon, truth)
        assert q["lpips"]["mean"] == pytest.approx(d.mean(), rel=1e-5) and np.isfinite(q["kid"])
    reasons = {(u["method"], tuple(u["tasks"])) for u in summary["unsupported"]}
    assert reasons == {("ddrm", ("phase_retrieval",)), ("hio", ("super_resolution",))}
    md = open(tmp_path / "table.md").read()
    assert "| `ddrm` |" in md and "n/a" in md and "needs a linear operator with an SVD; 'phase_retrieval' is nonlinear" in md
    # 2 images: FID and KID are computed (table.json) but not shown
    assert "LPIPS of the reconstructions" in md and "FID / KID: not shown for 2 images" in md and "KID x" not in md
    assert not summary["fid_shown"] and summary["provenance"]["devices"]["count"] >= 1
    assert "seconds per image, sampling only (its processor seconds) / seconds of compiling" in md
    ddrm = cells[("super_resolution", "ddrm")]
    assert f"| `ddrm` | 4 / {ddrm['seconds_per_image']:.2f} ({ddrm['cpu_seconds_per_image']:.2f}) / " in md
    # grid: 2 tasks wide; truth, measurement and 2 methods high (32 px tiles at scale 3, 4 px apart, under a
    # title and column labels, after row labels); the two n/a cells are mid-grey tiles
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape[0] == 30 + 4 * (96 + 4) + 2 and grid.shape[1] > 2 * (96 + 4)
    assert (grid == 128).all(axis=-1).sum() >= 2 * 96 * 96
    csv = (tmp_path / "table.csv").read_text().splitlines()
    assert csv[0].startswith("method,task,psnr,psnr_se,ssim") and len(csv) == 3
    assert csv[1].startswith("ddrm,super_resolution,") and csv[2].startswith("hio,phase_retrieval,")
    tex = (tmp_path / "table.tex").read_text()
    assert "\\begin{tabular}" in tex and tex.count("\\textbf{") == 6 and "phase\\_retrieval (oracle)" in tex

    # A second run computes nothing: every cell is read back.
    monkeypatch.setattr(evaluate, "run_cell", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    evaluate.evaluate(cfg, io.StringIO())
    assert json.load(open(tmp_path / "table.json"))["cells"] == summary["cells"]


@pytest.mark.parametrize("over, match", [
    (dict(tasks="deblur_everything"), "unknown task 'deblur_everything'"),
    (dict(methods="ps,dpsx"), "unknown solver 'dpsx'"),
    ({"cells.solver.ddrm.etta": 0.5}, "the config has no field 'cells.solver.ddrm.etta'; did you mean "
                                      "--config.cells.solver.ddrm.eta"),
    (dict(grid_image=7), "grid_image 7 is not one of the 2 images"),
    ({"cells.solver.ddrm.steps": 0.5}, "flag --config.cells.solver.ddrm.steps=0.5"),
    ({"cells.solver.ddrm.eta": "abc"}, "flag --config.cells.solver.ddrm.eta=abc"),
    ({"methods": "ddrm", "cells.solver.ddrm.eta": 2}, "cells.solver.ddrm.eta must lie in [0, 1], got 2.0"),  # not n/a
    ({"overrides": "solver.ddrm.eta=2"}, "the config has no field 'overrides'"),
    ({"metrics.lpips_weights": "/nonexistent/lpips.msgpack"}, "LPIPS weights not found: /nonexistent/lpips.msgpack"),
    ({"metrics.fid_weights": "/nonexistent/fid.msgpack"}, "FID weights not found: /nonexistent/fid.msgpack"),
])
def test_bad_input_is_one_line(tmp_path, over, match):
    argv = ["evaluate", f"--config={CONFIG}",
            "--config.data.source=folder", "--config.data.num_images=2", "--config.cells.sampler.steps=2",
            f"--config.output.root={tmp_path / 'out'}", f"--config.compilation_cache={CACHE}",
            *(f"--config.{k}={v}" for k, v in over.items())]
    stream = io.StringIO()
    assert evaluate.cli(argv, stream) == 1
    lines = [l for l in stream.getvalue().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], stream.getvalue()


def fake_run_cell(computed, interrupt_at=None):
    """A stand-in for evaluate.run_cell that records what it ran (and raises KeyboardInterrupt at the
    cell numbered `interrupt_at`)."""
    def run(cfg, task, method, tcfg, runner, images, progress, path=None, identity=None):
        if interrupt_at is not None and len(computed) == interrupt_at:
            raise KeyboardInterrupt
        computed.append((task, method))
        row = {"psnr": 20.0, "ssim": 0.5, "residual": 1.0}
        return ({"task": task, "method": method, "num_images": len(images), "samples_per_image": 1, "nfe": 4,
                 "seconds_per_image": 0.1, "compile_seconds": 1.0, "metrics": {k: {"mean": v, "se": 0.0}
                                                                              for k, v in row.items()},
                 "per_image": [row] * len(images), "shown": None}, np.zeros_like(images))
    return run


def test_a_stored_cell_is_reused_only_with_the_identity_it_was_computed_with(tmp_path, monkeypatch):
    """A cell is recomputed, with a line naming what differs, when its settings, seed, images or weights
    change or its file was edited; an unchanged rerun computes nothing. (Cells computed by a stand-in.)"""
    import shutil

    from dps_jax.models.checkpoint import SHIPPED_PRIOR, load_checkpoint, save_checkpoint

    computed = []
    monkeypatch.setattr(evaluate, "run_cell", fake_run_cell(computed))
    prior = tmp_path / "prior.msgpack"
    shutil.copy(SHIPPED_PRIOR, prior)
    def rerun(**change):
        stream = io.StringIO()
        computed.clear()
        c = config(tmp_path / "out", methods="ddrm", tasks="super_resolution")
        c.model.checkpoint, c.metrics.fid_weights = str(prior), "none"       # no FID network to compile
        for k, v in change.items():
            *path, leaf = k.split(".")
            target = c
            for name in path:
                target = target[name]
            target[leaf] = v
        evaluate.evaluate(c, stream)
        return computed[:], stream.getvalue()

    assert rerun()[0] == [("super_resolution", "ddrm")]
    done, text = rerun()                                                            # unchanged: nothing
    assert done == [] and "recomputed" not in text and "1 cells done before, 0 to run" in text
    done, text = rerun(**{"cells.solver.ddrm.eta": 0.5})
    assert done and "computed with other settings: solver.ddrm.eta 0.85 -> 0.5: recomputed" in text
    done, text = rerun(**{"cells.solver.ddrm.eta": 0.5, "seed": 5})
    assert done and "seed 0 -> 5" in text
    done, text = rerun(**{"cells.solver.ddrm.eta": 0.5, "seed": 5, "data.num_images": 3})
    assert done and "images.count 2 -> 3" in text
    _, params, model_cfg, extra = load_checkpoint(str(prior))
    save_checkpoint(str(prior), jax.tree_util.tree_map(lambda a: a * 1.01, params), model_cfg, extra=extra)
    done, text = rerun(**{"cells.solver.ddrm.eta": 0.5, "seed": 5, "data.num_images": 3})
    assert done and "files.prior '" in text and "solver.ddrm" not in text       # same path, new content
    monkeypatch.setattr(evaluate, "code_digest", lambda: "0123456789abcdef")      # the code changed
    done, text = rerun(**{"cells.solver.ddrm.eta": 0.5, "seed": 5, "data.num_images": 3})
    assert done and "code.sha256 " in text and "-> '0123456789abcdef'" in text
    cell_path = tmp_path / "out" / "cells" / "super_resolution__ddrm.json"
    cell = json.loads(cell_path.read_text())
    cell["metrics"]["psnr"]["mean"] = 99.0
    cell_path.write_text(json.dumps(cell))
    done, text = rerun(**{"cells.solver.ddrm.eta": 0.5, "seed": 5, "data.num_images": 3})
    assert done and "changed after it was written" in text


def test_an_interrupted_cell_resumes_at_its_next_image(tmp_path, monkeypatch):
    """A cell stopped at its third image keeps the two it has done (beside the cell, with its identity); a rerun
    computes only the third, and the finished cell's numbers are those of an uninterrupted run. (run_cell with a
    stand-in runner: its sample of image i is that image shifted by its key, so nothing compiles.)"""
    monkeypatch.setattr(evaluate, "PARTIAL_EVERY_SECONDS", 0.0)
    c = config(tmp_path, methods="ddrm", tasks="super_resolution")
    tcfg = evaluate.task_config(c, "super_resolution", "ddrm")
    images = np.stack([data.load_image(p, 32, 1) for p in data.list_images(data.SHIPPED_IMAGES)[:3]])
    identity = {"seed": 0, "images.count": 3}

    class Runner:
        evaluations = 4

        def __init__(self, stop_at=None):
            self.calls, self.stop_at = 0, stop_at

        def compile(self, problem):
            return 0.0

        def __call__(self, problem, key):
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt
            shift = float(jax.random.uniform(key, ())) * 0.1
            return {"samples": np.clip(np.asarray(problem.op.adjoint(problem.y, images[0]))[None] + shift, -1, 1)}

    path = str(tmp_path / "cell.json")
    with pytest.raises(KeyboardInterrupt):
        evaluate.run_cell(c, "super_resolution", "ddrm", tcfg, Runner(stop_at=3), images, lambda i: None, path, identity)
    partial = tmp_path / "cell.partial.json"
    assert json.loads(partial.read_text())["done"] == 2
    changed = {**identity, "seed": 1}                                     # another identity: not reused
    assert evaluate.cell_store.read_partial(str(partial), changed, images.shape)[2].startswith("computed with other")
    resumed = Runner()
    cell, picked = evaluate.run_cell(c, "super_resolution", "ddrm", tcfg, resumed, images, lambda i: None, path,
                                     identity)
    assert resumed.calls == 1 and cell["resumed_at_image"] == 2
    whole, picked_whole = evaluate.run_cell(c, "super_resolution", "ddrm", tcfg, Runner(), images, lambda i: None)
    assert cell["per_image"] == whole["per_image"] and "resumed_at_image" not in whole
    # the cell stores its reconstructions as float16, as the progress file does: the stored cells are the same
    np.testing.assert_array_equal(picked.astype(np.float16), picked_whole.astype(np.float16))


def test_the_daps_protocol_measures_as_daps_does(tmp_path):
    """--config.protocol=daps: box holes 1/8 of the side from the border (DAPS's margin 32 of 256), phase
    retrieval on [0, 1] images; the other tasks as the DPS protocol; the cells' identities differ where the
    measurement does. An unknown protocol is refused by name."""
    dps, daps = config(tmp_path), config(tmp_path, protocol="daps")
    box = {p: evaluate.task_config(c, "inpainting_box", "ps").operator for p, c in (("dps", dps), ("daps", daps))}
    assert (box["dps"].margin, box["daps"].margin) == (2, 4)
    for preset, margin in (("ffhq256", 32),):
        c = config(tmp_path, protocol="daps", preset=preset)
        c.data.image_size = 256
        assert evaluate.task_config(c, "inpainting_box", "ps").operator.margin == margin
    pr = {p: evaluate.task_config(c, "phase_retrieval", "hio").operator for p, c in (("dps", dps), ("daps", daps))}
    assert not pr["dps"].get("unit_range", False) and pr["daps"].unit_range is True
    for task in ("super_resolution", "gaussian_deblur", "motion_deblur", "inpainting_random"):
        assert evaluate.task_config(dps, task, "ps").operator == evaluate.task_config(daps, task, "ps").operator
    images = np.zeros((1, 32, 32, 1), np.float32)
    assert (evaluate.cell_identity(evaluate.task_config(dps, "phase_retrieval", "hio"), images)
            != evaluate.cell_identity(evaluate.task_config(daps, "phase_retrieval", "hio"), images))
    with pytest.raises(ValueError, match="unknown protocol 'inverse'; expected one of"):
        evaluate.task_config(config(tmp_path, protocol="inverse"), "super_resolution", "ps")
