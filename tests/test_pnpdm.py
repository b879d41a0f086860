"""PnP-DM: the authors' prior step, likelihood steps and a chain (tests/fixtures/pnpdm.npz) teacher-forced, the
split Gibbs target in closed form on a Gaussian prior, and what it refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import api, operators, prior as prior_lib, solvers
from dps_jax.analytic import gmm
from dps_jax.solvers import base, pnpdm
from helpers import load_npz

SHAPE = (4, 4, 1)
SIGMA_Y = 0.05


def nhwc(a):
    """(1, 1, H, W) -> (H, W, 1)."""
    return np.asarray(a, np.float32).reshape(a.shape[-2], a.shape[-1], 1)


@pytest.fixture(scope="module")
def fx():
    return load_npz("pnpdm.npz")


def tanh_prior(f):
    apply = lambda p, x, t: jnp.tanh(p["w"] @ x.reshape(-1) + p["b"] * (t / 1000.0)).reshape(x.shape)
    return prior_lib.Prior(params={"w": jnp.asarray(f["w"], jnp.float32), "b": jnp.asarray(f["b"], jnp.float32)},
                           apply=apply, var_type="fixed_small", clip_denoised=False)


def matrix_op(a, name="custom"):
    a = jnp.asarray(a, jnp.float32)
    return operators.from_callables(lambda x: a @ x.reshape(-1), SHAPE, linear=True, name=name)


@pytest.mark.parametrize("mode", pnpdm.MODES)
def test_prior_step_matches_the_reference_denoiser(fx, mode):
    """Denoiser_EDM's grid (t_0 .. t_12, 0) and its Euler sampler from the first level below rho, SDE and ODE."""
    prior, z = tanh_prior(fx), nhwc(fx["prior_z"])
    for sde in (True, False):
        kind = "sde" if sde else "pfode"
        options = solvers.make_options(pnpdm.SOLVER, mode=mode, sde=sde, denoiser_steps=12)
        table = pnpdm.denoiser_table(options)
        np.testing.assert_allclose(table["t"], fx[f"prior_{mode}_{kind}_t"], rtol=1e-6, atol=1e-12)
        for rho in (0.5, 5.0):
            start = pnpdm.start_index(table, rho)
            noise = np.zeros((12,) + SHAPE, np.float32)
            recorded = fx[f"prior_{mode}_{kind}_{rho:g}_noise"]
            if len(recorded):
                noise[start:start + len(recorded)] = np.stack([nhwc(n) for n in recorded])
            x = pnpdm.prior_step(prior, jnp.asarray(z * rho), start, float(table["scale_t"][start]), table,
                                 lambda i: jnp.asarray(noise)[i])
            np.testing.assert_allclose(np.asarray(x), nhwc(fx[f"prior_{mode}_{kind}_{rho:g}"]), rtol=1e-4,
                                       atol=1e-5, err_msg=f"{mode} {kind} rho {rho}")


@pytest.mark.parametrize("name", ["sr", "blur"])
def test_gaussian_likelihood_step_mean_matches_the_reference(fx, name):
    """The likelihood step's mean, by A's SVD and by conjugate gradients, is the reference's (its SVD
    super-resolution x2 and its circular Gaussian blur, as matrices)."""
    op = matrix_op(fx[f"lik_{name}_matrix"])
    y = np.asarray(fx[f"lik_{name}_y"], np.float32).reshape(-1)
    problem = solvers.make_problem(op, y, SHAPE, sigma=SIGMA_Y)
    problem = base.prepare(pnpdm.SOLVER, problem, solvers.make_options(pnpdm.SOLVER), SHAPE)
    assert problem.aux is not None
    x = jnp.asarray(nhwc(fx["lik_x"]))
    for rho in (0.3, 2.0):
        want = nhwc(fx[f"lik_{name}_{rho:g}_mean"])
        by_svd = pnpdm.gaussian_step_spectral(problem.aux, problem.y, x, SIGMA_Y, rho, jnp.zeros(SHAPE))
        by_cg = jax.jit(pnpdm.gaussian_step_cg, static_argnums=6)(problem, x, SIGMA_Y, rho, jnp.zeros_like(problem.y),
                                                                 jnp.zeros(SHAPE), 200)
        np.testing.assert_allclose(np.asarray(by_svd), want, rtol=1e-4, atol=1e-4, err_msg=f"svd rho {rho}")
        np.testing.assert_allclose(np.asarray(by_cg), want, rtol=1e-4, atol=1e-4, err_msg=f"cg rho {rho}")


def test_gaussian_likelihood_step_draws_the_conditional_exactly():
    """Both draws are x -> mean + L e with L L^T = (A^T A / sigma^2 + I / rho^2)^-1 (closed form): the SVD's
    by the noise map's Jacobian, perturb-then-solve's by the map of its two noises."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 16))
    op = matrix_op(a)
    problem = solvers.make_problem(op, rng.standard_normal(6).astype(np.float32), SHAPE, sigma=0.2)
    problem = base.prepare(pnpdm.SOLVER, problem, solvers.make_options(pnpdm.SOLVER), SHAPE)
    rho = 0.7
    want = np.linalg.inv(a.T @ a / 0.2 ** 2 + np.eye(16) / rho ** 2)
    x = jnp.zeros(SHAPE)
    svd_map = jax.jit(jax.jacobian(lambda e: pnpdm.gaussian_step_spectral(problem.aux, problem.y, x, 0.2, rho,
                                                                           e).reshape(-1)))
    l_svd = np.asarray(svd_map(jnp.zeros(SHAPE))).reshape(16, 16)
    np.testing.assert_allclose(l_svd @ l_svd.T, want, atol=1e-5)
    cg = lambda e1, e2: pnpdm.gaussian_step_cg(problem, x, 0.2, rho, e1, e2, 100).reshape(-1)
    jac = jax.jit(jax.jacobian(cg, argnums=(0, 1)))(jnp.zeros(6), jnp.zeros(SHAPE))
    j1, j2 = (np.asarray(j).reshape(16, -1) for j in jac)
    np.testing.assert_allclose(j1 @ j1.T + j2 @ j2.T, want, atol=1e-4)


def test_langevin_likelihood_step_matches_the_reference(fx):
    """Five Langevin steps on the reference's phase retrieval ([0, 1] image, 128 pixels of padding)."""
    size = fx["pr_x"].shape[-1]
    op = operators.build("phase_retrieval", (size, size, 1), pad=int(fx["pr_pad"]), unit_range=True)
    problem = solvers.make_problem(op, nhwc(fx["pr_y"]), (size, size, 1), sigma=0.05)
    noise = jnp.asarray(np.stack([nhwc(n) for n in fx["pr_noise"]]))
    z = pnpdm.langevin_step(problem, jnp.asarray(nhwc(fx["pr_x"])), 0.05, 0.5, 1e-4, lambda i: noise[i], 5)
    np.testing.assert_allclose(np.asarray(z), nhwc(fx["pr_z"]), rtol=1e-4, atol=1e-4)


def test_chain_matches_the_reference_iteration_by_iteration(fx):
    """PnPEDMBatch, 4 iterations (rho 10, 3, 0.9, 0.3) on the circular blur: per iteration, from the reference's
    x, our likelihood mean is its mean, and from its z our prior step (the grid's start and scale for rho_k)
    gives its next x."""
    prior = tanh_prior(fx)
    op = matrix_op(fx["lik_blur_matrix"])
    problem = solvers.make_problem(op, np.asarray(fx["lik_blur_y"], np.float32).reshape(-1), SHAPE, sigma=SIGMA_Y)
    options = solvers.make_options(pnpdm.SOLVER, steps=4, rho_decay=0.3, denoiser_steps=12)
    problem = base.prepare(pnpdm.SOLVER, problem, options, SHAPE)
    rows = pnpdm.SOLVER.step_grid(options).xs
    np.testing.assert_allclose(np.asarray(rows["rho"]), [10.0, 3.0, 0.9, 0.3], rtol=1e-6)
    table = pnpdm.denoiser_table(options)
    for k in range(4):
        x = jnp.asarray(nhwc(fx["chain_x"][k]))
        mean = pnpdm.gaussian_step_spectral(problem.aux, problem.y, x, SIGMA_Y, rows["rho"][k], jnp.zeros(SHAPE))
        np.testing.assert_allclose(np.asarray(mean), nhwc(fx["chain_mean"][k]), rtol=1e-4, atol=1e-4)
        noise = jnp.asarray(np.stack([nhwc(n) for n in fx["chain_prior_noise"][k]]))
        x_next = pnpdm.prior_step(prior, jnp.asarray(nhwc(fx["chain_z"][k])), rows["start"][k],
                                  rows["start_scale"][k], table, lambda i: noise[i])
        np.testing.assert_allclose(np.asarray(x_next), nhwc(fx["chain_x_next"][k]), rtol=1e-4, atol=1e-5,
                                   err_msg=f"iteration {k}")


def test_samples_the_split_gibbs_target_on_a_gaussian_prior():
    """At a fixed coupling rho the chain's x has the marginal p(x) N(y; A x, sigma^2 I + rho^2 A A^T): on a
    Gaussian prior (exact denoiser) its samples have that closed-form mean and covariance."""
    rng = np.random.default_rng(0)
    d, shape, num, sigma, rho = 4, (2, 2, 1), 2000, 0.2, 0.5
    root = rng.standard_normal((d, d)) * 0.5
    cov = root @ root.T + 0.2 * np.eye(d)
    mix = gmm.make(np.ones(1), rng.standard_normal((1, d)) * 0.5, cov[None])
    a = rng.standard_normal((2, d))
    op = operators.from_callables(lambda x: jnp.asarray(a, jnp.float32) @ x.reshape(-1), shape, linear=True)
    y = np.array([0.7, -0.4])
    out = api.sample(gmm.as_prior(mix, shape), op, y, solver="pnpdm", sigma=sigma, num_samples=num,
                     image_shape=shape, options={"steps": 30, "rho": rho, "rho_decay": 1.0, "rho_min": rho})
    x = out["samples"].reshape(num, d).astype(np.float64)
    m0 = np.asarray(mix.means[0], np.float64)
    gain = cov @ a.T @ np.linalg.inv(a @ cov @ a.T + sigma ** 2 * np.eye(2) + rho ** 2 * a @ a.T)
    want_mean, want_cov = m0 + gain @ (y - a @ m0), cov - gain @ a @ cov
    stderr = np.sqrt(np.diag(want_cov) / num)
    assert np.all(np.abs(x.mean(0) - want_mean) < 4 * stderr + 0.01), (x.mean(0), want_mean)
    np.testing.assert_allclose(np.cov(x.T), want_cov, atol=0.08 * np.abs(want_cov).max())
    # ... which is not the posterior of rho = 0: the test can tell the two apart
    exact = gmm.posterior(mix, a, y, sigma)
    assert np.abs(np.cov(x.T) - exact.covariances()[0]).max() > 0.2 * np.abs(want_cov).max()


def test_refusals_name_the_problem():
    prior = prior_lib.Prior(params={}, apply=lambda p, x, t: 0.0 * x, var_type="fixed_small")
    op = operators.from_callables(lambda x: x.reshape(-1), SHAPE, linear=True)
    with pytest.raises(ValueError, match="pnpdm' needs measurement noise sigma > 0"):
        api.sample(prior, op, np.zeros(16, np.float32), solver="pnpdm", sigma=0.0, image_shape=SHAPE)
    with pytest.raises(ValueError, match="unknown pnpdm mode 'edm2'"):
        solvers.make_options(pnpdm.SOLVER, mode="edm2")
    with pytest.raises(ValueError, match="pnpdm rho_decay must be in"):
        solvers.make_options(pnpdm.SOLVER, rho_decay=1.5)
