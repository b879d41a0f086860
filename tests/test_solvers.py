"""The solvers, the one loop and the runner, with small priors whose steps have closed forms."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy_solver
from helpers import gaussian_prior, linear_prior, row
from dps_jax import api, operators, prior, solvers
from dps_jax.solvers import base, loop

SHAPE = (8, 8, 1)


def _mask_op(seed=0):
    return operators.build("inpainting", SHAPE, key=jax.random.PRNGKey(seed), mask_type="random", drop_fraction=0.5)


def _problem(op=None, value=0.5):
    op = op or _mask_op()
    return solvers.make_problem(op, op(jnp.full(SHAPE, value)), SHAPE)


def _runner(prior=None, solver="ps", steps=10, **kw):
    options = {"steps": steps, **kw.pop("options", {"scale": 1.0} if solver in ("ps", "ps+", "mcg") else {})}
    return solvers.build(prior or linear_prior(), SHAPE, solver=solver, options=options, **kw)


def test_dps_step_closed_form(coefs):
    c = row(coefs, 3)
    pr = linear_prior(0.3, clip_denoised=False)
    solver = solvers.get("ps")
    options = solvers.make_options(solver, scale=0.7)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k1, SHAPE)
    y = jax.random.uniform(k2, SHAPE, minval=-1, maxval=1)
    nx = jax.random.normal(k3, SHAPE)
    problem = solvers.make_problem(operators.build("identity", SHAPE), y, SHAPE)
    x_next, record = solver.update(x, c, {"x": nx}, problem, pr, options)

    kx = float(c.sqrt_recip_alphas_cumprod) - float(c.sqrt_recipm1_alphas_cumprod) * 0.3    # x0_hat = kx * x
    x, y, nx = map(np.asarray, (x, y, nx))
    r = y - kx * x
    want_d = np.linalg.norm(r)
    grad = -kx * r / want_d                                                                 # d/dx ||y - kx x||
    mean = float(c.posterior_mean_coef1) * kx * x + float(c.posterior_mean_coef2) * x
    want = mean + np.sqrt(float(c.posterior_variance)) * nx - 0.7 * grad
    np.testing.assert_allclose(record["x0_hat"], kx * x, rtol=1e-5)
    assert float(record["distance"]) == pytest.approx(want_d, rel=1e-5)
    np.testing.assert_allclose(x_next, want, rtol=1e-4, atol=1e-5)


def test_clipping_is_the_priors_choice(coefs):
    c = row(coefs, 0)                                # t = 999: x0_hat = (x - sqrt(1 - ab) a x) / sqrt(ab) is large
    x = jnp.full(SHAPE, 0.5)
    assert float(jnp.abs(prior.denoise(linear_prior(clip_denoised=False), x, c).x0_hat).max()) > 10
    np.testing.assert_array_equal(prior.denoise(linear_prior(), x, c).x0_hat, 1.0)


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_no_noise_at_last_step(coefs, sampler, eta):
    c0 = row(coefs, 9)
    assert int(c0.index) == 0
    solver = solvers.get("vanilla")
    options = solvers.make_options(solver, sampler=sampler, eta=eta)
    problem = solvers.make_problem(operators.build("identity", SHAPE), jnp.zeros(SHAPE), SHAPE)
    pr = linear_prior(var_type="fixed_large")
    step = lambda z: solver.update(jnp.ones(SHAPE), c0, {"x": z}, problem, pr, options)[0]
    np.testing.assert_array_equal(step(jnp.ones(SHAPE)), step(-jnp.ones(SHAPE)))


def test_ddim_eta_zero_is_deterministic():
    """From the same x_T, DDIM with eta = 0 reaches the same sample whatever the step keys; eta = 1 does not."""
    problem = _problem()
    x_T = jax.random.normal(jax.random.PRNGKey(7), SHAPE)
    for eta, same in ((0.0, True), (1.0, False)):
        runner = _runner(solver="vanilla", options={"sampler": "ddim", "eta": eta})
        one = lambda k: loop.scan(runner.solver, x_T, runner.xs, k, problem, runner.model, runner.options)[0]
        assert np.array_equal(one(jax.random.PRNGKey(1)), one(jax.random.PRNGKey(2))) == same


def test_runner_equals_separate_runs_and_is_deterministic():
    problem = _problem()
    runner = _runner(num_samples=4, record_every=3, steps_per_call=5)
    key = jax.random.PRNGKey(3)
    out = runner(problem, key)
    assert out["samples"].shape == (4,) + SHAPE and out["distance"].shape == (4, 10)
    assert out["x_record"].shape == out["x0_hat_record"].shape == (4, 4) + SHAPE     # after steps 0, 3, 6, 9
    # Each sample equals a run of its own: its own noise and its own norm, nothing shared with the others.
    for i, k in enumerate(jax.random.split(key, 4)):
        one = loop.run(runner.solver, k, runner.xs, problem, runner.model, runner.options, SHAPE, record_every=3)
        np.testing.assert_allclose(out["samples"][i], one["sample"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["distance"][i], one["distance"], rtol=1e-5)
        np.testing.assert_allclose(out["x0_hat_record"][i], one["x0_hat_record"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["x_record"][:, 3], out["samples"])         # step 9 is the last
    again = runner(problem, key)
    np.testing.assert_array_equal(out["samples"], again["samples"])          # same seed, same bits
    assert not np.allclose(out["samples"][0], out["samples"][1])             # samples differ


def test_chunks_of_samples_and_of_steps_change_nothing():
    """Sample i depends on its key only: not on N, the chunk size or how the steps are split into calls."""
    problem, key = _problem(), jax.random.PRNGKey(5)
    whole = _runner(num_samples=3, steps_per_call=10)(problem, key)
    chunked = _runner(num_samples=3, chunk_size=2, steps_per_call=1)(problem, key)
    np.testing.assert_allclose(chunked["samples"], whole["samples"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked["distance"], whole["distance"], rtol=1e-5)


def test_progress_between_calls():
    calls = []
    runner = _runner(num_samples=3, chunk_size=2, steps_per_call=5)
    out = runner(_problem(), jax.random.PRNGKey(0), progress=lambda d, t, s: calls.append((d, t, s["distance"])))
    # Two chunks of samples, two calls of 5 steps each: progress after every call, over 2 x 10 steps.
    assert [(d, t) for d, t, _ in calls] == [(5, 20), (10, 20), (15, 20), (20, 20)]
    np.testing.assert_allclose(calls[1][2], out["distance"][:2, -1], rtol=1e-6)
    np.testing.assert_allclose(calls[3][2][:1], out["distance"][2:, -1], rtol=1e-6)
    auto = solvers.runner.auto_steps_per_call
    assert [auto(t) for t in (1000, 250, 100, 50, 7, 37)] == [50, 10, 10, 10, 7, 1]


def test_automatic_chunk_size():
    """chunk_size 0: every sample at once, except on a CPU for images above CPU_VMAP_MAX_PIXELS; a set
    chunk size is kept, and a chunk is rounded up to the device count."""
    auto, limit = solvers.runner.auto_chunk_size, solvers.runner.CPU_VMAP_MAX_PIXELS
    side = int(limit ** 0.5)
    assert auto(8, (side, side, 3), "cpu") == 8 and auto(8, (side, side + 1, 3), "cpu") == 1
    assert auto(8, (256, 256, 3), "gpu") == 8 and auto(8, (32, 32, 1), "cpu") == 8
    cpu = jax.devices("cpu")[:1]
    big = lambda **kw: solvers.build(None, (256, 256, 1), solver=LANDWEBER, num_samples=4, devices=cpu, **kw)
    assert big().chunk == 1 and big(chunk_size=3).chunk == 3
    assert solvers.build(None, SHAPE, solver=LANDWEBER, num_samples=4, devices=cpu).chunk == 4


def test_new_measurement_or_step_size_does_not_recompile():
    traces = []

    def counting_eps(params, x, t):
        traces.append(1)                 # runs only while tracing
        return params["a"] * x

    pr = linear_prior()
    pr = pr.replace(apply=counting_eps)
    runner = _runner(pr, num_samples=2)
    runner(_problem(_mask_op(1), 1.0), jax.random.PRNGKey(0))
    n = len(traces)
    assert n >= 1
    runner(_problem(_mask_op(2), -1.0), jax.random.PRNGKey(1))                 # new y, new mask
    new_scale = solvers.make_options(runner.solver, steps=10, scale=0.25)
    out = runner(_problem(_mask_op(1), 0.0), jax.random.PRNGKey(9), options=new_scale)
    assert len(traces) == n
    fresh = _runner(pr, num_samples=2, options={"scale": 0.25})(_problem(_mask_op(1), 0.0), jax.random.PRNGKey(9))
    np.testing.assert_allclose(out["samples"], fresh["samples"], rtol=1e-6)
    with pytest.raises(ValueError, match="differ from the runner's"):
        runner(_problem(), jax.random.PRNGKey(0), options=solvers.make_options(runner.solver, steps=10, sampler="ddim"))


@pytest.mark.parametrize("method", ["ps", "ps+", "mcg"])
def test_zero_scale_guidance_is_unconditional(method):
    """With scale 0 the gradient rules reduce to the unconditional sampler (mcg keeps its projection)."""
    problem, key = _problem(), jax.random.PRNGKey(1)
    base_name = "projection" if method == "mcg" else "vanilla"
    a = _runner(solver=method, options={"scale": 0.0}, num_samples=2)(problem, key)["samples"]
    b = _runner(solver=base_name, num_samples=2)(problem, key)["samples"]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_guidance_pulls_towards_measurement():
    op = _mask_op()
    problem = solvers.make_problem(op, op(jnp.full(SHAPE, 0.8)), SHAPE)
    m = np.asarray(op.data["mask"])
    pr = gaussian_prior(0.5, clip_denoised=False)

    def residual(solver, scale=None):
        options = {} if scale is None else {"scale": scale}
        x = _runner(pr, solver=solver, options=options)(problem, jax.random.PRNGKey(1))["samples"][0]
        return float(np.abs((x - np.asarray(problem.y)) * m).max())

    assert residual("ps", 2.0) < 0.25 * residual("vanilla")
    # The projection's last step puts the measured pixels at y_t, within sqrt(1 - alphas_cumprod[0]) * |z|.
    assert residual("projection") < 0.06
    assert residual("mcg", 1.0) < 0.06


@pytest.mark.parametrize("solver, options, match", [
    ("ps", dict(sampler="euler"), "unknown sampler 'euler'; expected one of \\('ddpm', 'ddim'\\)"),
    ("ps", dict(eta=-1.0), "DDIM eta must be a finite number >= 0, got -1.0"),
    ("ps", dict(scale=float("nan")), "scale \\(zeta\\) must be a finite number >= 0, got nan"),
    ("ps", dict(scale="big"), "option scale must be a number, got 'big'"),
    ("ps", dict(zeta=1.0), "unknown option\\(s\\) \\['zeta'\\] for solver 'ps'; it takes \\['eta', 'respacing', 'sampler', 'scale', "
            "'steps'\\]"),
    ("ps+", dict(num_perturb=0), "num_perturb must be an integer >= 1, got 0"),
    ("dps", {}, "unknown solver 'dps'; expected one of"),
    ("ps", dict(steps=0), "steps must be an integer >= 1, got 0"),
    ("ps", dict(steps=2000), "steps 2000 exceeds num_timesteps 1000"),
    ("ps", dict(respacing="ddim7x"), "bad respacing 'ddim7x'"),
])
def test_bad_options(solver, options, match):
    with pytest.raises(ValueError, match=match):
        solvers.build(linear_prior(), SHAPE, solver=solver, options=options)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_samples=0), "num_samples must be an integer >= 1, got 0"),
    (dict(chunk_size=-1), "chunk_size must be an integer >= 0, got -1"),
    (dict(options={"steps": 10}, steps_per_call=3), "steps_per_call 3 does not divide the 10 steps"),
    (dict(record_every=-2), "record_every must be an integer >= 0, got -2"),
])
def test_bad_run_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        solvers.build(linear_prior(), SHAPE, **kwargs)


def test_bad_problems():
    op = _mask_op()
    with pytest.raises(ValueError, match=r"measurement contains 1 NaN/Inf values \(first at index \(3, 4, 0\)\)"):
        solvers.make_problem(op, jnp.zeros(SHAPE).at[3, 4, 0].set(jnp.nan), SHAPE)
    with pytest.raises(ValueError, match=r"measurement has shape \(4, 4, 1\); the operator 'inpainting' gives"):
        solvers.make_problem(op, jnp.zeros((4, 4, 1)), SHAPE)
    with pytest.raises(ValueError, match="unknown noise model 'speckle'"):
        solvers.make_problem(op, jnp.zeros(SHAPE), SHAPE, noise="speckle")
    pr = operators.build("phase_retrieval", SHAPE, oversample=2.0)
    runner = _runner(solver="mcg")
    with pytest.raises(ValueError, match="solver 'mcg' needs a linear operator.*'phase_retrieval' is nonlinear"):
        runner(solvers.make_problem(pr, pr(jnp.zeros(SHAPE)), SHAPE), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="image has 3 channels; the model takes 1"):
        solvers.build(linear_prior(channels=1), (8, 8, 3))
    with pytest.raises(ValueError, match="image size 12 x 12 is not divisible by 8"):
        solvers.build(linear_prior(size_multiple=8), (12, 12, 1))


def test_toy_solver_plugs_in_through_the_api():
    """One module (tests/toy_solver.py) and one registry line make a solver of the API and the runner."""
    if "x0_only" not in solvers.REGISTRY:
        solvers.register(toy_solver.SOLVER)
    pr = gaussian_prior(0.5).replace(image_size=8, channels=1)
    op = _mask_op()
    y = op(jnp.full(SHAPE, 0.5))
    out = api.sample(pr, op, y, solver="x0_only", options={"steps": 10, "noise_scale": 0.0}, num_samples=3,
                     chunk_size=2, seed=4)
    assert out["samples"].shape == (3,) + SHAPE and out["distance"].shape == (3, 10)
    # noise_scale 0: x_{t-1} = sqrt(ab_prev) x0_hat is deterministic given x_T, and the last x0_hat is the sample.
    for i, k in enumerate(jax.random.split(jax.random.PRNGKey(4), 3)):
        one = loop.run(toy_solver.SOLVER, k, _runner().xs, solvers.make_problem(op, y, SHAPE), pr,
                       toy_solver.Options(steps=10, noise_scale=0.0), SHAPE, record_every=9)
        np.testing.assert_allclose(out["samples"][i], one["sample"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one["sample"], one["x0_hat_record"][-1], rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        solvers.register(toy_solver.SOLVER)


# ---- an iterative solver runs through the same loop, stepping over iteration indices ------------------

@flax.struct.dataclass
class LandweberOptions:
    steps: int = base.static_field(6)
    step: float = 0.5


def _landweber_update(x, k, noise, problem, prior, options):
    """x_{k+1} = x_k + step A^T (y - A x_k); for a mask A (= A^T = A^2), from x_0 = 0:
    x_k = (1 - (1 - step)^k) y on the observed pixels, 0 elsewhere."""
    residual = problem.y - problem.op(x)
    return x + options.step * problem.op(residual), {"residual": jnp.sqrt(jnp.sum(residual ** 2)), "k": k}


LANDWEBER = base.Solver("landweber", LandweberOptions, init=lambda key, problem, prior, options, shape: jnp.zeros(shape),
                        update=_landweber_update, draw=base.draw_nothing, kind="iterative")


def test_an_iterative_solver_runs_through_the_same_loop_without_a_prior():
    op = _mask_op()
    y = op(jnp.full(SHAPE, 0.8))
    runner = solvers.build(None, SHAPE, solver=LANDWEBER, options={"step": 0.5}, num_samples=2, steps_per_call=2)
    out = runner(solvers.make_problem(op, y, SHAPE), jax.random.PRNGKey(0))
    np.testing.assert_allclose(out["samples"][0], (1 - 0.5 ** 6) * np.asarray(y), rtol=1e-6)
    np.testing.assert_array_equal(out["k"][0], np.arange(6))                  # stepped over the indices 0..5
    m = int(np.asarray(op.data["mask"]).sum())
    np.testing.assert_allclose(out["residual"][0], 0.8 * np.sqrt(m) * 0.5 ** np.arange(6), rtol=1e-5)
