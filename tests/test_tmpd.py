"""TMPD: the authors' two DDPM chains (tests/fixtures/tmpd.npz) step for step, exactness on a Gaussian prior,
and what it refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import api, operators, prior as prior_lib, solvers
from dps_jax.analytic import gmm
from dps_jax.solvers import base, tmpd
from helpers import load_npz

SHAPE = (4, 4, 1)


@pytest.mark.parametrize("case", ["full", "diag"])
def test_matches_the_reference_chain(case):
    """The step's mean and std of the reference's KPDDPM (full A J A^T) and KPDDPMplus (its row-sum diagonal,
    for a mask) at five timesteps of 1000, the same random network on both sides."""
    f = load_npz("tmpd.npz")
    w, b, sigma = (jnp.asarray(f[k], jnp.float32) for k in ("w", "b", "sigma"))
    apply = lambda params, x, t: jnp.tanh(params["w"] @ x.reshape(-1) + params["b"] * (t / 1000.0)).reshape(x.shape)
    prior = prior_lib.Prior(params={"w": w, "b": b}, apply=apply, var_type="fixed_small", clip_denoised=False)
    matrix = jnp.asarray(f["a"] if case == "full" else np.diag(f["mask"]), jnp.float32)
    op = operators.from_callables(lambda x: matrix @ x.reshape(-1), SHAPE, linear=True)
    problem = solvers.make_problem(op, f[f"{case}_y"], SHAPE, sigma=float(sigma))
    options = solvers.make_options(tmpd.SOLVER, steps=1000, covariance=case)
    problem = base.prepare(tmpd.SOLVER, problem, options, SHAPE)
    xs = tmpd.SOLVER.step_grid(options).xs
    step = jax.jit(lambda x, c: tmpd.update(x, c, {"x": jnp.zeros_like(x)}, problem, prior, options)[0])
    for i, k in enumerate(np.asarray(f["timesteps"])):
        c = jax.tree_util.tree_map(lambda a: a[999 - int(k)], xs)
        assert int(c.t_model) == k
        mean = np.asarray(step(jnp.asarray(f[f"{case}_x"][i], jnp.float32), c))
        np.testing.assert_allclose(mean, f[f"{case}_mean"][i], rtol=1e-4, atol=1e-5, err_msg=f"step t = {k}")
        np.testing.assert_allclose(np.sqrt(float(c.posterior_variance)), f[f"{case}_std"][i], rtol=1e-5)


def test_full_covariance_samples_a_gaussian_posterior():
    """For a Gaussian prior Tweedie's moments are exact, so TMPD's p(y | x_t) is: its samples have the exact
    posterior's mean and covariance (within sampling error and the DDPM step's own discretisation)."""
    rng = np.random.default_rng(0)
    d, shape, num, sigma = 4, (2, 2, 1), 2000, 0.2
    root = rng.standard_normal((d, d)) * 0.5
    cov = root @ root.T + 0.2 * np.eye(d)
    mix = gmm.make(np.ones(1), rng.standard_normal((1, d)) * 0.5, cov[None])
    a = rng.standard_normal((2, d))
    op = operators.from_callables(lambda x: jnp.asarray(a, jnp.float32) @ x.reshape(-1), shape, linear=True)
    y = np.array([0.7, -0.4], np.float32)
    exact = gmm.posterior(mix, a, y, sigma)
    out = api.sample(gmm.as_prior(mix, shape), op, y, solver="tmpd", options={"steps": 200, "covariance": "full"},
                     sigma=sigma, num_samples=num, image_shape=shape)
    x = out["samples"].reshape(num, d).astype(np.float64)
    want_mean, want_cov = np.asarray(exact.means[0], np.float64), exact.covariances()[0]
    stderr = np.sqrt(np.diag(want_cov) / num)
    assert np.all(np.abs(x.mean(0) - want_mean) < 4 * stderr + 0.01), (x.mean(0), want_mean)
    np.testing.assert_allclose(np.cov(x.T), want_cov, atol=0.1 * np.abs(want_cov).max())


def test_refusals_name_the_problem():
    op = operators.from_callables(lambda x: x.reshape(-1), (80, 80, 1), linear=True)
    prior = prior_lib.Prior(params={}, apply=lambda p, x, t: 0.0 * x, var_type="fixed_small")
    with pytest.raises(ValueError, match="M = 6400 values .at most 4096.: use covariance 'diag'"):
        api.sample(prior, op, np.zeros(6400, np.float32), solver="tmpd", options={"covariance": "full", "steps": 2},
                   sigma=0.1, image_shape=(80, 80, 1))
    with pytest.raises(ValueError, match="needs a linear operator"):
        api.sample(prior, lambda x: jnp.tanh(x), np.zeros((4, 4, 1), np.float32), solver="tmpd", sigma=0.1,
                   image_shape=(4, 4, 1))
    with pytest.raises(ValueError, match="unknown tmpd covariance 'dense'"):
        solvers.make_options(tmpd.SOLVER, covariance="dense")
