"""The pieces of MCGdiff's authors' Gaussian-mixture benchmark (gabrielvc/benchopts_inverse_problem_diffusion_prior,
`tests/fixtures/mcgdiff_benchopt_problems.npz` from `tools/make_benchopt_gmm.py`): its problems decoded as
its code drew them, its decreasing schedule, its MCGdiff grid, and its max-sliced Wasserstein estimator."""

import jax
import numpy as np
import pytest

from dps_jax import schedule, solvers
from dps_jax.analytic import calibration, gmm
from dps_jax.solvers import mcgdiff
from helpers import load_npz

DIMS = ("1,8", "2,8", "4,8")


def problem(f, dims):
    g = lambda k: np.asarray(f[f"{dims}/{k}"])
    mix = gmm.make(g("weights") / g("weights").sum(), g("means"), np.stack([np.eye(8)] * 25))
    return g, mix


def test_linear_reversed_is_the_benchmark_schedule():
    """alphas_cumprod = cumprod([1, 1 - linspace(0.02, 1e-4, 999)]) as its dataset builds it (float32 there;
    our beta_0 is 1e-6, not 0)."""
    f = load_npz("mcgdiff_benchopt_problems.npz")
    ab = schedule.build_tables("linear_reversed", 1000).alphas_cumprod
    np.testing.assert_allclose(ab, f["1,8/alphas_cumprod"], rtol=1e-5, atol=0)
    assert ab[1] == pytest.approx(0.98 * (1 - 1e-6)) and np.all(np.diff(ab) < 0)
    betas = schedule.get_named_beta_schedule("linear_reversed", 1000)
    assert betas[0] == 1e-6 and betas[1] == 0.02 and betas[-1] == pytest.approx(1e-4)


@pytest.mark.parametrize("dims", DIMS)
def test_exact_posterior_agrees_with_the_benchmarks_own_draws(dims):
    """Our exact posterior of its decoded problem has the mean and covariance of the 10,000 draws its code took
    from its own posterior (within their sampling error)."""
    f = load_npz("mcgdiff_benchopt_problems.npz")
    g, mix = problem(f, dims)
    exact = gmm.posterior(mix, g("a"), g("y"), float(np.sqrt(g("var"))))
    mean, var = calibration.moments(exact)
    se = np.sqrt(np.diag(g("reference_cov")) / 10_000)
    assert np.all(np.abs(mean - g("reference_mean")) < 5 * se + 1e-3), (mean, g("reference_mean"))
    np.testing.assert_allclose(var, np.diag(g("reference_cov")), rtol=0.1, atol=0.05)
    # and y is A x_0 plus noise of its sigma
    r = g("y") - g("a") @ g("x0")
    assert np.linalg.norm(r) < 4 * np.sqrt(g("var") * len(r))


@pytest.mark.parametrize("dims,counted", [("1,8", 940), ("2,8", 1787), ("4,8", 3765)])
def test_adapted_grid_is_the_benchmarks(dims, counted):
    """With the single 'tau' the reference counts (an index into its sorted, flattened distances, past the
    end of the scan), our grid is the reference's `get_optimal_timesteps_from_singular_values`, time for
    time; with the true taus it keeps each of them."""
    f = load_npz("mcgdiff_benchopt_problems.npz")
    g, _ = problem(f, dims)
    ab, s, sigma = g("alphas_cumprod"), np.linalg.svd(g("a"), compute_uv=False), float(np.sqrt(g("var")))
    np.testing.assert_array_equal(mcgdiff.adapted_timesteps(ab, s, sigma, 100, taus=[counted]),
                                  g("reference_grid"))
    ts = mcgdiff.adapted_timesteps(ab, s, sigma, 100)
    taus = {int(np.argmin(np.abs(sigma ** 2 * ab - (1 - ab) * si ** 2))) for si in s} - {0}
    assert len(ts) == 100 and ts[0] == 0 and ts[-1] == 999 and np.all(np.diff(ts) > 0)
    assert taus <= set(ts.tolist())


def test_timesteps_option_sets_the_grid():
    opts = solvers.make_options(mcgdiff.SOLVER, particles=4, timesteps="0,3,10,999")
    grid = mcgdiff.SOLVER.step_grid(opts)
    assert grid.evaluations == 4 * 3
    np.testing.assert_array_equal(np.asarray(grid.xs["t"]), [999, 10, 3])
    np.testing.assert_array_equal(np.asarray(grid.xs["t_prev"]), [10, 3, 0])
    for bad in ("3,10", "0,10,10", "0,x", "0"):
        with pytest.raises(ValueError, match="mcgdiff timesteps"):
            solvers.make_options(mcgdiff.SOLVER, timesteps=bad)
    with pytest.raises(ValueError, match="the schedule has 1000 steps"):
        mcgdiff.SOLVER.step_grid(solvers.make_options(mcgdiff.SOLVER, timesteps="0,1000"))


def test_wasserstein_1d_and_max_sliced():
    """Closed forms: W2({0, 1}, {0, 1/2, 1}) = sqrt(1/12); a set and three copies of it shifted by c are |c|
    apart in one dimension; with equal sizes it is the sorted-pairs formula; the max over directions is at
    least every direction's value."""
    np.testing.assert_allclose(calibration.wasserstein_1d([[0.0], [1.0]], [[0.0], [0.5], [1.0]]), [np.sqrt(1 / 12)],
                               rtol=1e-12)
    a = np.random.default_rng(0).normal(size=(300, 1))
    key = jax.random.PRNGKey(0)
    assert calibration.max_sliced_wasserstein(a, np.concatenate([a, a, a]) - 0.7, key) == pytest.approx(0.7, rel=1e-9)
    assert calibration.max_sliced_wasserstein(a, np.concatenate([a, a]), key) == pytest.approx(0.0, abs=1e-12)
    u, v = np.random.default_rng(1).normal(size=(2, 200, 5))
    sorted_pairs = np.sqrt(np.mean((np.sort(u, 0) - np.sort(v, 0)) ** 2, 0))
    np.testing.assert_allclose(calibration.wasserstein_1d(u, v), sorted_pairs, rtol=1e-12)
    x, z = np.random.default_rng(2).normal(size=(400, 3)), np.random.default_rng(3).normal(size=(900, 3))
    z[:, 0] += 2.0                                             # the sets differ along e_1 by a shift of 2
    m = calibration.max_sliced_wasserstein(x, z, key, projections=400)
    assert 1.8 < m < 2.3
    with pytest.raises(ValueError, match="two point sets"):
        calibration.max_sliced_wasserstein(x, z[:, :2], key)
