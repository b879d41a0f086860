"""Every number of every command's config is checked in one place (dps_jax.config_check), before anything is
built: the issue's hostile values for the main job, the evaluation command and the trainers each end in one
line and exit status 1, with nothing written."""

import glob
import io
import os

import pytest

from dps_jax import cli, config_base, config_check, evaluate, main
from dps_jax.train import denoiser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def all_configs():
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")) + glob.glob(os.path.join(REPO, "configs", "*", "*.py")))
    for path in paths:
        if os.path.basename(path).startswith("_"):
            continue
        presets = config_base.PRESETS if os.path.dirname(path).endswith("configs") else (None,)
        for preset in presets:
            yield path, preset


def test_every_number_of_every_shipped_config_has_a_rule_and_fits_it():
    seen = 0
    for path, preset in all_configs():
        cfg = cli.load_config(path + (f":{preset}" if preset else ""))
        for key, value in config_check.numeric_fields(cfg):
            rule = config_check.rule_for(key)
            assert rule is not None, (path, key)
            config_check.check_value(key, value, rule)
            seen += 1
        config_check.check(cfg)
    assert seen > 300                          # the task configs' solver sections, the eval and train configs


def run_cli(command, config, *args, root):
    out = io.StringIO()
    argv = [command.__name__, f"--config={config}", f"--config.output.root={root}", *args]
    status = command(argv, stream=out)
    return status, out.getvalue()



HOSTILE = [
    # (config, flags, the line's start); the main job
    ("configs/super_resolution.py", ["--config.diffusion.num_timesteps=1000000000"],
     "diffusion.num_timesteps must lie in [2, 100000], got 1000000000"),
    ("configs/super_resolution.py", ["--config.solver.ps.scale=1e30"], "solver.ps.scale must lie in [0, 1000000]"),
    ("configs/super_resolution.py", ["--config.solver.ps.scale=nan"], "solver.ps.scale must be a finite number, got nan"),
    ("configs/motion_deblur.py", ["--config.operator.intensity=inf"], "operator.intensity must be a finite number"),
    ("configs/motion_deblur.py", ["--config.operator.intensity=1e10"], "operator.intensity must lie in [0, 100]"),
    ("configs/phase_retrieval.py", ["--config.operator.oversample=inf"], "operator.oversample must be a finite"),
    ("configs/phase_retrieval.py", ["--config.operator.oversample=10000"], "operator.oversample must lie in [0, 8]"),
    ("configs/super_resolution.py", ["--config.data.image_size=100000"], "data.image_size must lie in [8, 2048]"),
    ("configs/super_resolution.py", ["--config.chunk_size=1000000000000"], "chunk_size must lie in [0, 4096]"),
    ("configs/super_resolution.py", ["--config.output.png_scale=2000"], "output.png_scale must lie in [1, 16]"),
    ("configs/inpainting_box.py", ["--config.solver.name=admm_tv", "--config.solver.admm_tv.steps=1000000000"],
     "solver.admm_tv.steps must lie in [0, 100000]"),
    ("configs/phase_retrieval.py", ["--config.solver.name=er", "--config.solver.er.steps=1000000000"],
     "solver.er.steps must lie in [0, 100000]"),
    ("configs/inpainting_box.py", ["--config.solver.name=admm_tv", "--config.solver.admm_tv.cg_iterations=1000000000"],
     "solver.admm_tv.cg_iterations must lie in [1, 10000]"),
    ("configs/motion_deblur.py", ["--config.solver.name=daps", "--config.solver.daps.steps=1000000000"],
     "solver.daps.steps must lie in [0, 100000]"),
    ("configs/super_resolution.py", ["--config.noise.name=poisson", "--config.noise.rate=inf"],
     "noise.rate must be a finite number"),
    ("configs/super_resolution.py", ["--config.solver.name=sdedit", "--config.solver.sdedit.t_star=100000"],
     "solver.sdedit.t_star 100000 is beyond the schedule's 1000 timesteps"),
    ("configs/phase_retrieval.py", ["--config.solver.name=hio", "--config.solver.hio.lower=2"],
     "solver.hio.lower 2.0 must be below its upper 1.0"),
    ("configs/motion_deblur.py", ["--config.solver.name=daps", "--config.solver.daps.sigma_min=200"],
     "solver.daps.sigma_min 200.0 must be below its sigma_max 100.0"),
    ("configs/super_resolution.py", ["--config.seed=-1"], "seed must lie in [0, 4294967295], got -1"),
    ("configs/super_resolution.py", ["--config.num_processes=-3"], "num_processes must lie in [0, 4096]"),
    # a changed operator: its own defaults, and a field it does not take refused by name
    ("configs/super_resolution.py", ["--config.operator.name=motion_blur", "--config.operator.scale_factor=2"],
     "operator.scale_factor is not an option of operator 'motion_blur'; its options are kernel_size, intensity"),
]


@pytest.mark.parametrize("config, flags, line", HOSTILE, ids=[h[2][:40] for h in HOSTILE])
def test_hostile_numbers_of_the_main_job_are_one_line(tmp_path, config, flags, line):
    status, text = run_cli(main.cli, config, *flags, root=tmp_path / "out")
    assert status == 1 and text.startswith("error: " + line), text[-1000:]
    assert len(text.strip().splitlines()) == 1 and len(text) < 300
    assert not os.path.exists(tmp_path / "out")


EVAL_HOSTILE = [
    (["--config.seed=-5"], "seed must lie in [0, 4294967295], got -5"),
    (["--config.data.first=-1"], "data.first must lie in [0, 1000000], got -1"),
    (["--config.data.num_images=-2"], "data.num_images must lie in [0, 1000000], got -2"),
    (["--config.pr_samples=1000000000"], "pr_samples must lie in [1, 64], got 1000000000"),
    (["--config.output.png_scale=5000"], "output.png_scale must lie in [1, 16], got 5000"),
    (["--config.cells.solver.ddrm.eta=5.0"], "cells.solver.ddrm.eta must lie in [0, 1], got 5.0"),
    (["--config.cells.diffusion.num_timesteps=1000000000"], "cells.diffusion.num_timesteps must lie in [2, 100000]"),
    (["--config.tasks="], "tasks '' and methods"),
]


@pytest.mark.parametrize("flags, line", EVAL_HOSTILE, ids=[h[1][:40] for h in EVAL_HOSTILE])
def test_hostile_numbers_of_the_evaluation_are_one_line(tmp_path, flags, line):
    status, text = run_cli(evaluate.cli, "configs/eval/paper_table.py", *flags, root=tmp_path / "out")
    assert status == 1 and text.startswith("error: " + line), text[-1000:]
    assert len(text.strip().splitlines()) == 1 and len(text) < 300
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("flag, line", [
    ("--config.num_steps=100000000000", "num_steps must lie in [0, 10000000]"),
    ("--config.optim.lr=inf", "optim.lr must be a finite number, got inf"),
    ("--config.optim.lr=0.0", "optim.lr must lie in (0, 10], got 0.0"),
    ("--config.batch_size=0", "batch_size must lie in [1, 4096], got 0"),
    ("--config.model.depth=1000000", "model.depth must lie in [0, 4096], got 1000000"),
])
def test_hostile_numbers_of_a_trainer_are_one_line(tmp_path, flag, line):
    out = io.StringIO()
    argv = ["train", "--config=configs/train/dncnn_fmnist.py", f"--workdir={tmp_path / 'work'}", flag]
    assert denoiser.cli(argv, stream=out) == 1
    assert out.getvalue().startswith("error: " + line), out.getvalue()[-1000:]
    assert not os.path.exists(tmp_path / "work")


def test_a_changed_operator_starts_from_its_own_defaults():
    cfg = config_base.task_config("gaussian_deblur")
    assert cfg.operator.intensity == 1.0                  # the Gaussian's sigma (32 px)
    cfg.operator.name = "motion_blur"
    checked = config_check.check(cfg, overrides=["operator.name"])
    assert dict(checked.operator) == {"name": "motion_blur"}       # motion blur's own intensity, not sigma 1
    cfg = config_base.task_config("gaussian_deblur")
    cfg.operator.name, cfg.operator.kernel_size = "motion_blur", 9
    assert dict(config_check.check(cfg, overrides=["operator.name", "operator.kernel_size"]).operator) == {
        "name": "motion_blur", "kernel_size": 9}


def test_the_memory_estimate_names_its_largest_part():
    cfg = config_base.task_config("phase_retrieval")
    parts = config_check.estimate_bytes(cfg)
    # 4 samples of 32 x 32 x 3 float32 with 20 snapshots; the Fourier padding at oversample 2: 96 x 96
    assert parts["samples and their 10 snapshots of x and x0_hat"] == 4 * 32 * 32 * 3 * 4 * 21
    assert parts["the padded Fourier transforms"] == 4 * 96 * 96 * 3 * 8 * 4
    with pytest.raises(config_check.ConfigValueError, match=r"needs about 0\.0 GiB .* \(the padded Fourier "
                                                            r"transforms: 0\.0 GiB\), more than this machine's 0\.0 GiB"):
        config_check.check_memory(cfg, available=1000)
    config_check.check_memory(cfg, available=10 ** 9)


def test_a_field_without_a_rule_is_refused():
    cfg = config_base.task_config("super_resolution")
    with cfg.unlocked():
        cfg.new_knob = 3
    with pytest.raises(config_check.ConfigValueError, match="new_knob = 3: no range is known for this field"):
        config_check.check(cfg)


def test_long_text_is_bounded_in_the_config_and_in_the_error_line(tmp_path):
    status, text = run_cli(evaluate.cli, "configs/eval/paper_table.py", "--config.methods=" + "x" * 100_000,
                           root=tmp_path / "out")
    assert status == 1 and text == "error: methods has 100000 characters; at most 4096 (a path or a list of names)\n"
    status, text = run_cli(main.cli, "configs/super_resolution.py", "--config.solver.name=" + "x" * 4000,
                           root=tmp_path / "out")
    assert status == 1 and text.startswith("error: unknown solver 'xxx") and len(text) < 600, len(text)
    assert not os.path.exists(tmp_path / "out")
