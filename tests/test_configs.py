"""The task configs say what runs: each names its default solver and step count (the time-to-quality pick),
every solver's options are its own, and nothing is rescaled out of sight."""

import json
import os

import pytest

from dps_jax import config_base, evaluate, experiment, solvers
from dps_jax.solvers import config_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def picks():
    """{task: (solver, steps)}: what benchmarks/time_to_quality.json found fastest to DPS-1000's quality."""
    with open(os.path.join(REPO, "benchmarks", "time_to_quality.json")) as f:
        tasks = json.load(f)["tasks"]
    return {task: (s["fastest_to_reference"]["method"], s["fastest_to_reference"]["steps"]) for task, s in tasks.items()}


@pytest.mark.parametrize("task", config_base.TASKS)
def test_each_file_names_the_time_to_quality_pick(task):
    """The default is written in the task's own file (not found elsewhere), and it is the benchmark's pick."""
    name, steps = picks()[task]
    c = config_base.task_config(task)
    assert c.solver.name == name and c.solver[config_key(name)].steps == steps and c.sampler.steps == 0
    source = open(os.path.join(REPO, "configs", f"{task}.py")).read()
    assert f'use_solver(c, "{name}", steps={steps}' in source


@pytest.mark.parametrize("task", config_base.TASKS)
def test_a_dps_pick_keeps_the_total_guidance_of_its_settings(task):
    settings, c = config_base.task_config(task, pick=False), config_base.task_config(task)
    assert settings.solver.name == "ps" and settings.solver.ps.steps == 50
    if c.solver.name == "ps":               # zeta x steps, the total guidance, in one visible expression
        source = open(os.path.join(REPO, "configs", f"{task}.py")).read()
        assert f"scale=ZETA * 50 / {c.solver.ps.steps})" in source
        assert c.solver.ps.scale * c.solver.ps.steps == pytest.approx(settings.solver.ps.scale * 50)
    for section in ("operator", "noise", "data", "model", "diffusion", "sampler"):
        assert c[section].to_dict() == settings[section].to_dict()
    for name in solvers.REGISTRY:           # only the picked solver's section moves
        if name != c.solver.name:
            assert c.solver[config_key(name)].to_dict() == settings.solver[config_key(name)].to_dict()


@pytest.mark.parametrize("preset", config_base.PAPER_PRESETS)
def test_paper_presets_keep_the_papers_dps(preset):
    for task in ("super_resolution", "phase_retrieval"):
        c = config_base.task_config(task, preset)
        assert c.to_dict() == config_base.task_config(task, preset, pick=False).to_dict()
        assert c.solver.name == "ps" and c.solver.ps.steps == 1000 and c.solver.ps.sampler == "ddpm"


def test_each_solver_keeps_its_own_sampler_and_step_count():
    """PiGDM runs DDIM, its reference's default (a shared `sampler.name` once made it DDPM); DDRM runs its own
    20 steps and DPS the config's 50 in the same config; `sampler.steps`, when set, is the running solver's."""
    c = config_base.task_config("super_resolution", pick=False)
    c.solver.name = "pigdm"
    options = experiment.solver_options(c)
    assert options["sampler"] == "ddim" and options["eta"] == 0.0 and options["steps"] == 50
    assert solvers.make_options(solvers.get("pigdm"), **options).sampler == "ddim"
    assert c.solver.ddrm.steps == 20 and c.solver.ps.steps == 50 and c.solver.ps.sampler == "ddpm"
    c.solver.name, c.sampler.steps = "ddrm", 7
    assert experiment.solver_options(c)["steps"] == 7


def test_comparison_table_cells_use_the_settings_not_the_pick():
    """The table's DDRM runs its own 20 steps and DPS its 50 with zeta_50, whatever the task's default is;
    `cells` overrides reach every cell."""
    from configs.eval import paper_table

    cfg = paper_table.get_config()
    ddrm = evaluate.task_config(cfg, "super_resolution", "ddrm")
    assert ddrm.solver.ddrm.steps == 20 and ddrm.solver.name == "ddrm"
    ps = evaluate.task_config(cfg, "inpainting_box", "ps")
    settings = config_base.task_config("inpainting_box", pick=False)
    assert ps.solver.ps.steps == 50 and ps.solver.ps.scale == settings.solver.ps.scale
    cfg.cells.solver.ddrm.eta, cfg.cells.model.dtype = 0.1, "bfloat16"
    cell = evaluate.task_config(cfg, "gaussian_deblur", "ddrm")
    assert cell.solver.ddrm.eta == 0.1 and cell.model.dtype == "bfloat16" and cell.solver.ddrm.eta_b == 1.0


def test_the_run_says_what_runs():
    c = config_base.task_config("super_resolution")
    exp = experiment.setup(c)
    line = exp.describe()
    assert line.startswith("ddrm: 25 steps (solver.ddrm.steps)") and "eta 0.85" in line and "cutoff 0.03" in line
    assert experiment.unused_settings(c, ["solver.ps.scale", "solver.ddrm.eta", "num_samples"]) == ["solver.ps.scale"]


# Where a paper preset departs from what its reference's config passes, and why.
DEPARTURES = {
    # the official phase_retrieval_config.yaml passes 1.0; the presets have kept 0.4 since the first port
    # (an open question of issue 39: which value the paper's Table 3 used)
    ("phase_retrieval", "ps.scale"): 0.4,
}


def test_paper_presets_take_the_settings_the_references_configs_pass():
    """Per task, the paper presets against tests/fixtures/reference_defaults.json (read from the references'
    own configs by tools/make_default_fixtures.py): DPS's step size and noise (official DPS configs), DAPS's
    Langevin settings (its task configs, pixel group) and its grids (edm_daps.yaml), PiGDM's and RED-diff's
    options (RED-diff's algo configs). A departure must be listed in DEPARTURES."""
    from dps_jax.solvers import daps
    from helpers import fixture_path

    ref = json.load(open(fixture_path("reference_defaults.json")))
    for task in config_base.TASKS:
        c = config_base.task_config(task, "ffhq256", pick=False)
        d = solvers.make_options(solvers.get("daps"), **{k: v for k, v in c.solver.daps.items()})
        checks = {"ps.scale": (c.solver.ps.scale, ref["dps"][task]["scale"]),
                  "noise.sigma": (c.noise.sigma, ref["dps"][task]["sigma"]),
                  "daps.lr": (d.lr, ref["daps"][task]["lr"]), "daps.tau": (d.tau, ref["daps"][task]["tau"]),
                  "daps.lr_min_ratio": (d.lr_min_ratio, ref["daps"][task]["lr_min_ratio"]),
                  "daps.langevin_steps": (daps.counts(d)[2], ref["daps"][task]["num_steps"])}
        assert ref["dps"][task]["method"] == "ps" and ref["daps"][task]["mc_algo"] == "langevin"
        for name, (ours, theirs) in checks.items():
            assert ours == pytest.approx(DEPARTURES.get((task, name), theirs)), (task, name, ours, theirs)
    annealing, ode = ref["daps_sampler"]["annealing"], ref["daps_sampler"]["diffusion"]
    d = solvers.make_options(solvers.get("daps"))
    assert daps.counts(d)[:2] == (annealing["num_steps"], ode["num_steps"])
    assert (d.sigma_max, d.sigma_min, d.ode_sigma_min) == (annealing["sigma_max"], annealing["sigma_min"], ode["sigma_min"])
    assert annealing["timestep"] == ode["timestep"] == f"poly-{int(d.rho)}"
    p, r = solvers.make_options(solvers.get("pigdm")), solvers.make_options(solvers.get("reddiff"))
    pg, rd = ref["reddiff"]["pgdm"], ref["reddiff"]["reddiff"]
    assert (p.eta, p.weight, pg["awd"]) == (pg["eta"], pg["grad_term_weight"], True)
    assert (r.lr, r.lam, r.obs_weight) == (rd["lr"], rd["grad_term_weight"], rd["obs_weight"])


def test_pnpdm_runs_the_schedule_its_grid_found_and_the_reference_on_the_paper_presets():
    """The shipped prior's PnP-DM schedule is the best of benchmarks/pnpdm_grid.json on every task it was
    searched on; the paper presets keep the reference's run script (commands.sh), phase retrieval's rho_min
    its 0.1."""
    from benchmarks import pnpdm_grid

    with open(os.path.join(REPO, "benchmarks", "pnpdm_grid.json")) as f:
        searched = json.load(f)["tasks"]
    for task, found in searched.items():
        best = found["best"]
        c = config_base.task_config(task, pick=False).solver.pnpdm
        want = pnpdm_grid.schedule(best["steps"], best["rho_min"])
        assert {k: c[k] for k in want} == pytest.approx(want), task
    reference = solvers.make_options(solvers.get("pnpdm"))
    for task in config_base.TASKS:
        c = config_base.task_config(task, "ffhq256", pick=False).solver.pnpdm
        assert (c.steps, c.rho, c.rho_decay, c.denoiser_steps) == (100, 10.0, 0.9, 100) == (
            reference.steps, reference.rho, reference.rho_decay, reference.denoiser_steps)
        assert c.rho_min == (0.1 if task == "phase_retrieval" else 0.3)


def test_diffpir_runs_what_its_scripts_run():
    """Per task, DiffPIR's step count, zeta and lambda are those the reference's own script for the task runs
    (tests/fixtures/reference_defaults.json: the header values and the experiment loops' lists, read from
    the scripts): deblurring lambda 7, zeta 0.3; inpainting 20 steps, zeta 1; super-resolution zeta 0.25 and
    a lambda from its sweep 2 .. 12 (2: the best on the shipped prior, benchmarks/diffpir_grid.json)."""
    with open(os.path.join(REPO, "tests", "fixtures", "reference_defaults.json")) as f:
        scripts = json.load(f)["diffpir"]
    script_of = {"super_resolution": "sisr", "inpainting_box": "inpainting", "inpainting_random": "inpainting",
                 "gaussian_deblur": "deblur", "motion_deblur": "deblur"}
    for task, name in script_of.items():
        ref = scripts[name]
        assert ref["skip_type"] == "quad" and len(ref["zetas"]) == 1
        for preset in ("", "ffhq256"):
            c = config_base.task_config(task, preset, pick=False).solver.diffpir
            assert c.steps == ref["iter_num"] and c.zeta == pytest.approx(ref["zetas"][0]), (task, preset)
            assert c.lam in ref["lambdas"], (task, preset, c.lam, ref["lambdas"])


def test_a_second_checkout_reads_its_own_configs(tmp_path):
    """A checkout run with PYTHONPATH while another copy is installed in the environment (a git worktree for a
    benchmark at a fixed commit) must read the task configs of its own commit."""
    import shutil
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(config_base.__file__)))
    copy = tmp_path / "checkout"
    shutil.copytree(os.path.join(root, "dps_jax"), copy / "dps_jax", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copytree(os.path.join(root, "configs"), copy / "configs")
    shutil.copy(os.path.join(root, "setup.cfg"), copy / "setup.cfg")
    out = subprocess.run([sys.executable, "-c", "from dps_jax import config_base; print(config_base.CONFIG_DIR)"],
                         env={**os.environ, "PYTHONPATH": str(copy)}, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(copy / "configs")
    assert config_base.CONFIG_DIR == os.path.join(root, "configs")


def test_the_bks_solvers_run_the_references_counts_on_the_paper_presets_and_fewer_here():
    """BKS-generic and BKS-styleGAN2 keep their references' iteration counts on the paper presets (the Options
    defaults, their generic_deblur/default.yml and stylegan2.yml) and run the shortened counts on the shipped
    setting (about a minute an image on 2 CPU cores instead of 20-30)."""
    generic, stylegan = solvers.make_options(solvers.get("bks_generic")), solvers.make_options(solvers.get("bks_stylegan"))
    assert (generic.warmup_iters, generic.steps) == (300, 5000)
    assert (stylegan.warmup_iters, stylegan.steps, stylegan.x_iters, stylegan.k_iters) == (150, 25, 300, 200)
    for preset in ("ffhq256", "imagenet256"):
        c = config_base.task_config("nonlinear_deblur", preset, pick=False).solver
        assert (c.bks_generic.warmup_iters, c.bks_generic.steps, c.bks_generic.dip_levels) == (300, 5000, 5)
        assert (c.bks_stylegan.warmup_iters, c.bks_stylegan.steps, c.bks_stylegan.x_iters,
                c.bks_stylegan.k_iters) == (150, 25, 300, 200)
    c = config_base.task_config("nonlinear_deblur", pick=False).solver
    assert (c.bks_generic.warmup_iters, c.bks_generic.steps, c.bks_generic.dip_levels) == (50, 400, 4)
    assert (c.bks_stylegan.warmup_iters, c.bks_stylegan.steps, c.bks_stylegan.x_iters,
            c.bks_stylegan.k_iters) == (50, 4, 100, 50)


def test_sitcom_keeps_its_reference_learning_rate_within_the_noise_of_its_grid():
    """Every config runs SITCOM's reference lr (0.02); benchmarks/sitcom_grid.json (and its widening on the
    Gaussian blur) finds no rate better than that by half a standard error on any task searched."""
    reference = solvers.make_options(solvers.get("sitcom")).lr
    assert reference == pytest.approx(0.02)
    for preset in ("fmnist32", "ffhq256"):
        for task in config_base.TASKS:
            assert config_base.task_config(task, preset).solver.sitcom.lr == pytest.approx(reference), (task, preset)
    rows = {}
    for name in ("sitcom_grid.json", "sitcom_grid_wide.json"):
        with open(os.path.join(REPO, "benchmarks", name)) as f:
            for task, found in json.load(f)["tasks"].items():
                rows.setdefault(task, []).extend(found["grid"])
    assert set(rows) == {"super_resolution", "gaussian_deblur", "inpainting_box"}
    for task, grid in rows.items():
        at_reference = [r for r in grid if r["lr"] == pytest.approx(reference)]
        assert len(at_reference) == 1, task
        best = max(grid, key=lambda r: r["psnr"])
        assert best["psnr"] - at_reference[0]["psnr"] < 0.5 * best["se"], (task, best["lr"])
