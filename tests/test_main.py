"""The main job end to end on the shipped prior (very short schedules), plug-in solvers, devices, bad input."""

import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dps_jax import config_base, main, pipeline, solvers
from helpers import random_lpips_file, tiny_kernel_file, tiny_prior_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
SHORT = dict(steps=3, num_samples=2, num_images=1)
# Runs share the suite's throw-away compilation cache (conftest.py): runs of the same program (same task, new
# flags) load it instead of compiling again. The user's cache is left alone.
CACHE = os.environ["DPS_JAX_SUITE_CACHE"]


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    return tiny_prior_file(tmp_path_factory.mktemp("prior") / "tiny.msgpack")


def short_config(task, root, **over):
    cfg = config_base.task_config(task)
    cfg.sampler.steps, cfg.num_samples, cfg.data.num_images = SHORT["steps"], SHORT["num_samples"], SHORT["num_images"]
    cfg.output.root = str(root)
    cfg.compilation_cache = CACHE
    for k, v in over.items():
        node = cfg
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return cfg


def subprocess_cli(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "dps_jax.main", *args], cwd=REPO, capture_output=True, text=True,
                          env=e, timeout=300)


def short_flags(root, cache=CACHE):
    return [f"--config.sampler.steps={SHORT['steps']}", f"--config.num_samples={SHORT['num_samples']}",
            f"--config.data.num_images={SHORT['num_images']}", f"--config.output.root={root}",
            f"--config.compilation_cache={cache}"]


# Inpainting (box) and motion blur stand for their siblings here (random inpainting, Gaussian blur: the same
# operator functions with other masks / kernels, tested in test_operators.py) to keep the suite under 8 min;
# motion blur runs DAPS (its own grid of 3 noise levels), nonlinear deblurring (the shipped kernel model) MCG
# with its data-consistency step, box inpainting Score-SDE's projection, super-resolution DPS.
@pytest.mark.parametrize("task, solver", [("super_resolution", "ps"), ("inpainting_box", "projection"),
                                          ("motion_deblur", "daps"), ("nonlinear_deblur", "mcg")])
def test_task_runs_end_to_end(task, solver, tmp_path, tiny_prior):
    over = {"solver.name": solver, "solver.daps.langevin_steps": 5}
    if solver != "daps":    # a random one-level prior: the plumbing is under test, and it compiles in a third of
        over["model.checkpoint"] = tiny_prior     # the shipped one's time (DAPS's unclipped x0 needs a real prior)
    if task == "nonlinear_deblur":          # likewise a small random kernel model
        over["operator.checkpoint"] = tiny_kernel_file(tmp_path / "kernel.msgpack")
    if task == "super_resolution":          # LPIPS in metrics.json (a random-trunk LPIPS file)
        over["metrics.lpips_weights"] = random_lpips_file(tmp_path / "lpips.msgpack")
    run_dir = pipeline.run(short_config(task, tmp_path, **over), stream=io.StringIO())
    check_outputs(run_dir, task, solver)
    if task == "super_resolution":
        from dps_jax.metrics import lpips

        m = json.load(open(os.path.join(run_dir, "metrics.json")))
        (img,) = m["images"]
        samples = np.load(os.path.join(run_dir, img["image"], "samples.npz"))
        want = lpips.load(over["metrics.lpips_weights"])(samples["samples"], np.repeat(samples["label"][None], 2, 0))
        np.testing.assert_allclose([s["lpips"] for s in img["samples"]], want, rtol=1e-5)
        assert m["mean_lpips"] == pytest.approx(np.mean(want), rel=1e-5) and 0 < img["mean"]["lpips"] < 10


@pytest.mark.parametrize("task, solver, iterations", [("phase_retrieval", "hio", 40), ("super_resolution", "admm_tv", 40)])
def test_classical_solvers_run_end_to_end_without_a_prior(task, solver, iterations, tmp_path):
    from PIL import Image

    # A colour image of another size on the grey 32 x 32 prior: converted, and the run says how.
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)).save(folder / "c.png")
    cfg = short_config(task, tmp_path, **{"solver.name": solver, "sampler.steps": iterations,
                                          "data.root": str(folder)})
    stream = io.StringIO()
    run_dir = pipeline.run(cfg, stream=stream)
    text = stream.getvalue()
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert m["solver"] == solver and m["steps"] == iterations and m["steps_per_call"] == 10
    said = ["RGB -> grey (ITU-R 601 luma)", "centre-cropped 48 x 40 -> 40 x 40", "resized 40 x 40 -> 32 x 32 (bicubic)"]
    assert m["image_conversions"] == {"c": said}
    assert f"input images converted to fit the prior (1 of 1): {'; '.join(said)}" in text
    assert "\r" not in text and text.count(f"step {iterations}/{iterations}") == 1      # a log: a line per update
    assert text.splitlines()[0].startswith("devices: ") and "estimating" in text
    if task == "phase_retrieval":          # a multimodal posterior: the headline is the residual's pick
        (img,) = m["images"]
        assert m["mean_psnr_oracle_best"] >= m["mean_psnr_best_by_residual"]
        assert img["oracle_best"]["psnr"] == max(p["psnr"] for p in img["samples"])
        assert "PSNR of the sample with the smallest residual" in text
    (img,) = m["images"]
    assert len(img["samples"]) == 2 and np.isfinite(img["mean"]["psnr"])
    samples = np.load(os.path.join(run_dir, img["image"], "samples.npz"))["samples"]
    assert samples.shape == (2, 32, 32, 1) and np.isfinite(samples).all()
    if solver == "hio":                                          # restarts from different random starts
        assert np.abs(samples[0] - samples[1]).max() > 0.1


def test_ddrm_runs_its_own_schedule_end_to_end(tmp_path):
    cfg = short_config("super_resolution", tmp_path, **{"solver.name": "ddrm", "solver.ddrm.steps": 4,
                                                       "sampler.steps": 0})
    stream = io.StringIO()
    m = json.load(open(os.path.join(pipeline.run(cfg, stream=stream), "metrics.json")))
    assert m["solver"] == "ddrm" and m["steps"] == 4             # solver.ddrm.steps: sampler.steps is unset
    assert stream.getvalue().splitlines()[1] == ("ddrm: 4 steps (solver.ddrm.steps), 4 network evaluations per "
                                                 "sample; eta 0.85, eta_b 1, cutoff 0.03")
    (img,) = m["images"]
    assert len(img["samples"]) == 2 and img["mean"]["psnr"] > 15


def check_outputs(run_dir, task, solver="ps"):
    assert not run_dir.endswith((".partial", "-incomplete"))
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert m["task"] == task and m["num_samples"] == 2 and m["steps"] == 3 and m["solver"] == solver
    assert m["compile_seconds"] > 0 and m["seconds_per_step"] > 0
    p = m["provenance"]
    assert p["devices"]["count"] >= 1 and p["versions"]["jax"] and p["started"] and "git_commit" in p
    (img,) = m["images"]
    assert len(img["samples"]) == 2
    for s in img["samples"]:
        assert np.isfinite([s["psnr"], s["ssim"], s["residual"]]).all()
    assert json.load(open(os.path.join(run_dir, "config.json")))["task"] == task
    d = os.path.join(run_dir, img["image"])
    for f in ["label.png", "input.png", "recon_000.png", "recon_001.png", "mean.png", "std.png", "grid.png",
              "progress.png", "samples.npz", "report.png", "distance.png"]:
        assert os.path.getsize(os.path.join(d, f)) > 0, f
    # what the run printed, and the per-step distance (3 steps, 2 samples) with the std statistics
    assert "wrote " in open(os.path.join(run_dir, "log.txt")).read()
    assert np.array(img["per_step"]["distance"]).shape == (2, 3) and img["per_step"]["steps"] == [1, 2, 3]
    assert 0 <= img["std"]["p50"] <= img["std"]["p95"] <= img["std"]["max"]
    assert np.load(os.path.join(d, "samples.npz"))["samples"].shape == (2, 32, 32, 1)


TOY_CONFIG = '''
import sys
sys.path.insert(0, {tests!r})
import toy_solver
from dps_jax import solvers
from dps_jax.config_base import base

if "x0_only" not in solvers.REGISTRY:
    solvers.register(toy_solver.SOLVER)            # the one registry line


def get_config(preset=None):
    c = base("inpainting_box", preset)             # registered before base(): solver.x0_only exists
    c.operator = dict(name="inpainting", mask_type="box", box_len_range=(16, 17), margin=2)
    c.solver.name = "x0_only"
    c.num_samples, c.chunk_size, c.sampler.steps = 3, 2, 4
    c.model.checkpoint = {prior!r}                 # a small random prior: the split is under test
    return c
'''


def test_plugged_in_solver_on_two_devices_and_two_processes(tmp_path, tiny_prior):
    """A solver from one module and one registry line runs through the CLI; its samples do not depend on how
    the work is split: in two processes joined by jax.distributed, each with two forced CPU devices (and
    chunking), that each take every other image and write their own folder, they are those of the one-device,
    one-process run in this process."""
    import socket
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "toy_config.py"
    config.write_text(TOY_CONFIG.format(tests=TESTS, prior=tiny_prior))
    # one compilation cache for the three runs
    flags = [f"--config={config}", "--config.solver.x0_only.noise_scale=0.5", "--config.data.num_images=3",
             f"--config.compilation_cache={tmp_path / 'cache'}"]
    run = lambda out, *more: [sys.executable, "-m", "dps_jax.main", *flags, f"--config.output.root={tmp_path / out}",
                              *more]
    # each of the two processes has two devices: the samples are split between processes and between devices
    two_devices = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen(run("multi", "--config.distributed=True", f"--config.coordinator_address=localhost:{port}",
                                  "--config.num_processes=2", f"--config.process_id={i}"),
                              cwd=REPO, env=two_devices, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    out = io.StringIO()
    assert main.cli(["dps_jax.main", *flags, f"--config.output.root={tmp_path / 'one'}"], stream=out) == 0, out.getvalue()
    solvers.REGISTRY.pop("x0_only", None)
    (one,) = glob.glob(str(tmp_path / "one" / "inpainting_box" / "*"))
    names = sorted(p for p in os.listdir(one) if os.path.isdir(os.path.join(one, p)))
    assert len(names) == 3
    samples = lambda d, name: np.load(os.path.join(d, name, "samples.npz"))["samples"]

    assert samples(one, names[0]).shape == (3, 32, 32, 1)
    shares = {}
    for i in range(2):
        (d,) = glob.glob(str(tmp_path / "multi" / "inpainting_box" / f"*-process{i}of2"))
        shares[i] = sorted(p for p in os.listdir(d) if os.path.isdir(os.path.join(d, p)))
        m = json.load(open(os.path.join(d, "metrics.json")))
        assert m["num_images"] == len(shares[i]) and m["devices"] == 2 and m["chunk_size"] == 2
        assert m["solver"] == "x0_only"
        for name in shares[i]:
            np.testing.assert_allclose(samples(d, name), samples(one, name), rtol=1e-5, atol=1e-5)
    assert shares == {0: [names[0], names[2]], 1: [names[1]]}


def test_divergence_is_reported_and_nothing_is_a_result(tmp_path, monkeypatch):
    from dps_jax.solvers import admm_tv

    # a step that turns Inf (DPS at a step size of 1e38, which config_check now refuses, did the same); ADMM-TV
    # compiles no network
    monkeypatch.setattr(admm_tv, "shrink", lambda v, threshold: v * np.inf)
    out = io.StringIO()
    status = main.cli(["dps_jax.main", "--config=configs/super_resolution.py", *short_flags(tmp_path),
                       "--config.solver.name=admm_tv"], stream=out)
    assert status == 1
    line = out.getvalue().strip().splitlines()[-1]
    assert line.startswith("error: sampling diverged (NaN/Inf) at step ") and "-incomplete" in line
    (d,) = glob.glob(str(tmp_path / "super_resolution" / "*"))
    assert d.endswith("-incomplete") and os.path.exists(os.path.join(d, "INCOMPLETE"))
    assert not os.path.exists(os.path.join(d, "metrics.json"))


def _files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    broken = tmp_path / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "x.png").write_bytes(b"not a png")
    (tmp_path / "corrupt.msgpack").write_bytes(b"\x93garbage")
    (tmp_path / "fifo").mkdir(exist_ok=True)
    if not (tmp_path / "fifo" / "x.png").exists():
        os.mkfifo(tmp_path / "fifo" / "x.png")
    return tmp_path


BAD_INPUTS = [
    ((), "configs/nope.py", "config file configs/nope.py not found; the configs are: configs/gaussian_deblur.py, "
                            "configs/inpainting_box.py"),
    (("--config.task=denoise_everything",), None, "unknown task 'denoise_everything'"),
    (("--config.no_such_key=1",), None, "no_such_key"),
    (("--config.data.root={tmp}/empty",), None, "no images"),
    (("--config.data.root={tmp}/missing",), None, "image folder not found"),
    (("--config.data.root={tmp}/broken",), None, "cannot read image"),
    (("--config.data.image_size=30",), None, "data.image_size 30: image size 30 x 30 is not divisible by 4"),
    (("--config.data.image_size=64",), None, "data.image_size 64: the prior was trained at 32 x 32; set "
                                             "--config.data.other_size=True"),
    (("--config.noise.sigma=-0.5",), None, "noise.sigma must lie in [0, 10], got -0.5"),
    (("--config.num_samples=0",), None, "num_samples must lie in [1, 4096], got 0"),
    (("--config.chunk_size=-1",), None, "chunk_size must lie in [0, 4096], got -1"),
    (("--config.solver.name=dps",), None, "unknown solver 'dps'; expected one of"),
    (("--config.solver.ps.scale=-1",), None, "solver.ps.scale must lie in [0, 1000000], got -1.0"),
    (("--config.solver.name=ps", "--config.solver.ps.sampler=euler"), None, "unknown sampler 'euler'"),
    (("--config.sampler.name=ddim",), None, "--config.sampler.name is now --config.solver.<solver>.sampler"),
    (("--config.solver.name=ps", "--config.solver.ddrm.eta=0.5"), None,
     "--config.solver.ddrm.eta is an option of another solver; the run's solver is 'ps'"),
    (("--num_samples=2",), None, "unknown flag --num_samples; did you mean --config.num_samples?"),
    (("--config.solver.ps.scal=2",), None, "the config has no field 'solver.ps.scal'; did you mean "
                                           "--config.solver.ps.scale"),
    (("--config.sampler.steps=3", "--config.sampler.steps_per_call=2"), None, "steps_per_call 2 does not divide"),
    (("--config.model.checkpoint={tmp}/missing.msgpack",), None, "checkpoint file not found"),
    (("--config.metrics.lpips_weights={tmp}/missing.msgpack",), None, "LPIPS weights not found"),
    (("--config.data.root={tmp}/fifo",), None, "x.png is not a regular file"),
    (("--config.seed=100000000000000000000",), None, "seed must lie in [0, 4294967295], got 100000000000000000000"),
    (("--config.output.root={tmp}/corrupt.msgpack/out",), None, "corrupt.msgpack is not a writable folder"),
    (("--config.model.checkpoint={tmp}/corrupt.msgpack",), None, "not a readable dps_jax checkpoint"),
    (("--config.model.dtype=float16",), None, "model.dtype must be one of ['bfloat16', 'float32'], got 'float16'"),
    (("--config.operator.kernel_size=65",), "configs/gaussian_deblur.py", "kernel_size 65 is too large"),
    (("--config.operator.scale_factor=3.5",), "configs/super_resolution.py", "flag --config.operator.scale_factor=3.5"),
    (("--config.operator.scale_factor=3",), "configs/super_resolution.py", "scale_factor 3 does not divide"),
    (("--config.solver.name=mcg",), "configs/phase_retrieval.py", "solver 'mcg' needs a linear operator"),
    (("--config.solver.name=hio",), None, "solver 'hio' solves Fourier phase retrieval only; the operator is 'inpainting'"),
    (("--config.solver.name=admm_tv",), "configs/phase_retrieval.py", "'admm_tv' needs a linear operator"),
    (("--config.solver.name=oss", "--config.solver.oss.stages=0"), "configs/phase_retrieval.py", "solver.oss.stages must lie in [1, 1000], got 0"),
    (("--config.solver.name=ddrm",), "configs/motion_deblur.py", "operator 'motion_blur' has no efficient SVD"),
    (("--config.solver.name=ddrm",), "configs/phase_retrieval.py", "'ddrm' needs a linear operator with an SVD; "
                                                                   "'phase_retrieval' is nonlinear"),
    (("--config.solver.name=ddrm", "--config.noise.name=poisson"), None, "'ddrm' models Gaussian measurement noise"),
    (("--config.solver.name=ddrm", "--config.solver.ddrm.eta=2"), None, "solver.ddrm.eta must lie in [0, 1], got 2"),
    ((), "configs/phase_retrieval.py:ffhq256", "needs a converted checkpoint"),
    ((), "configs/phase_retrieval.py:ffhq1024", "unknown config preset 'ffhq1024'"),
]


@pytest.mark.parametrize("args, config, match", BAD_INPUTS, ids=[m[:40] for _, _, m in BAD_INPUTS])
def test_bad_input_is_one_line(tmp_path, args, config, match):
    tmp = _files(tmp_path)
    out = io.StringIO()
    argv = ["dps_jax.main", f"--config={config or 'configs/inpainting_box.py'}", *short_flags(tmp_path / "out"),
            *(a.format(tmp=tmp) for a in args)]
    assert main.cli(argv, stream=out) == 1, out.getvalue()[-2000:]
    lines = [l for l in out.getvalue().strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], out.getvalue()[-2000:]
    assert "Traceback" not in lines[0] and len(lines[0]) < 600
    assert not os.path.exists(tmp_path / "out")            # nothing half-written


def test_bad_input_in_a_fresh_process_is_one_line_and_status_1(tmp_path):
    proc = subprocess_cli("--config=configs/inpainting_box.py", *short_flags(tmp_path), "--config.num_samples=0")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: num_samples must lie in [1, 4096], got 0"]
    # A backend that cannot start (no GPU, or jax without CUDA): one line that says what to do.
    proc = subprocess_cli("--config=configs/inpainting_box.py", *short_flags(tmp_path), env={"JAX_PLATFORMS": "cuda"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: JAX could not start its backend 'cuda' (JAX_PLATFORMS)") and "[cuda]" in line


def test_mismatched_checkpoint(tmp_path):
    import dataclasses
    from dps_jax.models.checkpoint import SHIPPED_PRIOR, load_checkpoint, save_checkpoint
    _, params, cfg, _ = load_checkpoint(SHIPPED_PRIOR)
    path = tmp_path / "mismatch.msgpack"
    save_checkpoint(str(path), params, dataclasses.replace(cfg, model_channels=64))
    out = io.StringIO()
    assert main.cli(["dps_jax.main", "--config=configs/inpainting_box.py", *short_flags(tmp_path),
                     f"--config.model.checkpoint={path}"], stream=out) == 1
    line = out.getvalue().strip()
    assert line.startswith("error:") and "do not match the model config" in line and "shape" in line


def test_help_lists_the_flags_and_the_configs_fields():
    out = io.StringIO()
    assert main.cli(["dps_jax.main", "--help"], out=out) == 0
    text = out.getvalue()
    assert "--print_config" in text and "configs/phase_retrieval.py" in text and "configs/eval" not in text
    out = io.StringIO()
    assert main.cli(["dps_jax.main", "--config=configs/super_resolution.py", "-h"], out=out) == 0
    text = out.getvalue()
    assert "solver.name = 'ddrm'" in text and "solver.ddrm.steps = 25" in text and "solver.pigdm.sampler = 'ddim'" in text


def test_print_config_prints_the_resolved_config_and_runs_nothing(tmp_path):
    out = io.StringIO()
    argv = ["dps_jax.main", "--config=configs/phase_retrieval.py", "--config.solver.daps.lr=0.001",
            f"--config.output.root={tmp_path / 'out'}", "--print_config"]
    assert main.cli(argv, out=out) == 0
    printed = json.loads(out.getvalue())
    assert printed["solver"]["name"] == "daps" and printed["solver"]["daps"]["lr"] == 0.001
    assert not os.path.exists(tmp_path / "out")


def test_evaluate_and_the_trainers_share_the_command_line():
    """One helper behind every config-file command: --help, the config listing, one-line errors."""
    from dps_jax import evaluate
    from dps_jax.train import prior as train_prior

    out, err = io.StringIO(), io.StringIO()
    assert evaluate.cli(["dps_jax.evaluate", "--help"], stream=err, out=out) == 0
    assert "configs/eval/paper_table.py" in out.getvalue()
    assert evaluate.cli(["dps_jax.evaluate", "--config=configs/eval/papertable.py"], stream=err) == 1
    assert err.getvalue().strip() == ("error: config file configs/eval/papertable.py not found; the configs are: "
                                      "configs/eval/paper_table.py")
    err = io.StringIO()
    assert train_prior.cli(["dps_jax.train.prior", "--config=configs/train/fashion_mnist.py"], stream=err) == 1
    assert err.getvalue().strip() == "error: --workdir is required"


def test_cpu_compile_flag_is_added_before_jax_only_unless_the_user_set_it(monkeypatch):
    from dps_jax import cli as cli_lib

    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    cli_lib.cpu_compile_flags()                         # jax is imported here: too late, nothing changes
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=2"
    monkeypatch.delitem(sys.modules, "jax")
    cli_lib.cpu_compile_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=2 --xla_cpu_use_fusion_emitters=false"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")
    cli_lib.cpu_compile_flags()                         # the user's choice stands
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_use_fusion_emitters=true"
