"""DDRM against its reference code (ddrm_*.npz, from bahjat-kawar/ddrm's sampler with the random-weight
adm_ffhq_like network, 20 steps): the start x_T, every step teacher-forced, and a whole run (relative
differences ~1e-6 measured for all three; 1e-5 asserted); then the solver on dps_jax's own operators and the pairs it
refuses."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import SpectralOp, block_average, load_npz, nhwc
from dps_jax import api, diffusion, operators, prior, schedule, solvers
from dps_jax.operators import spectral
from dps_jax.solvers import base, ddrm, loop

CASES = ["sr2", "blur", "inpaint"]


def case(name, ffhq_like):
    """The fixture, a problem carrying the fixture's SVD, the prior, options and coefficient rows."""
    f = load_npz(f"ddrm_{name}.npz")
    spec = json.loads(str(f["spec"]))
    sp = spectral.Spectral(**{k: jnp.asarray(f[k]) for k in spectral.Spectral._fields})
    y = nhwc(f["y"])[0]
    problem = solvers.Problem(op=None, y=jnp.asarray(y), sigma=np.float32(spec["sigma_0"]), aux=sp)
    tables = schedule.build_tables("linear", 1000, base.reference_stride(solvers.make_options(ddrm.SOLVER)))
    np.testing.assert_array_equal(tables.timestep_map, f["timesteps"])
    model, params, _ = ffhq_like
    options = solvers.make_options(ddrm.SOLVER, eta=spec["eta"], eta_b=spec["eta_b"])
    return f, problem, prior.from_unet(model, params, "learned_range"), options, diffusion.step_coefficients(tables)


def with_op(problem):
    return problem.replace(op=SpectralOp(problem.aux))


@pytest.mark.parametrize("name", CASES)
def test_start_is_the_reference_x_T(name, ffhq_like):
    f, problem, pr, options, coefs = case(name, ffhq_like)
    y_bar = spectral.measurement_to_spectral(problem.aux, problem.y)
    x_T = ddrm.initial_x(problem.aux, y_bar, problem.sigma, jnp.asarray(f["z_init"]), coefs.alphas_cumprod[0])
    np.testing.assert_allclose(x_T, nhwc(f["xs"])[0], atol=2e-5)


@pytest.mark.parametrize("name", CASES)
def test_teacher_forced_steps(name, ffhq_like):
    f, problem, pr, options, coefs = case(name, ffhq_like)
    problem = with_op(problem)
    xs, x0s = nhwc(f["xs"]), nhwc(f["x0_preds"])
    states = {"x": jnp.asarray(xs[:-1]), "started": jnp.ones(len(x0s), bool)}
    step = lambda s, c, z: ddrm.update(s, c, {"x": z}, problem, pr, options)
    new, record = jax.jit(jax.vmap(step))(states, coefs, jnp.asarray(f["z_steps"]))
    scale = np.abs(xs[1:]).reshape(len(x0s), -1).max(axis=1)
    err = np.abs(np.asarray(new["x"]) - xs[1:]).reshape(len(x0s), -1).max(axis=1) / scale
    assert err.max() <= 1e-5, err
    err0 = np.abs(np.asarray(record["x0_hat"]) - x0s).reshape(len(x0s), -1).max(axis=1)
    assert (err0 / np.abs(x0s).reshape(len(x0s), -1).max(axis=1)).max() <= 1e-5, err0


@pytest.mark.parametrize("name", ["blur"])          # the case with every branch: zeroed singulars, eta_b < 1
def test_free_running(name, ffhq_like):
    f, problem, pr, options, coefs = case(name, ffhq_like)
    problem = with_op(problem)
    state = {"x": jnp.asarray(f["z_init"]), "started": jnp.asarray(False)}
    run = jax.jit(lambda s, z: loop.scan(ddrm.SOLVER, s, coefs, None, problem, pr, options, noise={"x": z}))
    final, _, scalars = run(state, jnp.asarray(f["z_steps"]))
    want = nhwc(f["xs"])[-1]
    assert np.abs(np.asarray(final["x"]) - want).max() <= 1e-5 * np.abs(want).max()
    assert np.isfinite(np.asarray(scalars["distance"])).all()


def test_ddrm_through_the_api_fits_the_measurement():
    """On the shipped prior, SR x4: the posterior samples agree with y to about the noise level (an
    unconditional sample of the prior misses it by more than 4 sigma), and a missing sigma is refused."""
    pr = api.load_prior()
    op = operators.build("super_resolution", (32, 32, 1), scale_factor=4)
    x = jnp.full((32, 32, 1), -0.9).at[8:24, 8:24].set(0.8).at[12:20, 4:28].set(-0.6)
    sigma = 0.05
    y = api.measure(op, x, jax.random.PRNGKey(1), sigma=sigma)
    out = api.sample(pr, op, y, solver="ddrm", options={"steps": 10}, num_samples=2, sigma=sigma)
    # The solver's options reach the solver (an earlier API took `steps` itself and DDRM ran its own 20).
    assert out["samples"].shape == (2, 32, 32, 1) and out["distance"].shape == (2, 10)
    rmse = np.sqrt(np.mean((np.asarray(jax.vmap(op)(jnp.asarray(out["samples"]))) - np.asarray(y)) ** 2, axis=(1, 2, 3)))
    assert (rmse < 2 * sigma).all(), rmse
    with pytest.raises(ValueError, match=re.escape("ddrm eta must be in [0, 1], got 2.0")):   # DDRM's eta, not DDIM's
        api.sample(pr, op, y, solver="ddrm", options={"steps": 10, "eta": 2.0}, sigma=sigma)
    with pytest.raises(ValueError, match=re.escape("'ddrm' needs the Gaussian noise std of y")):
        api.sample(pr, op, y, solver="ddrm")


# --- the reference's own operator classes and runner grid (ddrm_sr2_own, ddrm_inpaint_own) ------------------------

def own_case(name, ffhq_like):
    """A fixture run on DDRM's own SuperResolution / Inpainting class, and the same problem on dps_jax's operator:
    its SVD derived by dps_jax, the reference's noises (stored as images) mapped into it."""
    f = load_npz(f"ddrm_{name}.npz")
    spec = json.loads(str(f["spec"]))
    n = spec["size"]
    shape = (n, n, 3)
    if spec["operator"] == "SuperResolution":
        op, to_y = block_average(n, spec["ratio"])
        y = to_y(f["y"])
    else:
        keep = np.ones(n * n * 3, bool)
        keep[f["missing_indices"]] = False            # the reference indexes pixels, channels interleaved: HWC order
        op = operators.build("inpainting", shape, mask=keep.reshape(shape).astype(np.float32))
        y = np.zeros(n * n * 3, np.float32)
        y[keep] = f["y"]
        y = y.reshape(shape)
    options = solvers.make_options(ddrm.SOLVER, steps=spec["steps"], eta=spec["eta"], eta_b=spec["eta_b"])
    problem = base.prepare(ddrm.SOLVER, solvers.make_problem(op, y, shape, sigma=spec["sigma_0"]), options, shape)
    tables = schedule.build_tables("linear", 1000, base.reference_stride(options))
    np.testing.assert_array_equal(tables.timestep_map, f["timesteps"])
    model, params, _ = ffhq_like
    z = jax.vmap(lambda img: spectral.to_spectral(problem.aux, img))(jnp.asarray(f["z_steps_image"]))
    return f, problem, prior.from_unet(model, params, "learned_range"), options, diffusion.step_coefficients(tables), z


@pytest.mark.parametrize("name", ["sr2_own", "inpaint_own"])
def test_reference_operator_classes_at_other_settings(name, ffhq_like):
    """24 x 24, 15 steps (the runner's 16 at stride 66), other etas and noise: the start and every step
    teacher-forced within 1e-5 relative."""
    f, problem, pr, options, coefs, z = own_case(name, ffhq_like)
    xs, x0s = nhwc(f["xs"]), nhwc(f["x0_preds"])
    y_bar = spectral.measurement_to_spectral(problem.aux, problem.y)
    z_init = spectral.to_spectral(problem.aux, jnp.asarray(f["z_init_image"]))
    x_T = ddrm.initial_x(problem.aux, y_bar, problem.sigma, z_init, coefs.alphas_cumprod[0])
    np.testing.assert_allclose(x_T, xs[0], atol=1e-5 * np.abs(xs[0]).max())
    states = {"x": jnp.asarray(xs[:-1]), "started": jnp.ones(len(x0s), bool)}
    step = lambda s, c, zz: ddrm.update(s, c, {"x": zz}, problem, pr, options)
    new, record = jax.jit(jax.vmap(step))(states, coefs, z)
    scale = np.abs(xs[1:]).reshape(len(x0s), -1).max(axis=1)
    err = np.abs(np.asarray(new["x"]) - xs[1:]).reshape(len(x0s), -1).max(axis=1) / scale
    assert err.max() <= 1e-5, err
