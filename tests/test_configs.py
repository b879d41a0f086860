"""The task configs: each runs the solver and step count that reached DPS-1000's quality fastest."""

import json
import os

import pytest

from dps_jax import config_base, evaluate
from dps_jax.solvers import config_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_picks_are_the_time_to_quality_picks():
    """DEFAULT_PICKS is what benchmarks/time_to_quality.json found for every task, not a hand-kept guess."""
    with open(os.path.join(REPO, "benchmarks", "time_to_quality.json")) as f:
        tasks = json.load(f)["tasks"]
    found = {task: (s["fastest_to_reference"]["method"], s["fastest_to_reference"]["steps"])
             for task, s in tasks.items()}
    assert found == config_base.DEFAULT_PICKS


@pytest.mark.parametrize("task", config_base.TASKS)
def test_config_runs_its_pick_with_the_guidance_of_its_settings(task):
    settings = config_base.task_config(task, pick=False)
    c = config_base.task_config(task)
    name, steps = config_base.DEFAULT_PICKS[task]
    assert settings.solver.name == "ps" and settings.sampler.steps == 50 and c.solver.name == name
    if name in config_base.STEP_OPTIONS:
        assert c.solver[config_key(name)][config_base.STEP_OPTIONS[name]] == steps
        assert c.sampler.steps == 50 and c.solver.ps.scale == settings.solver.ps.scale
    else:
        assert c.sampler.steps == steps
        for g in config_base.GRADIENT_SOLVERS:        # zeta x steps, the total guidance, is kept
            key = config_key(g)
            assert c.solver[key].scale * steps == pytest.approx(settings.solver[key].scale * 50)
    # Nothing else moves.
    for section in ("operator", "noise", "data", "model", "diffusion"):
        assert c[section].to_dict() == settings[section].to_dict()


@pytest.mark.parametrize("preset", config_base.PAPER_PRESETS)
def test_paper_presets_keep_the_papers_dps(preset):
    for task in ("super_resolution", "phase_retrieval"):
        c = config_base.task_config(task, preset)
        assert c.to_dict() == config_base.task_config(task, preset, pick=False).to_dict()
        assert c.solver.name == "ps" and c.sampler.steps == 1000


def test_comparison_table_cells_use_the_settings_not_the_pick():
    """The table's DDRM runs its own 20 steps and DPS its 50 with zeta_50, whatever the task's default is."""
    from configs.eval import paper_table

    cfg = paper_table.get_config()
    ddrm = evaluate.task_config(cfg, "super_resolution", "ddrm")
    assert ddrm.solver.ddrm.steps == 20 and ddrm.solver.name == "ddrm"
    ps = evaluate.task_config(cfg, "inpainting_box", "ps")
    assert ps.sampler.steps == 50 and ps.solver.ps.scale == config_base.task_config("inpainting_box", pick=False).solver.ps.scale


def test_set_steps_puts_the_count_where_the_solver_reads_it():
    c = config_base.task_config("super_resolution", pick=False)
    config_base.set_steps(c, "daps", 7)
    assert c.solver.daps.annealing_steps == 7 and c.sampler.steps == 50
    scale = c.solver.mcg.scale
    config_base.set_steps(c, "ps", 200, rescale_zeta=False)
    assert c.sampler.steps == 200 and c.solver.mcg.scale == scale
    config_base.set_steps(c, "mcg", 100)
    assert c.sampler.steps == 100 and c.solver.mcg.scale == pytest.approx(scale * 2)
