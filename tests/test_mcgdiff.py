"""MCGdiff: the authors' particle filter replayed step by step (tests/fixtures/mcgdiff.npz), its exactness on a
Gaussian mixture where DPS and DDRM are not, and what it refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import api, operators, prior as prior_lib, solvers
from dps_jax.analytic import calibration, gmm
from dps_jax.solvers import base, mcgdiff
from helpers import load_npz

SHAPE = (4, 4, 1)


def fixture_problem(f, case):
    """The reference case's operator (its SVD given), network (eps = tanh(W x + b t / 1000)) and problem."""
    g = lambda k: np.asarray(f[f"{case}_{k}"])
    u, s, vh, w, b = g("u"), g("s"), g("vh"), g("w"), g("b")
    a = jnp.asarray(u @ np.diag(s) @ vh[:len(s)], jnp.float32)
    op = operators.from_callables(lambda x: a @ x.reshape(-1), SHAPE, linear=True, svd=(u, s, vh.T), name="fixture")
    apply = lambda params, x, t: jnp.tanh(params["w"] @ x.reshape(-1) + params["b"] * (t / 1000.0)).reshape(x.shape)
    prior = prior_lib.Prior(params={"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)},
                            apply=apply, var_type="fixed_small", clip_denoised=False)
    problem = solvers.make_problem(op, g("y"), SHAPE, sigma=float(g("sigma")))
    return prior, problem


@pytest.mark.parametrize("case", ["noisy", "noiseless"])
def test_matches_the_reference_particle_filter_step_by_step(case):
    """Teacher-forced with the reference's draws and ancestors: every transition's particles, the weights the
    ancestors were drawn from, and the final particles and log weights."""
    f = load_npz("mcgdiff.npz")
    g = lambda k: np.asarray(f[f"{case}_{k}"])
    prior, problem = fixture_problem(f, case)
    particles = g("initial").shape[0]
    options = solvers.make_options(mcgdiff.SOLVER, particles=particles, steps=len(g("timesteps")))
    grid = mcgdiff.SOLVER.step_grid(options)
    np.testing.assert_array_equal(np.concatenate([[0], np.asarray(grid.xs["t"])[::-1]]), g("timesteps"))
    problem = base.prepare(mcgdiff.SOLVER, problem, options, SHAPE)
    state = mcgdiff.init(jax.random.PRNGKey(0), problem, prior, options, SHAPE)
    state["v"] = jnp.asarray(g("initial").reshape((particles,) + SHAPE))
    step = jax.jit(lambda st, c, nz: mcgdiff.update(st, c, nz, problem, prior, options))
    rows = len(g("z"))
    assert rows == grid.xs["t"].shape[0]
    for k in range(rows):
        np.testing.assert_allclose(np.asarray(state["v"]).reshape(particles, -1), g("particles_in")[k], rtol=1e-5, atol=2e-5,
                                   err_msg=f"particles entering transition {k}")
        c = jax.tree_util.tree_map(lambda a: a[k], grid.xs)
        noise = {"z": jnp.asarray(g("z")[k].reshape((particles,) + SHAPE)), "u": jnp.zeros(particles),
                 "pick": jnp.asarray(0.5), "ancestors": jnp.asarray(g("ancestors")[k], jnp.int32)}
        state, record = step(state, c, noise)
        if k < int(g("filtered")):
            np.testing.assert_allclose(np.asarray(state["log_w"]), g("logits")[k], rtol=1e-4, atol=1e-3,
                                       err_msg=f"log weights of transition {k}")
    np.testing.assert_allclose(np.asarray(state["v"]).reshape(particles, -1), g("particles"), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(state["final_log_w"]), g("log_weights"), rtol=1e-4, atol=1e-3)
    assert np.isfinite(record["distance"]) and 1.0 <= float(state["ess"]) <= particles


def test_reference_grid_and_taus():
    """linspace(0, T - 1, n) floored, one row per transition (n - 1 network calls per particle); tau_i is the
    grid time where sigma_y^2 ab ~ (1 - ab) s_i^2, 0 for every coordinate without noise."""
    grid = mcgdiff.SOLVER.step_grid(solvers.make_options(mcgdiff.SOLVER, steps=100, particles=64))
    assert grid.evaluations == 64 * 99
    t = np.asarray(grid.xs["t"])
    assert t[0] == 999 and t[-1] == 10 and np.asarray(grid.xs["t_prev"])[-1] == 0 and len(t) == 99
    ab = np.asarray(grid.xs["grid_ab"][0])
    s = jnp.asarray([[[2.0], [0.1]]])
    tau, ab_tau, tau_min = mcgdiff.taus(s, jnp.ones_like(s, bool), 0.5, grid.xs["grid_t"][0], grid.xs["grid_ab"][0])
    for i, si in enumerate([2.0, 0.1]):
        want = np.asarray(grid.xs["grid_t"][0])[np.argmin(np.abs(0.25 * ab - (1 - ab) * si ** 2))]
        assert int(tau[0, i, 0]) == want
    assert int(tau_min) == int(tau.min()) and int(tau[0, 0, 0]) < int(tau[0, 1, 0])
    zero, _, zero_min = mcgdiff.taus(s, jnp.ones_like(s, bool), 0.0, grid.xs["grid_t"][0], grid.xs["grid_ab"][0])
    assert int(jnp.abs(zero).max()) == 0 and int(zero_min) == 0


def test_exact_on_a_mixture_where_dps_is_not():
    """25 unit Gaussians on a 5 x 5 grid of spacing 8 (MCGdiff's test bed, in 2-D), one noisy linear
    measurement: MCGdiff's samples sit at the exact posterior (its modes' shares and sliced W2 as exact draws
    score), DPS's far from it."""
    rng = np.random.default_rng(0)
    means = np.array([[8.0 * i, 8.0 * j] for i in range(-2, 3) for j in range(-2, 3)])
    weights = rng.standard_normal(25) ** 2
    mix = gmm.make(weights / weights.sum(), means, np.stack([np.eye(2)] * 25))
    shape, a, sigma, num = (1, 2, 1), np.array([[1.0, 0.3]]), 0.5, 200
    op = operators.from_callables(lambda x: (jnp.asarray(a, jnp.float32) @ x.reshape(-1)).reshape(1, 1, 1), shape,
                                  linear=True)
    y = np.array([[[0.3]]], np.float32)
    prior, exact = gmm.as_prior(mix, shape), gmm.posterior(mix, a, y.reshape(-1), sigma)
    key = jax.random.PRNGKey(1)

    def score(solver, options):
        out = api.sample(prior, op, y, solver=solver, options=options, sigma=sigma, num_samples=num,
                         image_shape=shape)
        return calibration.compare(jnp.asarray(out["samples"].reshape(num, -1)), exact, key)

    floor = calibration.floor(exact, num, jax.random.PRNGKey(2))
    many, dps = score("mcgdiff", {"particles": 32, "steps": 25}), score("ps", {"steps": 20, "scale": 1.0})
    # The posterior puts 0.99 on one mode: the share of samples per mode (total variation) is the stable
    # figure (over seeds: exact draws 0.005-0.02, MCGdiff 0.007-0.026, DPS 0.6, DDRM 0.3, MCGdiff with 2
    # particles 0.4).
    tv = lambda r: r["weight_error"]
    assert tv(many) < 0.05 and tv(many) < 0.2 * tv(dps), (many, dps, floor)
    assert many["sliced_wasserstein"] < min(2.0 * floor["sliced_wasserstein"] + 0.5, 0.4 * dps["sliced_wasserstein"])


def test_refusals_name_the_problem():
    op = operators.build("inpainting", (8, 8, 1), mask=np.ones((8, 8, 1), np.float32))
    prior = gmm.as_prior(gmm.make(np.ones(1), np.zeros((1, 64)), np.eye(64)[None]), (8, 8, 1))
    y = np.zeros((8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="needs the Gaussian noise std of y"):
        api.sample(prior, op, y, solver="mcgdiff", options={"steps": 3, "particles": 2})
    with pytest.raises(ValueError, match="models Gaussian measurement noise"):
        api.sample(prior, op, y, solver="mcgdiff", options={"steps": 3}, noise="poisson", sigma=0.05)
    with pytest.raises(ValueError, match="needs a linear operator with an SVD"):
        api.sample(prior, lambda x: jnp.tanh(x), y, solver="mcgdiff", sigma=0.05)
    for bad, message in (({"particles": 0}, "particles must be an integer >= 1"),
                         ({"kappa": 1.0}, r"kappa must be in \(0, 1\)"), ({"steps": 1}, "steps must be an integer >= 2"),
                         ({"eta": 1.5}, r"eta must be in \[0, 1\]")):
        with pytest.raises(ValueError, match=message):
            solvers.make_options(mcgdiff.SOLVER, **bad)
