"""The notebook API, the shipped prior, metrics and image output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import api, diffusion, io, metrics, operators, samplers, schedule
from dps_jax.models.checkpoint import read_extra


def test_psnr_closed_form():
    x = np.zeros((8, 8, 1))
    y = x + 0.2                                # 0.1 on [0, 1]: mse 0.01 -> 20 dB
    assert metrics.psnr(y, x) == pytest.approx(20.0)
    assert metrics.psnr(x, x) == float("inf")


def test_ssim_properties():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 32, 3))
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    noisy = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1)
    worse = np.clip(x + rng.normal(0, 0.8, x.shape), -1, 1)
    assert 1.0 > metrics.ssim(noisy, x) > metrics.ssim(worse, x)
    # A constant shift of a flat image: SSIM's luminance term (2 mu_a mu_b + c1) / (mu_a^2 + mu_b^2 + c1).
    a, b = np.full((16, 16, 1), -0.5), np.full((16, 16, 1), 0.0)      # 0.25 and 0.5 on [0, 1]
    c1 = 0.01 ** 2
    assert metrics.ssim(a, b) == pytest.approx((2 * 0.25 * 0.5 + c1) / (0.25 ** 2 + 0.5 ** 2 + c1))


def test_grid_and_png(tmp_path):
    imgs = np.stack([np.full((4, 4, 1), v) for v in (-1.0, 0.0, 1.0)])
    g = io.grid(imgs, columns=2, pad=1)
    assert g.shape == (9, 9, 1) and g[0, 0, 0] == -1 and g[0, 5, 0] == 0 and g[5, 0, 0] == 1
    io.save_png(str(tmp_path / "g.png"), g, scale=2)
    from PIL import Image
    im = Image.open(tmp_path / "g.png")
    assert im.size == (18, 18)
    assert np.asarray(im)[0, 0] == 0 and np.asarray(im)[0, 10] == 128


def test_shipped_prior_loads_and_runs_a_dps_step():
    model, params, cfg = api.load_prior()
    assert (cfg.image_size, cfg.in_channels) == (32, 1)
    assert read_extra(api.SHIPPED_PRIOR)["var_type"] == "fixed_large"
    op = operators.build("super_resolution", (32, 32, 1), scale_factor=4)
    x = jnp.zeros((32, 32, 1))
    y = op(x)
    c = jax.tree_util.tree_map(lambda a: a[0], diffusion.step_coefficients(schedule.build_tables("linear", 1000, "10")))
    x_t = jax.random.normal(jax.random.PRNGKey(0), (32, 32, 1))
    out = samplers.unet_denoise_fn(model)(params, x_t, c.t_model)
    assert out.shape == (32, 32, 1) and bool(jnp.all(jnp.isfinite(out)))
    cfg_s = samplers.SamplerConfig(var_type="fixed_large")
    x_next, x0_hat, d = samplers.reverse_step(samplers.unet_denoise_fn(model), params, op, y, x_t, c, 0.5, cfg_s,
                                              jnp.zeros_like(x_t), jnp.zeros_like(y), None)
    assert bool(jnp.all(jnp.isfinite(x_next))) and float(d) > 0
    # The guided step moves x against the gradient: x' - x_next = scale * grad, and the gradient is nonzero.
    cfg_v = samplers.SamplerConfig(var_type="fixed_large", guidance="vanilla")
    x_prime = samplers.reverse_step(samplers.unet_denoise_fn(model), params, op, y, x_t, c, 0.5, cfg_v,
                                    jnp.zeros_like(x_t), jnp.zeros_like(y), None)[0]
    assert float(jnp.abs(x_prime - x_next).max()) > 0


def test_api_sample_in_one_call():
    model, params, cfg = api.load_prior()
    op = operators.build("inpainting", (32, 32, 1), key=jax.random.PRNGKey(0), mask_type="box",
                         box_len_range=(16, 17), margin=2)
    x = jnp.zeros((32, 32, 1))
    y = api.measure(op, x, jax.random.PRNGKey(1))
    out = api.sample(model, params, op, y, num_samples=3, steps=2, scale=0.5, record_every=1)
    assert out["samples"].shape == (3, 32, 32, 1) and out["distance"].shape == (3, 2)
    assert out["x0_hat_record"].shape == (3, 2, 32, 32, 1)


def test_api_rejects_bad_measurements():
    model, params, _ = api.load_prior()
    op = operators.build("identity", (32, 32, 1))
    y = jnp.zeros((32, 32, 1)).at[3, 4, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"measurement contains 1 NaN/Inf values \(first at index \(3, 4, 0\)\)"):
        api.sample(model, params, op, y, steps=2)
    with pytest.raises(ValueError, match=r"measurement has shape \(16, 16, 1\); the operator produces \(32, 32, 1\)"):
        api.sample(model, params, op, jnp.zeros((16, 16, 1)), steps=2)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got 0"):
        api.sample(model, params, op, jnp.zeros((32, 32, 1)), num_samples=0)
