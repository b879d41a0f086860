import numpy as np
import pytest

from helpers import load_npz
from dps_jax import schedule

FIELDS = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
          "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedules_match_official(name):
    ref = load_npz("diffusion_schedules.npz")
    tables = schedule.make_tables(schedule.get_named_beta_schedule(name, 1000))
    for field in FIELDS:
        got, want = getattr(tables, field), ref[f"{name}_{field}"]
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=0, err_msg=f"{name}_{field}")


@pytest.mark.parametrize("spec", ["1000", "250", "100", "10", "ddim50", "ddim100", "10,20,30", "5,5"])
def test_respacing_matches_official(spec):
    ref = load_npz("diffusion_schedules.npz")
    tables = schedule.build_tables("linear", 1000, spec)
    np.testing.assert_array_equal(tables.timestep_map, ref[f"respace_{spec}"])
    np.testing.assert_allclose(tables.betas, ref[f"respace_{spec}_betas"], rtol=1e-10, atol=0)


def test_respacing_keeps_alphas_cumprod_at_kept_steps():
    full = schedule.build_tables("linear", 1000)
    sub = schedule.build_tables("linear", 1000, "ddim50")
    np.testing.assert_allclose(sub.alphas_cumprod, full.alphas_cumprod[sub.timestep_map], rtol=1e-12)


def test_linear_schedule_scales_with_step_count():
    b = schedule.get_named_beta_schedule("linear", 250)
    assert b[0] == pytest.approx(4e-4) and b[-1] == pytest.approx(0.08)


def test_section_counts_as_list_and_int():
    np.testing.assert_array_equal(schedule.space_timesteps(1000, [10, 20, 30]),
                                  schedule.space_timesteps(1000, "10,20,30"))
    # One section of 100 steps kept 10 times: stride (100 - 1) / (10 - 1) = 11, so 0, 11, ..., 99.
    np.testing.assert_array_equal(schedule.space_timesteps(100, 10), np.arange(0, 100, 11))


@pytest.mark.parametrize("bad, match", [
    (("quadratic", 1000, None), "unknown beta schedule 'quadratic'"),
    (("linear", 0, None), "num_timesteps must be a positive integer, got 0"),
    (("linear", 1000, "2000"), "section 0 has 1000 steps, cannot keep 2000"),
    (("linear", 1000, "ddim999"), "no integer stride gives exactly 999"),
    (("linear", 1000, "ten"), "bad respacing 'ten'"),
    (("linear", 1000, "ddimx"), "bad respacing 'ddimx'"),
    (("linear", 1000, "stride0"), r"respacing 'stride0': N must be in \[1, 1000\]"),
    (("linear", 1000, "stridex"), "expected 'strideN' with an integer N"),
    (("linear", 1000, "0"), "at least one step"),
])
def test_bad_schedule_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        schedule.build_tables(*bad)


@pytest.mark.parametrize("steps", [10, 15, 20, 50, 70, 100, 1000])
def test_ddrm_pigdm_and_reddiff_step_as_their_references(steps):
    """DDRM's runner and RED-diff's get_timesteps (its PiGDM and RED-diff) keep range(0, T, T // steps), with
    the previous step of each the one before it (-1 for the first): one more step than asked where steps
    does not divide T (15: stride 66, 16 steps ending at 990; 70: stride 14, 72 steps)."""
    from dps_jax import solvers
    from dps_jax.solvers import base

    want = list(range(0, 1000, 1000 // steps))
    assert schedule.space_timesteps(1000, f"stride{steps}").tolist() == want
    for name in ("ddrm", "pigdm", "reddiff"):
        spec = solvers.get(name)
        grid = spec.grid(solvers.make_options(spec, steps=steps), base.Schedule("linear", 1000))
        assert grid.evaluations == len(want) and np.asarray(grid.xs.t_model).tolist() == want[::-1], name
    if steps == 15:
        assert len(want) == 16 and want[-1] == 990


def test_every_step_count_gives_the_references_grid():
    """For T = 1 .. 1000: the evenly spaced respacing "T" (DPS, MCG, Score-SDE and the other table walkers)
    is the official DPS code's space_timesteps(1000, str(T)), and "strideT" (DDRM, PiGDM, RED-diff) is
    RED-diff's get_timesteps (tests/fixtures/reference_grids.npz, from the references' own functions)."""
    f = load_npz("reference_grids.npz")
    for name, spec in (("dps_space_timesteps", str), ("reddiff_get_timesteps", lambda t: f"stride{t}")):
        grids, offsets = f[name], f[f"{name}_offsets"]
        assert len(offsets) == 1001
        for t in range(1, 1001):
            np.testing.assert_array_equal(schedule.space_timesteps(1000, spec(t)), grids[offsets[t - 1]:offsets[t]],
                                          err_msg=f"{name} T={t}")


def test_every_quadratic_step_count_is_diffpirs_grid_or_refused():
    """For T = 1 .. 1000: "quadT" keeps 999 - seq of the `seq` DiffPIR's SR script builds (its own lines,
    tests/fixtures/reference_grids.npz); a T whose seq repeats a timestep (the script then runs the repeat),
    and T = 1 (seq [-1]), are refused."""
    f = load_npz("reference_grids.npz")
    seqs, offsets = f["diffpir_quad_seq"], f["diffpir_quad_seq_offsets"]
    refused = []
    for t in range(1, 1001):
        seq = seqs[offsets[t - 1]:offsets[t]]
        if t == 1 or len(np.unique(seq)) != len(seq):
            with pytest.raises(ValueError):
                schedule.space_timesteps(1000, f"quad{t}")
            refused.append(t)
        else:
            np.testing.assert_array_equal(schedule.space_timesteps(1000, f"quad{t}"), np.sort(999 - seq),
                                          err_msg=f"T={t}")
    assert refused == [1] + list(range(502, 1001))          # repeats from T = 502 on
