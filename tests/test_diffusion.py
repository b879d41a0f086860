"""Closed-form checks of the one-step diffusion math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import row
from dps_jax import diffusion, schedule


@pytest.fixture(scope="module")
def coefs():
    return diffusion.step_coefficients(schedule.build_tables("linear", 1000, "100"))


def test_step_coefficients_reverse_order(coefs):
    assert int(coefs.index[0]) == 99 and int(coefs.index[-1]) == 0
    assert int(coefs.t_model[0]) == 999 and int(coefs.t_model[-1]) == 0
    assert coefs.alphas_cumprod.dtype == jnp.float32


def test_tweedie_inverts_q_sample(coefs):
    key = jax.random.PRNGKey(0)
    x0 = jax.random.uniform(key, (8, 8, 3), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    for i in (0, 50, 99):
        c = row(coefs, i)
        x_t = diffusion.q_sample(x0, c, eps)
        np.testing.assert_allclose(diffusion.x0_from_eps(x_t, c, eps), x0, atol=2e-3)
        np.testing.assert_allclose(diffusion.eps_from_x0(x_t, c, x0), eps, atol=2e-3)


def test_posterior_mean_and_previous_x_roundtrip(coefs):
    c = row(coefs, 40)
    x0 = jnp.linspace(-1, 1, 48).reshape(4, 4, 3)
    x_t = jnp.cos(x0 * 3.0)
    mean = diffusion.posterior_mean(x0, x_t, c)
    ab, ab_prev = float(c.alphas_cumprod), float(c.alphas_cumprod_prev)
    beta = 1 - ab / ab_prev
    want = (np.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * x_t
    np.testing.assert_allclose(mean, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diffusion.x0_from_previous_x(x_t, c, mean), x0, atol=1e-4)


def test_learned_range_interpolates_between_bounds(coefs):
    c = row(coefs, 30)
    x = jnp.zeros((2, 2, 3))
    for v, want in ((-1.0, c.posterior_log_variance_clipped), (1.0, c.log_betas),
                    (0.0, 0.5 * (c.posterior_log_variance_clipped + c.log_betas))):
        out = jnp.concatenate([jnp.zeros_like(x), jnp.full_like(x, v)], axis=-1)
        _, log_var, _ = diffusion.p_mean_variance(out, x, c, var_type="learned_range")
        np.testing.assert_allclose(log_var, np.full(x.shape, want), rtol=1e-6)


def test_fixed_variances(coefs):
    c = row(coefs, 30)
    x = jnp.zeros((2, 2, 3))
    _, lv_small, _ = diffusion.p_mean_variance(x, x, c, var_type="fixed_small")
    _, lv_large, _ = diffusion.p_mean_variance(x, x, c, var_type="fixed_large")
    np.testing.assert_allclose(lv_small, np.log(float(c.posterior_variance)), rtol=1e-5)
    np.testing.assert_allclose(lv_large, float(c.log_betas), rtol=1e-5)
    assert float(lv_large[0, 0, 0]) > float(lv_small[0, 0, 0])


def test_clip_and_mean_types(coefs):
    c = row(coefs, 10)
    x_t = jnp.full((2, 2, 1), 5.0)
    _, _, x0 = diffusion.p_mean_variance(x_t * 0, x_t, c, var_type="fixed_small", clip_denoised=True)
    assert float(x0.max()) == 1.0
    _, _, x0 = diffusion.p_mean_variance(x_t * 0, x_t, c, var_type="fixed_small", clip_denoised=False)
    assert float(x0.max()) > 5.0
    start = jnp.full((2, 2, 1), 0.25)
    mean, _, x0 = diffusion.p_mean_variance(start, x_t, c, mean_type="start_x", var_type="fixed_small")
    np.testing.assert_allclose(x0, start)
    np.testing.assert_allclose(mean, diffusion.posterior_mean(start, x_t, c))


def test_dynamic_threshold_rescales_outliers():
    x = jnp.concatenate([jnp.full((90,), 0.5), jnp.full((10,), 4.0)])
    out = diffusion.dynamic_threshold(x, 0.95)
    s = float(jnp.quantile(jnp.abs(x), 0.95))
    assert s > 1
    np.testing.assert_allclose(out, np.clip(np.asarray(x), -s, s) / s, rtol=1e-6)
    small = jnp.array([0.1, -0.2, 0.3])
    np.testing.assert_allclose(diffusion.dynamic_threshold(small), small)   # s < 1: unchanged


def test_bad_types_are_named(coefs):
    c = row(coefs, 0)
    x = jnp.zeros((2, 2, 3))
    with pytest.raises(ValueError, match="unknown model mean type 'velocity'"):
        diffusion.p_mean_variance(x, x, c, mean_type="velocity")
    with pytest.raises(ValueError, match="unknown model variance type 'huge'"):
        diffusion.p_mean_variance(x, x, c, var_type="huge")
    with pytest.raises(ValueError, match="needs a model with 2 x 3 output channels"):
        diffusion.p_mean_variance(x, x, c, var_type="learned_range")
    with pytest.raises(ValueError, match="model output has 5 channels"):
        diffusion.p_mean_variance(jnp.zeros((2, 2, 5)), x, c)
