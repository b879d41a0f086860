"""The notebook API, the shipped prior, metrics and image output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import linear_prior
from dps_jax import api, config_base, io, metrics, operators
from dps_jax.models.checkpoint import SHIPPED_PRIOR, load_checkpoint
from dps_jax.models.unet import PRESETS, preset


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


def test_shipped_prior_and_its_metadata_load_in_one_read():
    pr = api.load_prior()
    assert pr.image_shape == (32, 32, 1) and pr.var_type == "fixed_large"     # from the checkpoint's metadata
    assert pr.size_multiple == 4 and pr.clip_denoised
    ckpt = load_checkpoint(SHIPPED_PRIOR)
    assert ckpt.config == preset("fmnist32") and ckpt.extra["var_type"] == "fixed_large"


def test_config_presets_are_the_model_presets():
    assert set(config_base.PRESETS) == set(PRESETS)


def test_api_sample_in_one_call():
    shipped = api.load_prior()
    assert shipped.image_size == 32 and shipped.channels == 1
    pr = linear_prior(clip_denoised=True)          # the sampling on a prior that compiles in a second
    op = operators.build("inpainting", (32, 32, 1), key=jax.random.PRNGKey(0), mask_type="box",
                         box_len_range=(16, 17), margin=2)
    y = api.measure(op, jnp.zeros((32, 32, 1)), jax.random.PRNGKey(1))
    out = api.sample(pr, op, y, options={"steps": 2, "scale": 0.5}, num_samples=3, record_every=1, chunk_size=2)
    assert out["samples"].shape == (3, 32, 32, 1) and out["distance"].shape == (3, 2)
    assert np.isfinite(out["samples"]).all() and (out["distance"] > 0).all()
    assert out["x0_hat_record"].shape == (3, 2, 32, 32, 1) and np.abs(out["x0_hat_record"]).max() <= 1.0


def test_api_rejects_bad_input():
    pr = api.load_prior()
    op = operators.build("identity", (32, 32, 1))
    with pytest.raises(ValueError, match=r"measurement contains 1 NaN/Inf values \(first at index \(3, 4, 0\)\)"):
        api.sample(pr, op, jnp.zeros((32, 32, 1)).at[3, 4, 0].set(jnp.nan), options={"steps": 2})
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got 0"):
        api.sample(pr, op, jnp.zeros((32, 32, 1)), num_samples=0)
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['zeta'\\] for solver 'ps'"):
        api.sample(pr, op, jnp.zeros((32, 32, 1)), options={"zeta": 0.5})
    with pytest.raises(TypeError, match="options must be a mapping"):
        api.sample(pr, op, jnp.zeros((32, 32, 1)), options=0.5)


def test_repeated_calls_reuse_the_compiled_sampler_with_the_new_prior_and_measurement():
    """A second api.sample with the same operator object, another y and other prior weights compiles nothing
    (the runner and its one compiled program are reused) and gives what a fresh runner gives for them."""
    from dps_jax import solvers

    shape = (4, 4, 1)
    op = operators.build("inpainting", shape, key=jax.random.PRNGKey(0), mask_type="random",
                         drop_fraction=(0.5, 0.5))
    options = {"steps": 5, "scale": 0.5}
    y1, y2 = (np.asarray(op(np.full(shape, v, np.float32))) for v in (0.2, -0.4))
    api._RUNNERS.clear()
    api.sample(linear_prior(0.3), op, y1, options=options, num_samples=2, image_shape=shape, seed=1)
    (runner,) = api._RUNNERS.values()
    second = api.sample(linear_prior(0.7), op, y2, options=options, num_samples=2, image_shape=shape, seed=1)
    assert list(api._RUNNERS.values()) == [runner] and len(runner._compiled) == 1
    fresh = solvers.build(linear_prior(0.7), shape, solver="ps", options=options, num_samples=2)
    want = fresh(solvers.make_problem(op, y2, shape), jax.random.PRNGKey(1))
    np.testing.assert_allclose(second["samples"], want["samples"], rtol=1e-6, atol=1e-6)
    other = api.sample(linear_prior(0.3), op, y2, options=options, num_samples=2, image_shape=shape, seed=1)
    assert not np.allclose(other["samples"], second["samples"])       # the prior's values do reach the runner
