"""The scan loop and the guidance rules, with small denoisers whose DPS step has a closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import row
from dps_jax import diffusion, guidance, operators, samplers, schedule

SHAPE = (8, 8, 1)


def linear_denoiser(params, x, t):
    """eps_theta(x, t) = a * x: then x0_hat = (sqrt(1/ab) - sqrt(1/ab - 1) a) x, linear in x."""
    return params["a"] * x


PARAMS = {"a": jnp.asarray(0.3, jnp.float32)}
ALPHAS_CUMPROD = jnp.asarray(schedule.build_tables("linear", 1000).alphas_cumprod, jnp.float32)


def gaussian_prior_denoiser(params, x, t):
    """The exact eps prediction for data x0 ~ N(0, s^2 I): sqrt(1 - ab) x_t / (ab s^2 + 1 - ab)."""
    ab, s2 = ALPHAS_CUMPROD[t], params["s"] ** 2
    return jnp.sqrt(1 - ab) * x / (ab * s2 + 1 - ab)


def test_dps_step_closed_form(coefs):
    c = row(coefs, 3)
    cfg = samplers.SamplerConfig(var_type="fixed_small", clip_denoised=False, guidance="ps")
    op = operators.build("identity", SHAPE)
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(k1, SHAPE)
    y = jax.random.uniform(k2, SHAPE, minval=-1, maxval=1)
    nx, ny = jax.random.normal(k3, SHAPE), jax.random.normal(k4, SHAPE)
    scale = 0.7
    x_next, x0_hat, d = samplers.reverse_step(linear_denoiser, PARAMS, op, y, x, c, scale, cfg, nx, ny, k1)

    a = 0.3
    kx = float(c.sqrt_recip_alphas_cumprod) - float(c.sqrt_recipm1_alphas_cumprod) * a     # x0_hat = kx * x
    x, y, nx = map(np.asarray, (x, y, nx))
    r = y - kx * x
    want_d = np.linalg.norm(r)
    grad = -kx * r / want_d                                                                 # d/dx ||y - kx x||
    mean = float(c.posterior_mean_coef1) * kx * x + float(c.posterior_mean_coef2) * x
    want = mean + np.sqrt(float(c.posterior_variance)) * nx - scale * grad
    np.testing.assert_allclose(x0_hat, kx * x, rtol=1e-5)
    assert float(d) == pytest.approx(want_d, rel=1e-5)
    np.testing.assert_allclose(x_next, want, rtol=1e-4, atol=1e-5)


def test_no_noise_at_last_step_and_ddim_eta(coefs):
    op = operators.build("identity", SHAPE)
    x = jnp.ones(SHAPE)
    y = jnp.zeros(SHAPE)
    c0 = row(coefs, 9)
    assert int(c0.index) == 0
    for cfg in (samplers.SamplerConfig(var_type="fixed_large", guidance="vanilla"),
                samplers.SamplerConfig(sampler="ddim", eta=1.0, var_type="fixed_large", guidance="vanilla")):
        a = samplers.reverse_step(linear_denoiser, PARAMS, op, y, x, c0, 0.0, cfg, jnp.ones(SHAPE), y, None)[0]
        b = samplers.reverse_step(linear_denoiser, PARAMS, op, y, x, c0, 0.0, cfg, -jnp.ones(SHAPE), y, None)[0]
        np.testing.assert_array_equal(a, b)


def test_ddim_eta_zero_is_deterministic(coefs):
    op = operators.build("identity", SHAPE)
    x_T = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    y = jnp.zeros(SHAPE)
    run = lambda cfg, key: samplers.reverse_loop(linear_denoiser, PARAMS, op, y, x_T, key, coefs, 0.5, cfg)["sample"]
    det = samplers.SamplerConfig(sampler="ddim", eta=0.0, var_type="fixed_small")
    np.testing.assert_array_equal(run(det, jax.random.PRNGKey(1)), run(det, jax.random.PRNGKey(2)))
    sto = samplers.SamplerConfig(sampler="ddim", eta=1.0, var_type="fixed_small")
    assert not np.allclose(run(sto, jax.random.PRNGKey(1)), run(sto, jax.random.PRNGKey(2)))


def _mask_op(seed=0):
    return operators.build("inpainting", SHAPE, key=jax.random.PRNGKey(seed), mask_type="random", drop_fraction=0.5)


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_vmap_equals_separate_runs_and_is_deterministic(coefs, loop):
    cfg = samplers.SamplerConfig(var_type="fixed_small")
    op = _mask_op()
    y = op(jnp.full(SHAPE, 0.5))
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    f = samplers.make_sampler(linear_denoiser, cfg, SHAPE, loop=loop)
    out = f(PARAMS, op, y, keys, coefs, 1.0)
    assert out["sample"].shape == (4,) + SHAPE and out["distance"].shape == (4, 10)
    for i in range(4):
        one = samplers.sample_one(linear_denoiser, PARAMS, op, y, keys[i], coefs, 1.0, cfg, SHAPE)
        np.testing.assert_allclose(out["sample"][i], one["sample"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["distance"][i], one["distance"], rtol=1e-5)
    again = f(PARAMS, op, y, keys, coefs, 1.0)
    np.testing.assert_array_equal(out["sample"], again["sample"])          # same seed, same bits
    assert not np.allclose(out["sample"][0], out["sample"][1])             # samples differ


def test_each_sample_has_its_own_norm(coefs):
    """A sample's trajectory does not depend on the others drawn with it (no shared norm)."""
    cfg = samplers.SamplerConfig(var_type="fixed_small")
    op = _mask_op()
    y = op(jnp.full(SHAPE, 0.5))
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    f = samplers.make_sampler(linear_denoiser, cfg, SHAPE)
    three = f(PARAMS, op, y, keys, coefs, 1.0)["sample"]
    two = f(PARAMS, op, y, keys[:2], coefs, 1.0)["sample"]
    np.testing.assert_allclose(three[:2], two, rtol=1e-5, atol=1e-6)


def test_host_loop_equals_scan(coefs):
    """The two loop strategies run the same step with the same keys."""
    cfg = samplers.SamplerConfig(var_type="fixed_small", record_every=4)
    op = _mask_op()
    y = op(jnp.full(SHAPE, 0.5))
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    a = samplers.make_sampler(gaussian_prior_denoiser, cfg, SHAPE, loop="scan")({"s": 0.5}, op, y, keys, coefs, 1.0)
    b = samplers.make_sampler(gaussian_prior_denoiser, cfg, SHAPE, loop="host")({"s": 0.5}, op, y, keys, coefs, 1.0)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_new_measurement_does_not_retrace(coefs, loop):
    traces = []

    def counting_denoiser(params, x, t):
        traces.append(1)                 # runs only while tracing
        return linear_denoiser(params, x, t)

    cfg = samplers.SamplerConfig(var_type="fixed_small")
    f = samplers.make_sampler(counting_denoiser, cfg, SHAPE, loop=loop)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    op1, op2 = _mask_op(1), _mask_op(2)
    f(PARAMS, op1, op1(jnp.ones(SHAPE)), keys, coefs, 1.0)
    n = len(traces)
    assert n >= 1
    f(PARAMS, op2, op2(-jnp.ones(SHAPE)), keys, coefs, 0.5)        # new y, new mask, new scale
    f(PARAMS, op1, op1(jnp.zeros(SHAPE)), jax.random.split(jax.random.PRNGKey(9), 2), coefs, 1.0)
    assert len(traces) == n


def test_records_and_progress(coefs):
    calls = []
    cfg = samplers.SamplerConfig(var_type="fixed_small", record_every=3)
    op = operators.build("identity", SHAPE)
    out = jax.jit(lambda k: samplers.reverse_loop(linear_denoiser, PARAMS, op, jnp.zeros(SHAPE),
                                                  jnp.ones(SHAPE), k, coefs, 1.0, cfg,
                                                  progress=lambda i, n, d: calls.append(int(i))))(jax.random.PRNGKey(0))
    jax.effects_barrier()
    assert out["x_record"].shape == (4,) + SHAPE and out["x0_hat_record"].shape == (4,) + SHAPE
    np.testing.assert_array_equal(out["x_record"][3], out["sample"])    # j = 9 is the last step
    assert sorted(calls) == list(range(1, 11))


@pytest.mark.parametrize("method", ["ps", "ps+", "mcg"])
def test_zero_scale_guidance_is_unconditional(method, coefs):
    """With scale 0 the gradient rules reduce to the unconditional sampler (mcg keeps its projection)."""
    op = _mask_op()
    y = op(jnp.full(SHAPE, 0.5))
    x_T = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    run = lambda m: samplers.reverse_loop(linear_denoiser, PARAMS, op, y, x_T, jax.random.PRNGKey(1), coefs, 0.0,
                                          samplers.SamplerConfig(var_type="fixed_small", guidance=m))["sample"]
    base = run("projection" if method == "mcg" else "vanilla")
    np.testing.assert_allclose(run(method), base, rtol=1e-6, atol=1e-6)


def test_guidance_pulls_towards_measurement(coefs):
    op = _mask_op()
    y = op(jnp.full(SHAPE, 0.8))
    m = np.asarray(op.params["mask"])
    x_T = jax.random.normal(jax.random.PRNGKey(0), SHAPE)

    def residual(method, scale):
        cfg = samplers.SamplerConfig(var_type="fixed_small", guidance=method, clip_denoised=False)
        x = samplers.reverse_loop(gaussian_prior_denoiser, {"s": 0.5}, op, y, x_T, jax.random.PRNGKey(1), coefs, scale,
                                  cfg)["sample"]
        return float(np.abs((np.asarray(x) - np.asarray(y)) * m).max())

    assert residual("ps", 2.0) < 0.25 * residual("vanilla", 0.0)
    # The projection's last step puts the measured pixels at y_t, within sqrt(1 - alphas_cumprod[0]) * |z|.
    assert residual("projection", 0.0) < 0.06
    assert residual("mcg", 1.0) < 0.06


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="euler"), "unknown sampler 'euler'; expected one of \\('ddpm', 'ddim'\\)"),
    (dict(guidance="dps"), "unknown guidance method 'dps'"),
    (dict(var_type="tiny"), "unknown model variance type 'tiny'"),
    (dict(mean_type="v"), "unknown model mean type 'v'"),
    (dict(noise_model="speckle"), "unknown noise model 'speckle'"),
    (dict(eta=-1.0), "eta must be >= 0, got -1.0"),
    (dict(record_every=-2), "record_every must be >= 0, got -2"),
])
def test_bad_sampler_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        samplers.SamplerConfig(**kwargs)


def test_projection_needs_a_linear_operator():
    op = operators.build("phase_retrieval", SHAPE, oversample=2.0)
    with pytest.raises(ValueError, match="guidance 'mcg' needs a linear operator.*'phase_retrieval' is nonlinear"):
        guidance.check_method("mcg", op)


def test_unknown_loop():
    with pytest.raises(ValueError, match="unknown loop 'while'"):
        samplers.make_sampler(linear_denoiser, samplers.SamplerConfig(), SHAPE, loop="while")


def test_auto_loop_is_scan_unless_progress_is_reported():
    """A scan with a progress callback could not be stored in the persistent compilation cache."""
    cfg = samplers.SamplerConfig()
    assert samplers.make_sampler(linear_denoiser, cfg, SHAPE).loop == "scan"
    assert samplers.make_sampler(linear_denoiser, cfg, SHAPE, progress=lambda *a: None).loop == "host"
    assert samplers.make_sampler(linear_denoiser, cfg, SHAPE, progress=lambda *a: None, loop="scan").loop == "scan"
