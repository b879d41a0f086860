"""DiffPIR against its reference code (diffpir_inpaint.npz: yuanzhi-zhu/DiffPIR's inpainting script run
unchanged on the random-weight adm_ffhq_like network, 20 steps, tools/make_diffpir_fixtures.py): the
quadratic schedule and every step teacher-forced (the last one is the run's output); the data step
against dense linear algebra for the operators the fixture does not cover; then the solver through the API and the pairs it refuses."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import gaussian_prior, load_npz, measurement_fit, mixture_sr_case, nhwc
from dps_jax import api, diffusion, operators, prior, schedule, solvers
from dps_jax.solvers import diffpir, proximal


def case(ffhq_like, name="inpaint"):
    f = load_npz(f"diffpir_{name}.npz")
    spec = json.loads(str(f["spec"]))
    options = solvers.make_options(diffpir.SOLVER, lam=spec["lambda"], zeta=spec["zeta"], steps=spec["iter_num"])
    mask = nhwc(f["mask"])[0]
    x = 2 * (f["img"].astype(np.float32) / 255) - 1
    shape = x.shape
    op = operators.build("inpainting", shape, mask=mask)
    # the script's y: its noise N(0, (2 nl)^2) on the [-1, 1] image, kept pixels only (its holes at -1, ours 0)
    noisy = x + (f["y_noise"].astype(np.float32) if "y_noise" in f else 0.0)
    problem = solvers.make_problem(op, op(jnp.asarray(noisy)), shape, sigma=2 * spec.get("noise_level_img", 0.0))
    problem = solvers.prepare(diffpir.SOLVER, problem, options, shape)
    tables = schedule.build_tables("linear", 1000, diffpir.respacing(options))
    model, params, _ = ffhq_like
    return f, problem, prior.from_unet(model, params, "learned_range"), options, diffusion.step_coefficients(tables)


def test_quadratic_schedule_is_the_reference_one(ffhq_like):
    f, *_, coefs = case(ffhq_like)
    tables = schedule.build_tables("linear", 1000, 1000)
    reduced = np.sqrt(1 - tables.alphas_cumprod) / np.sqrt(tables.alphas_cumprod)
    t_ref = [int(np.abs(reduced - level / 255).argmin()) for level in f["noise_level"]]
    np.testing.assert_array_equal(np.asarray(coefs.t_model), t_ref)


def test_teacher_forced_steps_and_whole_run(ffhq_like):
    f, problem, pr, options, coefs = case(ffhq_like)
    x_in, x0 = nhwc(f["x_in"]), nhwc(f["x0"])
    randn = nhwc(f["randn"][:, 0])
    num = len(x_in)
    zeta_noise = np.stack([randn[1 + 3 * i + 2] for i in range(num - 1)] + [np.zeros_like(randn[0])])
    # the start: y itself read as a state at its noise level (0 here: the reference's inpainting is
    # noiseless), taken to t = 999 as the reference does; its y has the holes at -1 (black in its [0, 1]
    # images), ours at 0, which the weight sqrt(ab_999) = 0.0064 of the start keeps to 0.0064 per pixel
    c0 = jax.tree_util.tree_map(lambda a: a[0], coefs)
    start, noise_var = diffpir.start_image(problem, (16, 16, 3))
    np.testing.assert_array_equal(start, problem.y)
    assert float(noise_var) == 0.0
    ours = c0.sqrt_alphas_cumprod * start + c0.sqrt_one_minus_alphas_cumprod * randn[0]
    assert np.abs(ours - x_in[0]).max() < 0.0065
    states = {"x": jnp.asarray(x_in), "start": jnp.broadcast_to(problem.y, x_in.shape),
              "noise_var": jnp.zeros(num), "started": jnp.ones(num, bool)}
    step = jax.jit(jax.vmap(lambda s, c, z: diffpir.update(s, c, {"x": z}, problem, pr, options)))
    new, record = step(states, coefs, jnp.asarray(zeta_noise))
    scale = np.abs(x_in).max()
    assert np.abs(np.asarray(new["x"][:-1]) - x_in[1:]).max() <= 1e-5 * scale
    # x0_hat = (x_t - sqrt(1 - ab) eps) / sqrt(ab): at t = 999 float32 rounding of eps grows by 1 / sqrt(ab) = 156
    np.testing.assert_allclose(record["x0_hat"], x0, atol=1e-4)
    # the last step (t = 0) keeps x, which is the reference's output
    np.testing.assert_allclose(new["x"][-1], x_in[-1], atol=1e-6)
    np.testing.assert_allclose(nhwc(f["out"])[0] * 2 - 1, x_in[-1], atol=1e-6)   # what the reference saves


@pytest.mark.parametrize("name", ["inpaint24_15", "inpaint16_30"])
def test_the_scripts_runner_at_other_settings(name, ffhq_like):
    """The script's own main recompiled with other header values: 24 x 24, 15 steps, noise 12.75 / 255, lambda 7,
    zeta 0.3 (its deblurring runs'); 30 steps, noise 0.02, lambda 2, zeta 0.25. The schedule, and every step
    teacher-forced within 1e-5 relative (x0_hat within 1e-4, 5e-4 at t = 999: the rounding above)."""
    f, problem, pr, options, coefs = case(ffhq_like, name)
    tables = schedule.build_tables("linear", 1000, 1000)
    reduced = np.sqrt(1 - tables.alphas_cumprod) / np.sqrt(tables.alphas_cumprod)
    np.testing.assert_array_equal(np.asarray(coefs.t_model),
                                  [int(np.abs(reduced - level / 255).argmin()) for level in f["noise_level"]])
    x_in, x0 = nhwc(f["x_in"]), nhwc(f["x0"])
    randn = nhwc(f["randn"][:, 0])
    num = len(x_in)
    zeta_noise = np.stack([randn[1 + 3 * i + 2] for i in range(num - 1)] + [np.zeros_like(randn[0])])
    states = {"x": jnp.asarray(x_in), "start": jnp.broadcast_to(problem.y, x_in.shape),
              "noise_var": jnp.zeros(num), "started": jnp.ones(num, bool)}
    new, record = jax.jit(jax.vmap(lambda s, c, z: diffpir.update(s, c, {"x": z}, problem, pr, options)))(
        states, coefs, jnp.asarray(zeta_noise))
    assert np.abs(np.asarray(new["x"][:-1]) - x_in[1:]).max() <= 1e-5 * np.abs(x_in).max()
    np.testing.assert_allclose(record["x0_hat"][1:], x0[1:], atol=1e-4)
    np.testing.assert_allclose(record["x0_hat"][0], x0[0], atol=5e-4)      # t = 999: rounding x 156 (measured 2.8e-4)


@pytest.mark.parametrize("name", ["super_resolution", "gaussian_blur"])
def test_data_step_is_the_regularised_least_squares(name):
    """x0 = argmin ||y - A x||^2 + rho ||x - r||^2 = (A^T A + rho I)^{-1} (A^T y + rho r), with the dense A."""
    shape = (8, 8, 1)
    kw = {"scale_factor": 2} if name == "super_resolution" else {"kernel_size": 5, "intensity": 1.0}
    op = operators.build(name, shape, **kw)
    rng = np.random.default_rng(0)
    x, r = (rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2))
    problem = solvers.make_problem(op, op(x), shape, sigma=0.05)
    problem = solvers.prepare(diffpir.SOLVER, problem, solvers.make_options(diffpir.SOLVER), shape)
    a = np.asarray(jax.jacfwd(lambda v: op(v.reshape(shape)).reshape(-1))(jnp.zeros(64)), np.float64)
    for rho in (0.01, 1.0):
        want = np.linalg.solve(a.T @ a + rho * np.eye(64), a.T @ np.asarray(problem.y, np.float64).reshape(-1)
                               + rho * r.reshape(-1))
        got = proximal.solve(problem, jnp.asarray(r), rho)
        np.testing.assert_allclose(np.asarray(got).reshape(-1), want, atol=2e-4)


def test_diffpir_through_the_api():
    """On the Gaussian-mixture prior (fast to compile), SR x2 of an 8 x 8 image: vmapped samples that fit y to
    about the noise level; bad options and unsupported pairs are refused in one line."""
    pr, op, x, y, sigma = mixture_sr_case()
    shape = x.shape
    out = api.sample(pr, op, y, solver="diffpir", num_samples=3, sigma=sigma, image_shape=shape)
    assert out["samples"].shape == (3,) + shape and out["distance"].shape == (3, 100)
    fit = measurement_fit(op, out["samples"], y)
    assert (fit < 2 * sigma).all(), fit
    assert not np.allclose(out["samples"][0], out["samples"][1])
    with pytest.raises(ValueError, match=re.escape("'diffpir' needs the Gaussian noise std of y")):
        api.sample(pr, op, y, solver="diffpir", image_shape=shape)
    pr_op = operators.build("phase_retrieval", shape)
    with pytest.raises(ValueError, match="'diffpir' needs a linear operator"):
        api.sample(pr, pr_op, pr_op(x), solver="diffpir", sigma=sigma, image_shape=shape)
    with pytest.raises(ValueError, match=r"zeta must be in \[0, 1\]"):
        solvers.make_options(diffpir.SOLVER, zeta=1.5)


def test_a_noisy_gaussian_blur_starts_within_the_image_range():
    """The paper's blur (61 x 61, sigma 3) at 64 px with noise 0.05: DiffPIR starts from y itself, as its
    deblurring script, and at that script's lambda 7 and zeta 0.3 every state stays within a small multiple of
    the image range (its data step at high noise still amplifies the noise: the method's own, measured 4.7 at
    20 steps; 34 at lambda 1 and 5 steps). The SR start is y upsampled bicubically."""
    shape = (64, 64, 1)
    op = operators.build("gaussian_blur", shape, kernel_size=61, intensity=3.0)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, shape), jnp.float32)
    y = api.measure(op, x, jax.random.PRNGKey(0), sigma=0.05)
    problem = solvers.make_problem(op, y, shape, "gaussian", 0.05)
    start, noise_var = diffpir.start_image(problem, shape)
    np.testing.assert_array_equal(start, y)
    assert float(noise_var) == pytest.approx(0.05 ** 2)
    out = api.sample(gaussian_prior(0.5), op, y, solver="diffpir", options={"steps": 20, "lam": 7.0, "zeta": 0.3},
                     num_samples=2, sigma=0.05, image_shape=shape, record_every=1)
    assert np.abs(out["x_record"]).max() < 6.0 and np.isfinite(out["samples"]).all()
    sr = operators.build("super_resolution", (16, 16, 1), scale_factor=2)
    y_sr = sr(jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (16, 16, 1)), jnp.float32))
    up, noise_var = diffpir.start_image(solvers.make_problem(sr, y_sr, (16, 16, 1), "gaussian", 0.0), (16, 16, 1))
    assert up.shape == (16, 16, 1) and float(noise_var) == 0.0
    np.testing.assert_allclose(np.asarray(jax.image.resize(y_sr, (16, 16, 1), "cubic")), up, atol=1e-6)
