"""The comparison table command: cells, n/a reasons, outputs, resuming, bad input."""

import importlib.util
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from dps_jax import data, evaluate
from dps_jax.metrics import fid, lpips
from helpers import random_lpips_file

TESTS = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(TESTS, "..", ".pytest_cache", "dps_jax_eval_xla")


CONFIG = os.path.join(TESTS, "..", "configs", "eval", "paper_table.py")


def config(out, **over):
    """The paper-table config, shrunk: 2 shipped images, 2 tasks, 2 methods, few steps."""
    spec = importlib.util.spec_from_file_location("paper_table", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
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
    assert "FID / KID x 10^3 / LPIPS of the reconstructions" in md and "FID-FMNIST / KID-FMNIST: on the" in md
    # grid: 2 tasks wide; truth, measurement and 2 methods high (32 px tiles, 1 px gaps, scale 3)
    h, w = np.asarray(Image.open(tmp_path / "grid.png")).shape[:2]
    assert (h, w) == (3 * (4 * 33 - 1), 3 * (2 * 33 - 1))

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
    ({"methods": "ddrm", "cells.solver.ddrm.eta": 2}, "ddrm eta must be in [0, 1], got 2.0"),   # not "n/a"
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
