"""DAPS against its reference code (daps_{sr4,pr}.npz: zhangbingliang2019/DAPS's sampler, model wrapper and
operators on the random-weight adm_ffhq_like network, 4 levels x 5 ODE steps x 3 Langevin steps,
tools/make_daps_fixtures.py): the annealing grid, every level teacher-forced (ODE x0_hat, Langevin x0_y, the
re-noised x_t; the last is the run's output); the continuous-sigma denoiser against the mixture's closed
form; then the solver through the API, its presets and the pairs it refuses."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_npz, measurement_fit, mixture_sr_case, nhwc, random_mixture
from dps_jax import api, operators
from dps_jax import prior, solvers
from dps_jax.analytic import gmm
from dps_jax.solvers import daps

SHAPE = (16, 16, 3)


def case(name, ffhq_like):
    f = load_npz(f"daps_{name}.npz")
    spec = json.loads(str(f["spec"]))
    shape = nhwc(f["x_start"])[0].shape
    o = spec["operator"]
    if spec["task"] == "down_sampling":
        op = operators.build("super_resolution", shape, scale_factor=o["scale_factor"])
    elif spec["task"] == "gaussian_blur":
        op = operators.build("gaussian_blur", shape, kernel_size=o["kernel_size"], intensity=o["intensity"])
    else:       # the reference measures the image in [0, 1]
        op = operators.build("phase_retrieval", shape, oversample=o["oversample"], unit_range=True)
    problem = solvers.make_problem(op, nhwc(f["y"])[0], shape, sigma=spec["sigma_y"])
    mcmc, sampler = spec["mcmc"], spec["sampler"]
    annealing, ode = sampler["annealing_scheduler_config"], sampler["diffusion_scheduler_config"]
    options = solvers.make_options(
        daps.SOLVER, steps=annealing["num_steps"], ode_steps=ode["num_steps"],
        langevin_steps=mcmc["num_steps"], lr=mcmc["lr"], tau=mcmc["tau"], lr_min_ratio=mcmc["lr_min_ratio"],
        sigma_max=annealing["sigma_max"], sigma_min=annealing["sigma_min"], ode_sigma_min=ode["sigma_min"],
        rho=float(annealing["timestep"].split("-")[1]))
    model, params, _ = ffhq_like
    return f, problem, prior.from_unet(model, params, "learned_range"), options


# sr4, pr: 16 x 16, 4 levels x 5 ODE x 3 Langevin steps; blur24 (Gaussian kernel 9, sigma 2, noise 0.1, 6 x 3 x 2)
# and sr2_24 (noise 0.02, 5 x 4 x 4): 24 x 24
@pytest.mark.parametrize("name", ["sr4", "pr", "blur24", "sr2_24"])
def test_levels_teacher_forced_against_reference(name, ffhq_like):
    f, problem, pr, options = case(name, ffhq_like)
    levels = daps.annealing(options)
    np.testing.assert_allclose(levels["sigma"], f["sigmas"][:-1], rtol=1e-6)
    np.testing.assert_allclose(levels["sigma_next"], f["sigmas"][1:], rtol=1e-6)
    xt, x0hat, x0y = nhwc(f["xt"]), nhwc(f["x0hat"]), nhwc(f["x0y"])
    num, per = len(xt), options.langevin_steps + 1               # per level: the Langevin draws, the re-noising
    randn = nhwc(f["randn"][:, 0])
    noise = {"langevin": jnp.asarray(np.stack([randn[per * i:per * i + per - 1] for i in range(num)])),
             "x": jnp.asarray(randn[per - 1::per])}
    states = {"x": jnp.asarray(np.concatenate([nhwc(f["x_start"]), xt[:-1]])), "x0": jnp.zeros((num,) + xt.shape[1:])}
    step = jax.jit(jax.vmap(lambda s, c, z: daps.update(s, c, z, problem, pr, options)))
    new, record = step(states, levels, noise)

    def rel(a, b):
        return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())

    for i in range(num):
        assert rel(record["x0_hat"][i], x0hat[i]) <= 1e-5, (i, rel(record["x0_hat"][i], x0hat[i]))
        assert rel(new["x0"][i], x0y[i]) <= 1e-5, (i, rel(new["x0"][i], x0y[i]))
        assert rel(new["x"][i], xt[i]) <= 1e-5, (i, rel(new["x"][i], xt[i]))
    np.testing.assert_array_equal(new["x"][-1], new["x0"][-1])    # the last level adds no noise
    assert rel(daps.result(jax.tree_util.tree_map(lambda a: a[-1], new)), nhwc(f["sample"])[0]) <= 1e-5


def test_denoiser_at_any_sigma_is_the_mixtures_closed_form():
    """x0_at_sigma through the VP network path (eps at the continuous timestep) equals E[x_0 | x_0 + sigma n]
    of a mixture when the network is the mixture's exact eps at that timestep's alphas_cumprod."""
    mix = random_mixture(12, k=2, seed=3)
    shape = (2, 2, 3)

    def eps_continuous(params, x, t):          # eps* at the continuous VP time t / 999
        s = t / 999.0
        ab = jnp.exp(-(prior.VP_BETA_D * s ** 2 / 2 + prior.VP_BETA_MIN * s))
        return gmm.exact_eps(params, x.reshape(-1), ab).reshape(x.shape)

    network = prior.Prior(params=mix, apply=eps_continuous, clip_denoised=False)
    exact = gmm.as_prior(mix, shape)
    x0 = np.asarray(gmm.sample(mix, jax.random.PRNGKey(0), 1)[0]).reshape(shape)
    for sigma in (0.05, 0.7, 20.0):
        x = x0 + sigma * np.asarray(jax.random.normal(jax.random.PRNGKey(1), shape))
        a, b = prior.x0_at_sigma(network, x, sigma), prior.x0_at_sigma(exact, x, sigma)
        np.testing.assert_allclose(a, b, atol=2e-5 * max(1.0, sigma))
        # Tweedie: the posterior mean of a Gaussian mixture given x, against its own posterior
        post = gmm.posterior(mix, np.eye(12), x.reshape(-1).astype(np.float64), sigma)
        mean = np.einsum("k,kd->d", np.exp(post.log_weights), post.means)
        np.testing.assert_allclose(np.asarray(b).reshape(-1), mean, atol=2e-5 * max(1.0, sigma))


def test_presets_and_counts():
    options = solvers.make_options(daps.SOLVER)
    assert daps.counts(options) == (200, 5, 100) and daps.SOLVER.step_grid(options).evaluations == 1000
    assert daps.SOLVER.step_grid(solvers.make_options(daps.SOLVER, preset="4k")).evaluations == 4000
    assert daps.counts(solvers.make_options(daps.SOLVER, steps=7)) == (7, 5, 100)
    assert daps.counts(solvers.make_options(daps.SOLVER, preset="cpu", ode_steps=3))[1] == 3
    levels = daps.annealing(options)
    assert levels["sigma"][0] == 100.0 and levels["sigma_next"][-1] == 0.0 and len(levels["sigma"]) == 200
    assert np.all(np.diff(levels["sigma"]) < 0) and float(levels["ratio"][-1]) == pytest.approx(199 / 201)
    with pytest.raises(ValueError, match="unknown daps preset 'fast'"):
        solvers.make_options(daps.SOLVER, preset="fast")
    with pytest.raises(ValueError, match="sigma_max > sigma_min > ode_sigma_min"):
        solvers.make_options(daps.SOLVER, sigma_min=0.001)


def test_through_the_api():
    """On the Gaussian-mixture prior, SR x2 of an 8 x 8 image: vmapped samples that fit y (DAPS's tau = 0.01
    is below the noise, so they fit it closer than sigma) and differ; Poisson noise is refused in one line
    (phase retrieval, nonlinear, runs in the fixture test)."""
    pr, op, x, y, sigma = mixture_sr_case()
    out = api.sample(pr, op, y, solver="daps", options={"preset": "cpu"}, num_samples=3, image_shape=x.shape)
    assert out["samples"].shape == (3,) + x.shape and np.isfinite(out["samples"]).all()
    assert (measurement_fit(op, out["samples"], y) < sigma).all()
    assert not np.allclose(out["samples"][0], out["samples"][1])
    assert out["distance"].shape == (3, 25)
    with pytest.raises(ValueError, match="'daps' models Gaussian measurement noise; got 'poisson'"):
        api.sample(pr, op, y, solver="daps", options={"preset": "cpu"}, noise="poisson", image_shape=x.shape)


def test_annealing_grid_is_the_references_for_every_level_count():
    """DAPS's EDMScheduler(T, 100, 0.1, poly-7).sigma_steps (tests/fixtures/reference_grids.npz) for T = 1 .. 50,
    100, 200, 400, 1000: dps_jax's T levels are its sigma_0 .. sigma_{T-1}, then 0."""
    f = load_npz("reference_grids.npz")
    sigmas, offsets = f["daps_annealing_sigmas"], f["daps_annealing_sigmas_offsets"]
    for i, t in enumerate(f["daps_annealing_steps"]):
        want = sigmas[offsets[i]:offsets[i + 1]]
        levels = daps.annealing(solvers.make_options(daps.SOLVER, steps=int(t)))
        got = np.append(np.asarray(levels["sigma"]), 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"T={t}")
        np.testing.assert_array_equal(np.asarray(levels["sigma_next"]), want[1:])
