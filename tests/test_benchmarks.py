"""The benchmarks measure what they claim to (no torch needed): the speed benchmark's step, time to quality's
picks, the solver grids' records."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import step_speed
from helpers import FMNIST_SAMPLE


def test_step_costs_one_forward_and_one_input_gradient():
    """The DPS step differentiates with respect to x_t only: about twice a forward pass's FLOPs (each
    convolution once forward, once for its input gradient). Parameter gradients would make it about three."""
    run, _, step_flops, parts, _, _ = step_speed.jax_step_fn("tiny", 1)
    pr = parts[0]
    model, params = pr.apply.module, pr.params
    x, _ = step_speed.jax_inputs(1, 32)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, jnp.full((1,), step_speed.STEP_INDEX)))
    forward_flops = step_speed._flops(forward.lower(params, x).compile())
    assert 1.8 < step_flops / forward_flops < 2.3, (step_flops, forward_flops)
    x_next, distance = run()
    assert x_next.shape == (1, 32, 32, 3) and bool(jnp.all(jnp.isfinite(x_next))) and float(distance[0]) > 0


def test_time_to_quality_step_counts_and_pick():
    """A point's step count goes where its solver reads it, DPS keeps its total guidance (zeta x steps), and
    the pick is the fastest point within the reference's PSNR standard error and FID slack."""
    import argparse

    from benchmarks import time_to_quality as t2q
    from dps_jax.cli import load_config

    cfg = load_config("configs/eval/paper_table.py")
    ps = t2q.point_config(cfg, "super_resolution", "ps", 100, "total")
    assert ps.solver.ps.steps == 100 and ps.solver.ps.scale == 10.0 * 50 / 100
    assert t2q.point_config(cfg, "super_resolution", "ps", 100, "fixed").solver.ps.scale == 10.0
    assert t2q.point_config(cfg, "super_resolution", "ddrm", 25, "total").solver.ddrm.steps == 25
    assert t2q.point_config(cfg, "super_resolution", "daps", 10, "total").solver.daps.steps == 10
    # A step count whose time, extrapolated from fewer steps, exceeds the reference's is not run.
    assert t2q.slower_than_reference(44.0, (50, 40.0), 100) and not t2q.slower_than_reference(44.0, (25, 20.0), 50)
    assert not t2q.slower_than_reference(None, (50, 40.0), 100) and not t2q.slower_than_reference(44.0, None, 10)
    # DPS's reference first, its extra step counts next, the reference not twice, iterative solvers once.
    args = argparse.Namespace(tasks="super_resolution", methods="ps,ddrm,hio", steps="10,1000", dps_steps="250",
                              ref_steps=1000)
    sr = lambda method, steps: ("super_resolution", method, steps)
    assert t2q.points_of(args) == [sr("ps", 1000), sr("ps", 250), sr("ps", 10), sr("ddrm", 10), sr("ddrm", 1000),
                                   sr("hio", 0)]

    point = lambda method, steps, psnr, fid, seconds: {
        "task": "sr", "method": method, "steps": steps, "psnr": {"mean": psnr, "se": 0.2}, "seconds_per_image": seconds}
    points = [point("ps", 1000, 20.0, None, 30.0), point("ddrm", 10, 19.9, None, 0.5),
              point("mcg", 10, 19.7, None, 0.1), point("ps", 100, 20.5, None, 3.0), point("daps", 10, 21.0, None, 0.2)]
    fids = {("sr", "ps", 1000): 100.0, ("sr", "ddrm", 10): 120.0, ("sr", "mcg", 10): 90.0, ("sr", "ps", 100): 80.0,
            ("sr", "daps", 10): 126.0}
    summary = t2q.summarise(argparse.Namespace(ref_steps=1000), points, fids)["sr"]
    # mcg is 0.3 dB short (more than one standard error); daps's FID is beyond 1.25 x the reference's
    assert [p["reaches"] for p in summary["points"]] == [True, True, False, True, False]
    assert summary["fastest_to_reference"]["method"] == "ddrm"


def test_time_to_quality_skips_against_a_merged_reference(tmp_path):
    """A run that merges an earlier summary has no reference of its own under --out: the skip rule then takes
    the merged one (it once took none and ran every step count), and one stored under --out comes first."""
    import argparse
    import json

    from benchmarks import time_to_quality as t2q

    args = argparse.Namespace(out=str(tmp_path), ref_steps=1000)
    kept = {("sr", "ps", 1000): {"seconds_per_image": 44.0}}
    assert t2q.ref_seconds(args, "sr") is None and t2q.ref_seconds(args, "sr", kept) == 44.0
    assert t2q.ref_seconds(args, "box", kept) is None
    assert t2q.slower_than_reference(t2q.ref_seconds(args, "sr", kept), (25, 23.9), 50)
    os.makedirs(tmp_path / "points")
    with open(t2q.store_path(str(tmp_path), "sr", "ps", 1000, ".json"), "w") as f:
        json.dump({"seconds_per_image": 30.0}, f)
    assert t2q.ref_seconds(args, "sr", kept) == 30.0


def test_head_to_head_rotates_and_takes_ratios_within_a_turn(tmp_path, monkeypatch):
    """--n1_turns: each turn starts one program later, the ratio is taken within a turn (so a drift that
    slows every program of a turn alike cancels), and the JSON holds every turn."""
    import argparse
    import json

    base = {"official": 10.0, "dps_jax": 9.0, "deepinv_float32": 8.0, "deepinv_default": 12.0}
    drift = [1.0, 2.0, 1.5, 1.25]                  # the machine's speed, turn by turn
    calls = []

    def fake_child(name, args):
        calls.append(name)
        return base[name] * drift[(len(calls) - 1) // len(base)]

    monkeypatch.setattr(step_speed, "_n1_in_child", fake_child)
    out = tmp_path / "h2h.json"
    args = argparse.Namespace(deepinv=True, isolate=True, n1_turns=4, repeats=2, model="tiny", torch_repo="",
                              out=str(out))
    step_speed.head_to_head(args)
    assert [calls[4 * k] for k in range(4)] == ["official", "dps_jax", "deepinv_float32", "deepinv_default"]
    assert all(sorted(calls[4 * k:4 * k + 4]) == sorted(base) for k in range(4))
    result = json.loads(out.read_text())
    assert result["turns_done"] == 4 and result["isolated"] and result["repeats_per_process"] == 2
    assert result["seconds"]["dps_jax"] == [9.0, 18.0, 13.5, 11.25]
    for peer in ("official", "deepinv_float32", "deepinv_default"):
        ratio = result["dps_jax_time_over"][peer]
        assert abs(ratio["median"] - 9.0 / base[peer]) < 1e-12 and max(ratio["quartiles"]) - min(ratio["quartiles"]) < 1e-12


def test_step_speed_rejects_flags_that_cannot_go_together(monkeypatch, capsys):

    for flags, words in ((["--isolate"], "--isolate goes with --n1_turns"), (["--n1_turns", "-1"], "got -1"),
                         (["--n1_turns", "2", "--repeats", "0"], "at least 1, got 0")):
        monkeypatch.setattr(sys, "argv", ["step_speed.py", "--torch_repo", "x", *flags])
        with pytest.raises(SystemExit) as err:
            step_speed.main()
        assert err.value.code == 2 and words in capsys.readouterr().err


def test_a_reference_clone_imports_without_shadowing_anything(tmp_path):
    """tools.reference: a clone's top-level modules import from it, but never in place of an installed or
    project module of the same name (numpy here), and nothing is put on sys.path."""
    from tools import reference

    (tmp_path / "clone_only_module_xyz.py").write_text("VALUE = 7\n")
    (tmp_path / "numpy.py").write_text("raise RuntimeError('the clone shadowed numpy')\n")
    path = list(sys.path)
    finder = reference.importable(str(tmp_path))
    try:
        import clone_only_module_xyz
        import numpy

        assert clone_only_module_xyz.VALUE == 7 and hasattr(numpy, "ndarray") and sys.path == path
        assert reference.importable(str(tmp_path)) is finder                  # once per clone
    finally:
        sys.meta_path.remove(finder)
        sys.modules.pop("clone_only_module_xyz", None)


def test_gpu_suite_dry_run_writes_every_part(tmp_path):
    """The GPU suite on the CPU at 32 px (`--dry_run`): the parts run, a spent budget skips the rest of its
    part and says what (here the step and scaling parts have none: their programs are step_speed's, which
    test_step_costs_one_forward_and_one_input_gradient runs, and the main job's runner), and the JSON and
    markdown hold the rows."""
    import json

    from benchmarks import gpu_suite

    out = tmp_path / "suite.json"
    result = gpu_suite.main(["--dry_run", "--solvers", "ddrm", "--budget", "0,120,0", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    step, solvers_part, scaling = (result["parts"][p] for p in ("step", "solvers", "scaling"))
    assert step["rows"] == [] and step["skipped"] == ["dps_jax float32 N=1", "dps_jax bfloat16 N=1", "official N=1",
                                                      "deepinv N=1"]
    (ddrm,) = solvers_part["rows"]
    assert (ddrm["solver"], ddrm["task"], ddrm["steps"], ddrm["nfe"]) == ("ddrm", "super_resolution", 20, 20)
    assert ddrm["seconds_per_image"] == pytest.approx(20 * ddrm["seconds_per_step"])
    assert scaling["rows"] == [] and scaling["skipped"] == ["N=2"]      # its runner: the cost-scaling benchmark's
    md = (tmp_path / "suite.md").read_text()
    assert "| `ddrm` | super_resolution | 20 | 20 |" in md and "skipped: N=2" in md and "dry run" in md
    assert "skipped: dps_jax float32 N=1; dps_jax bfloat16 N=1; official N=1; deepinv N=1" in md
    with pytest.raises(SystemExit):
        gpu_suite.parse_args(["--budget", "1,2"])


def test_deepinv_comparison_counts_the_user_code_it_times():
    """The lines of user code the deepinv comparison reports are the timed functions' bodies (imports in,
    docstring, comments and blank lines out), and its problem keeps 30% of the Fourier coefficients."""
    import numpy as np

    from benchmarks import own_operator_deepinv as bench

    assert bench.user_lines(bench.user_dps_jax) == 9 and bench.user_lines(bench.user_deepinv) == 11

    def sample(x):
        """A docstring."""
        # a comment

        return x
    assert bench.user_lines(sample) == 1
    x, mask, y = bench.problem()
    assert x.shape == (64, 64, 3) and y.shape == (64, 64, 6) and abs(mask.mean() - 0.3) < 0.02
    assert np.abs(x).max() <= 1 and np.all(y[mask == 0] == 0)


def test_solver_grid_passes_each_setting_and_records_the_best(tmp_path, monkeypatch):
    """A two-image SITCOM grid of one step (the shipped Fashion-MNIST sample's first test images): the rate
    reaches the solver (the two rows differ), each row costs its 30 Adam iterations of network gradients, and
    the best row is the higher PSNR."""
    from benchmarks import sitcom_grid

    monkeypatch.setenv("DPS_JAX_FASHION_MNIST", FMNIST_SAMPLE)
    out = tmp_path / "grid.json"
    argv = ["--first", "0", "--num_images", "2", "--steps", "1", "--lrs", "0.005,0.1", "--tasks", "super_resolution",
            "--out", str(out)]
    sitcom_grid.main(argv)
    record = json.loads(out.read_text())
    assert record["command"] == "python -m benchmarks.sitcom_grid " + " ".join(argv)
    assert record["images"] == [0, 2]
    found = record["tasks"]["super_resolution"]
    assert [(r["lr"], r["steps"], r["evaluations"]) for r in found["grid"]] == [(0.005, 1, 30), (0.1, 1, 30)]
    low, high = (r["psnr"] for r in found["grid"])
    assert abs(low - high) > 0.01 and 5.0 < min(low, high)
    assert found["best"]["psnr"] == max(low, high)
