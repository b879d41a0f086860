"""Every process and parametrisation a prior can have, read back through the one interface the solvers use."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import api, diffusion, operators, prior as prior_lib, schedule, solvers
from dps_jax.analytic import networks
from dps_jax.solvers import registry

SHAPE = (4, 4, 1)
GAUSS = {"m": jnp.asarray(0.2, jnp.float32), "s": jnp.asarray(0.5, jnp.float32)}
KINDS = [(p, m) for p in prior_lib.PROCESSES for m in prior_lib.PARAMETRISATIONS[p] if m != "previous_x"]
COEFS = diffusion.step_coefficients(schedule.build_tables("linear", 1000))     # reverse order: row i is t 999 - i


def gaussian(process, mean_type):
    return networks.as_prior(networks.gaussian_denoiser, GAUSS, process, mean_type, SHAPE)


def closed_form(x, sigma):
    return 0.2 + 0.25 / (0.25 + sigma ** 2) * (x - 0.2)


@pytest.mark.parametrize("process, mean_type", KINDS)
def test_every_reading_gives_the_denoiser_back(process, mean_type):
    prior = gaussian(process, mean_type)
    x = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    for t in (999, 500, 20, 0):
        c = jax.tree_util.tree_map(lambda a: a[999 - t], COEFS)
        ab = float(c.alphas_cumprod)
        x_t = np.sqrt(ab) * 0.2 + np.sqrt(1 - ab) * x
        want = closed_form(x_t / np.sqrt(ab), np.sqrt(1 / ab - 1))
        den = prior_lib.denoise(prior, x_t, c)
        tol = 1e-5 + 2e-6 / np.sqrt(ab)       # float32 x_t / sqrt(ab) at the first steps (ab 4e-5 at t 999)
        np.testing.assert_allclose(den.x0_hat, want, rtol=1e-4, atol=tol)
        np.testing.assert_allclose(prior_lib.x0_at_step(prior, x_t, c.t_model, c.alphas_cumprod), want,
                                   rtol=1e-4, atol=tol)
        eps = (x_t - np.sqrt(ab) * want) / np.sqrt(1 - ab)
        np.testing.assert_allclose(prior_lib.eps_at_step(prior, x_t, c.t_model, c.alphas_cumprod), eps,
                                   rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(den.eps, eps, rtol=1e-3, atol=1e-3)
    if process == "discrete_vp":
        return          # a discrete network at a level between its timesteps: tested through the solvers below
    for sigma in (0.02, 0.7, 5.0, 80.0):
        np.testing.assert_allclose(prior_lib.x0_at_sigma(prior, 3 * x, sigma), closed_form(3 * x, sigma),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("process, mean_type, var_type, match", [
    ("sde", "epsilon", "fixed_small", "unknown diffusion process 'sde'"),
    ("ve", "v", "fixed_small", "'v' is not one a ve prior can have"),
    ("edm", "epsilon", "fixed_small", "'epsilon' is not one a edm prior can have"),
    ("vp", "previous_x", "fixed_small", "'previous_x' is not one a vp prior can have"),
    ("edm", "edm", "learned_range", "edm prior has no learned variance"),
])
def test_impossible_priors_are_refused(process, mean_type, var_type, match):
    with pytest.raises(ValueError, match=match):
        prior_lib.Prior(params={}, apply=None, process=process, mean_type=mean_type, var_type=var_type).check()


def test_solvers_read_the_prior_only_through_its_interface():
    """A solver that called the network itself would read it as a discrete VP epsilon network whatever the
    prior is: none may (the interface is prior.denoise / x0_at_sigma / x0_at_step / eps_at_step)."""
    offenders = [name for name, s in registry.REGISTRY.items()
                 if "prior.apply" in inspect.getsource(inspect.getmodule(s.init)) and s.kind == "diffusion"]
    assert offenders == []


def _problem():
    op = operators.build("super_resolution", SHAPE, scale_factor=2)
    x = jax.random.normal(jax.random.PRNGKey(1), SHAPE) * 0.5 + 0.2
    y = op(x) + 0.05 * jax.random.normal(jax.random.PRNGKey(2), op(x).shape)
    return op, np.asarray(y)


# one of each process, and v (the parametrisation diffusers' newer models use); the readings test has all ten
SOLVER_KINDS = [("discrete_vp", "epsilon"), ("vp", "v"), ("ve", "score"), ("edm", "edm")]
SAME_POSTERIOR = [("ps", {"steps": 20, "scale": 0.5}), ("daps", {"steps": 5, "langevin_steps": 5, "ode_steps": 3}),
                  ("ddrm", {"steps": 10})]


@pytest.mark.parametrize("solver, options", SAME_POSTERIOR)
def test_one_posterior_through_every_parametrisation(solver, options):
    """The same exact denoiser in every process and parametrisation gives the same samples, step for step:
    the level mapping and each reading are exact, not approximately right."""
    op, y = _problem()
    runs = {}
    for process, mean_type in SOLVER_KINDS:
        out = api.sample(gaussian(process, mean_type), op, y, solver=solver, options=options, num_samples=2,
                         sigma=0.05, image_shape=SHAPE, seed=3)
        runs[(process, mean_type)] = out["samples"]
    first = runs[("discrete_vp", "epsilon")]
    assert np.all(np.isfinite(first)) and np.std(first) > 0.05
    for kind, samples in runs.items():        # measured: at most 6e-7 apart over all nine kinds
        np.testing.assert_allclose(samples, first, atol=1e-5, err_msg=str(kind))


# One solver per way of reading the prior besides denoise / x0_at_sigma under DPS, DAPS and DDRM above: MCGdiff and
# SITCOM (x0_at_step / eps_at_step), PnP-DM (x0_at_sigma inside an EDM sampler), TMPD (denoise under a vjp). The
# source check above keeps every other solver on these entries.
OTHER_READERS = ("mcgdiff", "sitcom", "pnpdm", "tmpd")


@pytest.mark.parametrize("name", OTHER_READERS)
def test_solvers_with_other_readings_run_on_an_edm_prior(name):
    op, y = _problem()
    out = api.sample(gaussian("edm", "edm"), op, y, solver=name, options={"steps": 3}, num_samples=2, sigma=0.05,
                     image_shape=SHAPE)
    assert out["samples"].shape == (2,) + SHAPE and np.all(np.isfinite(out["samples"]))


@pytest.mark.parametrize("process, mean_type", [("ve", "score"), ("edm", "edm"), ("vp", "v")])
def test_dps_step_on_a_gaussian_prior_is_the_closed_form(process, mean_type):
    """One DPS step on a VE, EDM or continuous-VP prior of x_0 ~ N(m, s^2 I): x0_hat(x_t) = m + k (x_t / sqrt(ab) - m)
    with k = s^2 / (s^2 + sigma_t^2), sigma_t^2 = 1 / ab - 1, so the step and its gradient have closed forms."""
    c = jax.tree_util.tree_map(lambda a: a[999 - 400], COEFS)
    pr = gaussian(process, mean_type)
    solver = solvers.get("ps")
    options = solvers.make_options(solver, scale=0.7)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(4), 3)
    x, y, nx = (jax.random.normal(k, SHAPE) for k in (k1, k2, k3))
    problem = solvers.make_problem(operators.build("identity", SHAPE), y, SHAPE)
    x_next, record = solver.update(x, c, {"x": nx}, problem, pr, options)

    ab = float(c.alphas_cumprod)
    k = 0.25 / (0.25 + 1 / ab - 1)
    a, b = k / np.sqrt(ab), 0.2 * (1 - k)                        # x0_hat = a x + b
    x, y, nx = map(np.asarray, (x, y, nx))
    r = y - (a * x + b)
    grad = -a * r / np.linalg.norm(r)
    mean = float(c.posterior_mean_coef1) * (a * x + b) + float(c.posterior_mean_coef2) * x
    want = mean + np.sqrt(float(c.posterior_variance)) * nx - 0.7 * grad
    np.testing.assert_allclose(record["x0_hat"], a * x + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_next, want, rtol=1e-4, atol=1e-5)


# Every other diffusion solver reads the prior through `prior.denoise` (the source check above) and runs on a VE
# score network in tests/test_own_operator.py (test_every_linear_solver_runs_on_a_users_operator).
