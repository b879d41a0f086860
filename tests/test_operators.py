"""Forward operators against the official code's outputs (operators.npz), and their properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import fixture_path, load_npz, nhwc
from dps_jax import likelihoods, operators
from dps_jax.operators import blur, inpainting, phase_retrieval

REF = load_npz("operators.npz")
X = nhwc(REF["x"])[0]                      # (128, 128, 3)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_super_resolution_matches_official(factor):
    op = operators.build("super_resolution", X.shape, scale_factor=factor)
    y = op(jnp.asarray(X))
    np.testing.assert_allclose(y, nhwc(REF[f"sr{factor}_down"])[0], atol=1e-5)
    np.testing.assert_allclose(op.display(y), nhwc(REF[f"sr{factor}_up_of_down"])[0], atol=1e-5)


def test_super_resolution_non_square():
    x = nhwc(REF["sr4_nonsquare_in"])[0]
    op = operators.build("super_resolution", x.shape, scale_factor=4)
    np.testing.assert_allclose(op(jnp.asarray(x)), nhwc(REF["sr4_nonsquare_down"])[0], atol=1e-5)


def test_super_resolution_size_not_a_multiple():
    op = operators.build("super_resolution", (30, 18, 1), scale_factor=4)
    y = op(jnp.ones((30, 18, 1)))
    assert y.shape == (8, 5, 1)
    np.testing.assert_allclose(y, 1.0, atol=1e-6)          # rows of the resize matrix sum to 1


def test_gaussian_kernel_matches_official():
    np.testing.assert_allclose(blur.gaussian_kernel(61, 3.0), REF["gauss61_kernel"], rtol=0, atol=1e-7)


def test_gaussian_blur_matches_official():
    op = operators.build("gaussian_blur", X.shape, kernel_size=61, intensity=3.0)
    np.testing.assert_allclose(op(jnp.asarray(X)), nhwc(REF["gauss61_blur"])[0], atol=1e-5)


def test_asymmetric_kernel_orientation_matches_official():
    op = operators.build("motion_blur", X.shape, kernel=REF["custom61_kernel"])
    np.testing.assert_allclose(op(jnp.asarray(X)), nhwc(REF["custom61_blur"])[0], atol=1e-5)


def test_phase_retrieval_matches_official():
    x = nhwc(REF["phase_retrieval_in"])[0]
    op = operators.build("phase_retrieval", x.shape, oversample=2.0)
    want = nhwc(REF["phase_retrieval_amplitude"])[0]
    got = np.asarray(op(jnp.asarray(x)))
    assert got.shape == (96, 96, 3)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_centered_fft_matches_official():
    ref = REF["fft2_centered_ortho"][0, 0]
    want = ref[..., 0] + 1j * ref[..., 1]
    got = np.asarray(phase_retrieval.fft2_centered(jnp.asarray(REF["x"][0, 0, :32, :32])[:, :, None]
                                                   .astype(jnp.complex64)))[:, :, 0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_paper_phase_retrieval_padding():
    op = operators.build("phase_retrieval", (256, 256, 3), oversample=2.0)
    assert dict(op.static) == {"pad_h": 64, "pad_w": 64, "unit_range": False, "image_shape": (256, 256, 3)}


def test_box_mask_fixture():
    mask = nhwc(REF["box_mask"])[0]
    op = operators.build("inpainting", X.shape, mask=mask[..., :1])
    np.testing.assert_allclose(op(jnp.asarray(X)), nhwc(REF["box_masked"])[0], atol=1e-7)


# ---- mask generators ---------------------------------------------------------------------------

def test_box_mask_size_and_margin():
    for seed in range(20):
        m = np.asarray(inpainting.generate_mask(jax.random.PRNGKey(seed), (64, 64, 3), "box",
                                                box_len_range=(10, 20), margin=(5, 7)))[..., 0]
        rows, cols = np.where(m == 0)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert 10 <= h < 20 and 10 <= w < 20
        assert (m == 0).sum() == h * w                       # one solid rectangle
        assert rows.min() >= 5 and cols.min() >= 7
        assert rows.max() < 64 - 5 and cols.max() < 64 - 7


def test_paper_box_is_128():
    m = np.asarray(inpainting.generate_mask(jax.random.PRNGKey(3), (256, 256, 3), "box",
                                            box_len_range=(128, 129), margin=(16, 16)))
    assert (m == 0).sum() == 128 * 128


def test_random_mask_fraction_and_channels():
    m = inpainting.generate_mask(jax.random.PRNGKey(0), (64, 64, 3), "random", drop_fraction=(0.92, 0.92))
    assert m.shape == (64, 64, 1)
    assert int((m == 0).sum()) == int(64 * 64 * 0.92)
    fr = [float((inpainting.generate_mask(jax.random.PRNGKey(s), (32, 32, 1), "random",
                                          drop_fraction=(0.3, 0.7)) == 0).mean()) for s in range(10)]
    assert all(0.29 <= f < 0.71 for f in fr) and np.std(fr) > 0.02


def test_extreme_and_both_masks():
    key = jax.random.PRNGKey(1)
    box = inpainting.generate_mask(key, (64, 64, 1), "box", box_len_range=(20, 21), margin=4)
    ext = inpainting.generate_mask(key, (64, 64, 1), "extreme", box_len_range=(20, 21), margin=4)
    np.testing.assert_array_equal(ext, 1 - box)
    both = inpainting.generate_mask(key, (64, 64, 1), "both", box_len_range=(20, 21), margin=4,
                                    drop_fraction=0.5)
    assert float(both.sum()) < float(box.sum()) and float((both * (1 - box)).sum()) == 0


def test_masks_repeat_for_a_key():
    a = inpainting.generate_mask(jax.random.PRNGKey(7), (32, 32, 1), "random", drop_fraction=0.5)
    b = inpainting.generate_mask(jax.random.PRNGKey(7), (32, 32, 1), "random", drop_fraction=0.5)
    np.testing.assert_array_equal(a, b)


# ---- motion kernels ----------------------------------------------------------------------------

def kernel_shape_stats(k):
    """(spread, thinness, support) of a kernel: the RMS radius of its mass, the ratio of its minor to major
    principal standard deviation (near 0: a straight streak), and how many pixels hold > 20% of its peak."""
    k = np.asarray(k, np.float64)
    k = k / k.sum()
    yy, xx = np.mgrid[:k.shape[0], :k.shape[1]]
    my, mx = (k * yy).sum(), (k * xx).sum()
    cov = [[(k * (yy - my) ** 2).sum(), (k * (yy - my) * (xx - mx)).sum()],
           [(k * (yy - my) * (xx - mx)).sum(), (k * (xx - mx) ** 2).sum()]]
    lo, hi = np.linalg.eigvalsh(cov)
    return np.sqrt(lo + hi), np.sqrt(max(lo, 0.0) / hi), float((k > 0.2 * k.max()).sum())


def ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov distance between the empirical distributions of a and b."""
    a, b = np.sort(a), np.sort(b)
    z = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, z, "right") / len(a) - np.searchsorted(b, z, "right") / len(b)).max()


def test_motion_kernel_properties():
    for seed in range(5):
        k = blur.motion_kernel(jax.random.PRNGKey(seed), 61, 0.5)
        assert k.shape == (61, 61) and k.dtype == np.float32 and k.min() >= 0 and abs(k.sum() - 1) < 1e-5


def test_motion_kernel_intensity_zero_is_a_straight_streak():
    """Every step in one direction: a streak whose width is the drawn line's, whatever its (random) length."""
    stats = [kernel_shape_stats(blur.motion_kernel(jax.random.PRNGKey(seed), 61, 0.0)) for seed in range(8)]
    long = [thin for spread, thin, _ in stats if spread > 5]
    assert len(long) >= 4 and max(long) < 0.1


def test_small_motion_kernels_are_drawn():
    """The shipped configs' 9 x 9 kernels: a path is drawn (the package's own line width would be 0 here)."""
    k = blur.motion_kernel(jax.random.PRNGKey(3), 9, 0.5)
    assert k.shape == (9, 9) and abs(k.sum() - 1) < 1e-5 and (k > 0).sum() >= 3


def test_motion_kernels_are_distributed_as_the_papers():
    """300 kernels (61, intensity 0.5) against 300 that the `motionblur` package drew itself (fixture): the
    spread, thinness and support distributions agree (two-sample KS distance below 0.13, its 1% critical
    value at 300 / 300; measured 0.04-0.05), and so do their quartiles. The previous generator (a smooth
    random-walk path of nearly constant spread) was at 0.54 / 0.15 / 0.58."""
    ref = np.load(fixture_path("motionblur_kernels.npz"))["kernels"].astype(np.float64)
    ours = np.array([kernel_shape_stats(blur.motion_kernel(jax.random.PRNGKey(1000 + i), 61, 0.5))
                     for i in range(len(ref))])
    theirs = np.array([kernel_shape_stats(k) for k in ref])
    for j, (name, tol) in enumerate([("spread", 1.5), ("thinness", 0.03), ("support", 10.0)]):
        assert ks_statistic(ours[:, j], theirs[:, j]) < 0.13, name
        np.testing.assert_allclose(np.percentile(ours[:, j], [25, 50, 75]), np.percentile(theirs[:, j], [25, 50, 75]),
                                   atol=tol, err_msg=name)
    assert abs(np.mean(ours[:, 1] < 0.15) - np.mean(theirs[:, 1] < 0.15)) < 0.08     # nearly straight ones


def test_motion_kernel_repeats_for_a_key():
    a = blur.motion_kernel(jax.random.PRNGKey(4), 31, 0.7)
    np.testing.assert_array_equal(a, blur.motion_kernel(jax.random.PRNGKey(4), 31, 0.7))
    assert not np.array_equal(a, blur.motion_kernel(jax.random.PRNGKey(5), 31, 0.7))


# ---- projections -------------------------------------------------------------------------------

def _images(shape, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.uniform(k1, shape, minval=-1, maxval=1), jax.random.uniform(k2, shape, minval=-1, maxval=1)


def test_inpainting_projection():
    x, other = _images((16, 16, 3))
    op = operators.build("inpainting", x.shape, key=jax.random.PRNGKey(0), mask_type="random", drop_fraction=0.5)
    y = op(other)
    p = op.project(x, y)
    np.testing.assert_allclose(op(p), y, atol=1e-7)                              # A(P(x)) = y
    m = np.asarray(op.data["mask"])
    np.testing.assert_allclose(np.asarray(p) * (1 - m), np.asarray(x) * (1 - m))  # hole left alone


def test_super_resolution_projection():
    x, other = _images((32, 32, 3))
    op = operators.build("super_resolution", x.shape, scale_factor=4)
    y = op(other)
    p = op.project(x, y)
    np.testing.assert_allclose(op(p), y, atol=1e-5)
    # The change lies in the row space of A: projecting p again is a no-op, and a change in
    # A's null space survives the projection.
    np.testing.assert_allclose(op.project(p, y), p, atol=1e-5)
    null = x - op.project(x, op(jnp.zeros_like(x)))       # the part of x that A sees
    np.testing.assert_allclose(op(x - null), 0.0, atol=1e-5)


def test_blur_projection():
    x, other = _images((16, 16, 1))
    op = operators.build("gaussian_blur", x.shape, kernel_size=3, intensity=0.5)
    y = op(other)
    p = op.project(x, y)
    assert float(jnp.abs(op(p) - y).max()) < 1e-3
    assert float(jnp.abs(op(x) - y).max()) > 0.1


def test_phase_retrieval_projection_restores_amplitude_of_true_image():
    x, _ = _images((8, 8, 1))
    op = operators.build("phase_retrieval", x.shape, oversample=2.0)
    np.testing.assert_allclose(op.project(x, op(x)), x, atol=1e-5)


def test_phase_retrieval_unit_range_measures_the_image_in_0_1():
    """DAPS's variant: A(x) = |F pad((x + 1) / 2)|, so x and -x differ in y; its projection keeps the true image."""
    x, _ = _images((8, 8, 1))
    op = operators.build("phase_retrieval", x.shape, oversample=2.0, unit_range=True)
    plain = operators.build("phase_retrieval", x.shape, oversample=2.0)
    np.testing.assert_allclose(op(x), plain((x + 1) / 2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(plain(x), plain(-x), atol=1e-5)
    assert float(jnp.abs(op(x) - op(-x)).max()) > 0.1
    np.testing.assert_allclose(op.project(x, op(x)), x, atol=1e-5)
    with pytest.raises(ValueError, match="unit_range must be True or False, got 'yes'"):
        operators.build("phase_retrieval", x.shape, unit_range="yes")


# ---- transforms compose ------------------------------------------------------------------------

OPS = [("super_resolution", dict(scale_factor=2)), ("inpainting", dict(key=jax.random.PRNGKey(0), mask_type="box",
                                                                         box_len_range=(4, 6), margin=2)),
       ("gaussian_blur", dict(kernel_size=5, intensity=1.0)),
       ("motion_blur", dict(kernel_size=5, intensity=0.5, key=jax.random.PRNGKey(0))),
       ("phase_retrieval", dict(oversample=2.0)), ("identity", {})]


@pytest.mark.parametrize("name, options", OPS, ids=[o[0] for o in OPS])
def test_operators_jit_vmap_grad(name, options):
    op = operators.build(name, (16, 16, 3), **options)
    xs = jax.random.uniform(jax.random.PRNGKey(1), (3, 16, 16, 3), minval=-1, maxval=1)
    direct = jnp.stack([op(x) for x in xs])
    np.testing.assert_allclose(jax.vmap(op)(xs), direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(lambda o, x: o(x))(op, xs[0]), direct[0], rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda x: jnp.sum(op(x) ** 2))(xs[0])
    assert g.shape == xs[0].shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


@pytest.mark.parametrize("name, options", OPS, ids=[o[0] for o in OPS])
def test_adjoint_is_the_transpose(name, options):
    """<A x, y> = <x, A^T y> for the linear operators; the nonlinear one has no adjoint."""
    op = operators.build(name, (16, 16, 3), **options)
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 16, 3))
    y = jax.random.normal(jax.random.PRNGKey(3), op(x).shape)
    if not op.linear:
        with pytest.raises(ValueError, match=f"operator '{name}' is nonlinear: it has no adjoint"):
            op.adjoint(y, x)
        return
    assert float(jnp.vdot(op(x), y)) == pytest.approx(float(jnp.vdot(x, op.adjoint(y, x))), rel=1e-5)


# ---- noise -------------------------------------------------------------------------------------

def test_poisson_noise_mean_and_variance_on_flat_image():
    level, rate = 0.0, 1.0                 # [-1, 1] value 0 -> 0.5 in [0, 1] -> lambda = 127.5
    y = likelihoods.add_noise(jax.random.PRNGKey(0), jnp.full((200, 200, 1), level), "poisson", rate=rate)
    counts = (np.asarray(y) + 1) / 2 * 255 * rate
    lam = 0.5 * 255 * rate
    assert abs(counts.mean() - lam) < 0.01 * lam
    assert abs(counts.var() - lam) < 0.05 * lam


def test_gaussian_noise_sigma():
    y = likelihoods.add_noise(jax.random.PRNGKey(0), jnp.zeros((300, 300, 1)), "gaussian", sigma=0.05)
    assert abs(float(jnp.std(y)) - 0.05) < 1e-3


def test_noise_repeats_for_a_key():
    a = likelihoods.add_noise(jax.random.PRNGKey(2), jnp.zeros((8, 8, 3)), "poisson", rate=0.5)
    np.testing.assert_array_equal(a, likelihoods.add_noise(jax.random.PRNGKey(2), jnp.zeros((8, 8, 3)),
                                                           "poisson", rate=0.5))


def test_poisson_distance_is_official_weighting():
    y = jnp.array([[[0.5]], [[-0.25]]])
    y_hat = jnp.array([[[0.1]], [[0.05]]])
    norm = np.sqrt(0.4 ** 2 + 0.3 ** 2)
    assert float(likelihoods.distance(y, y_hat, "poisson")) == pytest.approx(np.mean([norm / 0.5, norm / 0.25]))
    assert float(likelihoods.distance(y, y_hat, "gaussian")) == pytest.approx(norm)


# ---- bad parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, options, match", [
    ("super_resolution", dict(scale_factor=2.5), "scale_factor must be a positive integer, got 2.5"),
    ("super_resolution", dict(scale_factor=0), "scale_factor must be a positive integer, got 0"),
    ("super_resolution", dict(scale_factor=64), "scale_factor 64 is larger than the image"),
    ("gaussian_blur", dict(kernel_size=61, intensity=3.0), "kernel_size 61 is too large for a 16 x 16 image"),
    ("gaussian_blur", dict(kernel_size=4), "kernel_size must be a positive odd integer, got 4"),
    ("gaussian_blur", dict(kernel_size=5, intensity=-1.0), "sigma .* must be positive, got -1.0"),
    ("motion_blur", dict(kernel_size=5, intensity=1.5, key=jax.random.PRNGKey(0)), "intensity must lie in \\[0, 1\\], got 1.5"),
    ("inpainting", dict(key=jax.random.PRNGKey(0), mask_type="random", drop_fraction=1.0), "drop_fraction 1.0 must lie in \\[0, 1\\)"),
    ("inpainting", dict(key=jax.random.PRNGKey(0), mask_type="random", drop_fraction=-0.1), "drop_fraction -0.1"),
    ("inpainting", dict(key=jax.random.PRNGKey(0), mask_type="box", box_len_range=(12, 13), margin=4), "does not fit"),
    ("inpainting", dict(key=jax.random.PRNGKey(0), mask_type="ring"), "unknown mask_type 'ring'"),
    ("inpainting", dict(mask=np.ones((8, 8))), "inpainting mask has shape"),
    ("phase_retrieval", dict(oversample=-1.0), "oversample must be >= 0, got -1.0"),
    ("deblur_everything", {}, "unknown operator 'deblur_everything'"),
])
def test_bad_operator_parameters(name, options, match):
    with pytest.raises(ValueError, match=match):
        operators.build(name, (16, 16, 3), **options)


@pytest.mark.parametrize("name, options, match", [
    ("gaussian", dict(sigma=-0.1), "sigma must be >= 0, got -0.1"),
    ("poisson", dict(rate=0.0), "rate must be > 0, got 0.0"),
    ("laplace", {}, "unknown noise model 'laplace'"),
])
def test_bad_noise_parameters(name, options, match):
    with pytest.raises(ValueError, match=match):
        likelihoods.add_noise(jax.random.PRNGKey(0), jnp.zeros((4, 4, 1)), name, **options)
