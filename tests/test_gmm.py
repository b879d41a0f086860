"""The Gaussian-mixture test bed against independent computations: the exact eps against autodiff of the
density written with dense linear algebra, the exact posterior against numerical integration on a grid,
and the calibration figures; then the unconditional check: a correct sampler with no measurement
reproduces the prior's mean and covariance within sampling error (and a wrong prior fails it)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import api, operators, schedule
from dps_jax.analytic import calibration, gmm


def random_mixture(dim, k=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, dim, dim)) * 0.3
    covs = a @ np.swapaxes(a, 1, 2) + 0.01 * np.eye(dim)
    return gmm.make(rng.uniform(0.5, 2.0, size=k), rng.normal(size=(k, dim)) * 0.8, covs, dtype=dtype)


def dense_log_density(mix, x, ab):
    """log p_t(x) with full covariance matrices (jnp), independent of the eigendecomposition path."""
    covs = jnp.asarray(mix.covariances(), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    terms = []
    for k in range(len(covs)):
        c = ab * covs[k] + (1 - ab) * jnp.eye(mix.dim)
        r = x - jnp.sqrt(ab) * mix.means[k]
        _, logdet = jnp.linalg.slogdet(c)
        terms.append(mix.log_weights[k] - 0.5 * (r @ jnp.linalg.solve(c, r) + logdet + mix.dim * jnp.log(2 * jnp.pi)))
    return jax.nn.logsumexp(jnp.stack(terms))


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_exact_eps_is_the_scaled_score(t):
    mix = random_mixture(5)
    ab = float(schedule.build_tables("linear", 1000).alphas_cumprod[t])
    x = jnp.asarray(np.random.default_rng(t).normal(size=5), jnp.float32)
    score = jax.grad(dense_log_density, argnums=1)(mix, x, ab)
    np.testing.assert_allclose(gmm.exact_eps(mix, x, ab), -np.sqrt(1 - ab) * score, rtol=2e-4, atol=2e-5)
    # the prior sees the same function through its timestep table, per image
    pr = gmm.as_prior(mix, (1, 5, 1))
    out = pr.apply(pr.params, x.reshape(1, 5, 1), jnp.int32(t)).reshape(-1)
    np.testing.assert_allclose(out, -np.sqrt(1 - ab) * score, rtol=2e-4, atol=2e-5)


def test_posterior_against_grid_integration():
    """One dimension, three components, y = 0.7 x + 0.3 n: the closed form against p(x) N(y; a x, s^2) on a grid."""
    mix = gmm.make([0.2, 0.5, 0.3], [[-1.5], [0.2], [1.4]], [[[0.09]], [[0.25]], [[0.04]]], dtype=np.float64)
    a, sigma, y = np.array([[0.7]]), 0.3, np.array([0.6])
    post = gmm.posterior(mix, a, y, sigma)
    grid = np.linspace(-6, 6, 200001)
    w = np.exp(np.asarray(mix.log_weights))
    mu, var = np.asarray(mix.means)[:, 0], mix.covariances()[:, 0, 0]
    prior_pdf = sum(w[k] * np.exp(-0.5 * (grid - mu[k]) ** 2 / var[k]) / np.sqrt(2 * np.pi * var[k]) for k in range(3))
    unnorm = prior_pdf * np.exp(-0.5 * (y[0] - a[0, 0] * grid) ** 2 / sigma ** 2)
    dens = unnorm / np.trapezoid(unnorm, grid)
    mean = np.trapezoid(grid * dens, grid)
    second = np.trapezoid(grid ** 2 * dens, grid)
    exact_mean, exact_var = calibration.moments(post)
    np.testing.assert_allclose(exact_mean[0], mean, rtol=1e-7)
    np.testing.assert_allclose(exact_var[0], second - mean ** 2, rtol=1e-6)
    # and the density itself, pointwise
    pw = np.exp(np.asarray(post.log_weights))
    pm, pv = np.asarray(post.means)[:, 0], post.covariances()[:, 0, 0]
    pts = np.array([-1.0, 0.0, 0.5, 1.2])
    closed = sum(pw[k] * np.exp(-0.5 * (pts - pm[k]) ** 2 / pv[k]) / np.sqrt(2 * np.pi * pv[k]) for k in range(3))
    np.testing.assert_allclose(closed, np.interp(pts, grid, dens), rtol=1e-6)


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="positive"):
        gmm.make([1.0, 0.0], np.zeros((2, 2)), np.stack([np.eye(2)] * 2))
    with pytest.raises(ValueError, match="negative eigenvalue"):
        gmm.make([1.0], np.zeros((1, 2)), np.array([[[1.0, 2.0], [2.0, 1.0]]]))
    with pytest.raises(ValueError, match=r"\(K, D, D\)"):
        gmm.make([1.0], np.zeros((1, 2)), np.eye(2)[None, :1])
    with pytest.raises(ValueError, match="has 6 pixels"):
        gmm.as_prior(random_mixture(5), (2, 3, 1))
    with pytest.raises(ValueError, match="sigma > 0"):
        gmm.posterior(random_mixture(5), np.eye(5), np.zeros(5), 0.0)


def test_operator_matrix_is_the_operator():
    op = operators.build("super_resolution", (4, 4, 1), scale_factor=2)
    mat = gmm.operator_matrix(op, (4, 4, 1))
    x = np.random.default_rng(0).normal(size=(4, 4, 1)).astype(np.float32)
    np.testing.assert_allclose(mat @ x.reshape(-1), np.asarray(op(x)).reshape(-1), atol=1e-6)


def test_calibration_figures():
    mix = random_mixture(4)
    key = jax.random.PRNGKey(0)
    x, comp = gmm.sample(mix, key, 6000)
    # sample moments from `sample` agree with `moments` (so both are right or both wrong in the same way,
    # which the grid test above excludes for `moments`)
    mean, var = calibration.moments(mix)
    np.testing.assert_allclose(np.mean(x, 0), mean, atol=4 * np.sqrt(var.max() / 6000))
    np.testing.assert_allclose(np.var(x, 0), var, rtol=0.08)
    floor = calibration.floor(mix, 4000, jax.random.PRNGKey(1))
    # shifted samples: the mean error is the shift, the other figures grow
    shifted = calibration.compare(np.asarray(x[:4000]) + 0.5, mix, jax.random.PRNGKey(2))
    assert abs(shifted["mean_error"] - 0.5) < 0.05
    assert shifted["sliced_wasserstein"] > 5 * floor["sliced_wasserstein"]
    # samples of one component only: weight error = 1 - its weight
    only = np.asarray(x[:4000])[np.asarray(comp[:4000]) == 0]
    w0 = float(np.exp(mix.log_weights[0]))
    assert abs(calibration.compare(only, mix, key)["weight_error"] - (1 - w0)) < 0.03
    assert floor["weight_error"] < 0.03 and floor["mean_error"] < 0.05


def test_coverage_of_exact_posteriors_is_the_level():
    """Over draws of x_0 from a Gaussian prior and y given x_0, exact posterior samples cover the truth with
    probability `level` per coordinate; samples of half the posterior std cover P(|Z| < 1.645 / 2) = 0.59."""
    rng = np.random.default_rng(0)
    d, m, sigma, problems, num = 6, 3, 0.3, 300, 400
    root = rng.standard_normal((d, d)) * 0.4
    cov = root @ root.T + 0.1 * np.eye(d)
    a = rng.standard_normal((m, d))
    gain = cov @ a.T @ np.linalg.inv(a @ cov @ a.T + sigma ** 2 * np.eye(m))
    post_root = np.linalg.cholesky(cov - gain @ a @ cov)
    hits, narrow = [], []
    for _ in range(problems):
        x0 = np.linalg.cholesky(cov) @ rng.standard_normal(d)
        y = a @ x0 + sigma * rng.standard_normal(m)
        z = rng.standard_normal((num, d)) @ post_root.T
        hits.append(calibration.coverage(gain @ y + z, x0))
        narrow.append(calibration.coverage(gain @ y + 0.5 * z, x0))
    assert abs(np.mean(hits) - 0.9) < 0.02, np.mean(hits)
    assert abs(np.mean(narrow) - 0.59) < 0.03, np.mean(narrow)
    with pytest.raises(ValueError, match="credible level must be in"):
        calibration.coverage(np.zeros((4, 2)), np.zeros(2), level=1.0)


def _unconditional(mix, shape, sampler, steps, n=4000):
    pr = gmm.as_prior(mix, shape)
    op = operators.build("identity", shape)
    out = api.sample(pr, op, np.zeros(shape, np.float32), solver="vanilla",
                     options={"steps": steps, "sampler": sampler}, num_samples=n, image_shape=shape, seed=3)
    return out["samples"].reshape(n, -1)


@pytest.mark.parametrize("sampler,steps", [("ddim", 100)])      # DDPM: benchmarks/calibration.py's vanilla rows
def test_unconditional_sampling_reproduces_the_prior(sampler, steps):
    """No measurement: the samples' mean and covariance are the prior's within sampling error."""
    mix, n = random_mixture(4), 4000
    x = _unconditional(mix, (2, 2, 1), sampler, steps, n)
    mean, var = calibration.moments(mix)
    cov = np.einsum("k,kij->ij", np.exp(np.asarray(mix.log_weights, np.float64)),
                    mix.covariances() + np.einsum("ki,kj->kij", *(2 * [np.asarray(mix.means, np.float64)]))) \
        - np.outer(mean, mean)
    # 4.5 standard errors per coordinate for the mean; for the covariance, entries to 4.5 standard errors
    # of a sample covariance (sqrt((S_ii S_jj + S_ij^2) / n), Gaussian approximation) plus 1% of the
    # largest entry for the discretisation's bias
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4.5 * np.sqrt(var / n))
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 4.5 * se + 0.01 * np.abs(cov).max())
    # the same check fails for a prior whose weights are permuted: it can tell
    wrong = mix._replace(log_weights=mix.log_weights[::-1])
    xw = _unconditional(wrong, (2, 2, 1), sampler, steps, n)
    assert np.max(np.abs(xw.mean(0) - mean) / np.sqrt(var / n)) > 10
