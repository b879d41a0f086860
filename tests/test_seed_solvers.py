"""The conditioning strategies of seed 003 (no reference code; closed forms and exact relations):
unit-normalised DPS, ScoreALD's annealed step, SDEdit's start from y."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import gaussian_prior, row, tiny_prior_file
from dps_jax import api, diffusion, operators, schedule, solvers
from dps_jax.solvers import dps, scoreald, sdedit

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def setup():
    op = operators.build("inpainting", SHAPE, jax.random.PRNGKey(0), mask_type="random", drop_fraction=(0.5, 0.5))
    y = op(jnp.full(SHAPE, 0.7))
    problem = solvers.make_problem(op, y, SHAPE)
    coefs = diffusion.step_coefficients(schedule.build_tables("linear", 1000, "10"))
    x_t = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
    noise = {"x": jax.random.normal(jax.random.PRNGKey(2), SHAPE)}
    return problem, gaussian_prior(0.5), coefs, x_t, noise


def gradient_and_unconditional(problem, pr, c, x_t, noise, options):
    den, d, g = dps.denoise_with_gradient(x_t, c, pr, lambda x0: dps.distance(problem, x0))
    return g, solvers.base.reverse_update(x_t, den, c, noise["x"], options)


def test_unit_dps_steps_a_fixed_length_against_the_gradient(setup):
    problem, pr, coefs, x_t, noise = setup
    for i in (0, 5, 9):
        c = row(coefs, i)
        opts = solvers.make_options(dps.SOLVER_UNIT, scale=0.4)
        x, _ = dps.SOLVER_UNIT.update(x_t, c, noise, problem, pr, opts)
        g, x_prime = gradient_and_unconditional(problem, pr, c, x_t, noise, opts)
        step = np.asarray(x - x_prime).ravel()
        assert np.linalg.norm(step) == pytest.approx(0.4, rel=1e-5)
        cosine = step @ np.asarray(g).ravel() / (np.linalg.norm(step) * np.linalg.norm(g))
        assert cosine == pytest.approx(-1.0, abs=1e-5)
        # the same step as DPS with zeta = scale / ||g||
        zeta = 0.4 / float(jnp.linalg.norm(g))
        x_ps, _ = dps.SOLVER.update(x_t, c, noise, problem, pr, solvers.make_options(dps.SOLVER, scale=zeta))
        np.testing.assert_allclose(x, x_ps, atol=1e-5)


def test_scoreald_anneals_linearly_between_its_endpoints(setup):
    problem, pr, coefs, x_t, noise = setup
    opts = solvers.make_options(scoreald.SOLVER, scale_start=2.0, scale_end=6.0)
    for i, lam in ((0, 2.0), (9, 6.0), (3, 2.0 + 4.0 * 3 / 9)):       # coefs run from the first step (i = 0)
        c = row(coefs, i)
        x, _ = scoreald.SOLVER.update(x_t, c, noise, problem, pr, opts)
        g, x_prime = gradient_and_unconditional(problem, pr, c, x_t, noise, opts)
        np.testing.assert_allclose(x, x_prime - lam * g, atol=1e-5)
    # constant endpoints: exactly DPS with that zeta
    flat = solvers.make_options(scoreald.SOLVER, scale_start=3.0, scale_end=3.0)
    c = row(coefs, 4)
    x, _ = scoreald.SOLVER.update(x_t, c, noise, problem, pr, flat)
    x_ps, _ = dps.SOLVER.update(x_t, c, noise, problem, pr, solvers.make_options(dps.SOLVER, scale=3.0))
    np.testing.assert_allclose(x, x_ps, atol=1e-6)


def test_sdedit_waits_above_t_star_then_starts_from_noised_y(setup):
    problem, pr, coefs, _, _ = setup
    opts = solvers.make_options(sdedit.SOLVER, t_star=500)
    x_y = sdedit.start_image(problem, jnp.zeros(SHAPE))
    np.testing.assert_allclose(problem.op(x_y), problem.y, atol=1e-6)          # a point of {A x = y}
    assert float(jnp.abs(x_y * (1 - problem.op.data["mask"])).max()) == 0.0   # nearest 0: zero in the holes
    state = sdedit.init(None, problem, pr, opts, SHAPE)
    t = np.asarray(coefs.t_model)
    first = int(np.argmax(t <= 500))
    for i in range(len(t)):
        c = row(coefs, i)
        noise = sdedit.draw(jax.random.PRNGKey(i), state, problem, opts)
        new, record = sdedit.update(state, c, noise, problem, pr, opts)
        if t[i] > 500:                                                        # nothing happens yet
            assert not bool(new["started"]) and float(jnp.abs(new["x"]).max()) == 0.0
            np.testing.assert_allclose(record["x0_hat"], x_y)
        elif i == first:                                                      # x_t* = q_sample(x_y)
            x_start = diffusion.q_sample(x_y, c, noise["start"])
            want, _ = sdedit.update({"x": x_start, "started": jnp.asarray(True)}, c, noise, problem, pr, opts)
            np.testing.assert_allclose(new["x"], want["x"], atol=1e-6)
        state = new
    assert bool(state["started"])


def test_sdedit_from_t_zero_returns_nearly_the_start_image(tmp_path):
    pr = api.load_prior(tiny_prior_file(tmp_path / "prior.msgpack"))        # any prior: one step at t = 0
    op = operators.build("inpainting", (32, 32, 1), jax.random.PRNGKey(0), mask_type="box", box_len_range=(8, 9),
                         margin=4)
    x = jnp.full((32, 32, 1), -0.9).at[6:26, 8:24].set(0.5)
    y = op(x)
    out = api.sample(pr, op, y, solver="sdedit", options={"steps": 10, "t_star": 0}, num_samples=2)
    x_y = np.asarray(sdedit.start_image(solvers.make_problem(op, y, (32, 32, 1)), jnp.zeros((32, 32, 1))))
    assert np.abs(out["samples"] - x_y).max() < 0.1                        # one step at t = 0 barely moves it
