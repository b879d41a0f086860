"""The SVDs of the operators that have one (for DDRM): U^T A x = Sigma V^T x, V orthogonal, A through
the factors equals the operator itself."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import operators
from dps_jax.operators import spectral

CASES = [
    ("super_resolution", (32, 32, 1), dict(scale_factor=4)),
    ("super_resolution", (16, 24, 3), dict(scale_factor=2)),
    ("gaussian_blur", (16, 20, 3), dict(kernel_size=9, intensity=1.5)),
    ("inpainting", (16, 16, 3), dict(mask_type="random", drop_fraction=(0.7, 0.7))),
    ("identity", (8, 8, 2), {}),
]


@pytest.mark.parametrize("name, shape, options", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_svd_reproduces_the_operator(name, shape, options):
    op = operators.build(name, shape, jax.random.PRNGKey(0), **options)
    sp = op.svd(shape)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    y = op(x)
    np.testing.assert_allclose(spectral.apply(sp, x), y, atol=2e-5)
    # U^T (A x) = Sigma V^T x on every coordinate (zeros where A sees nothing)
    np.testing.assert_allclose(spectral.measurement_to_spectral(sp, y),
                               sp.singulars * spectral.to_spectral(sp, x), atol=2e-5)
    # V is orthogonal: from_spectral inverts to_spectral and keeps norms
    v = spectral.to_spectral(sp, x)
    np.testing.assert_allclose(spectral.from_spectral(sp, v), x, atol=2e-5)
    assert float(jnp.linalg.norm(v)) == pytest.approx(float(jnp.linalg.norm(x)), rel=1e-5)
    assert float(sp.singulars.min()) >= 0


def test_super_resolution_x4_sees_one_coordinate_in_sixteen():
    op = operators.build("super_resolution", (32, 32, 1), scale_factor=4)
    s = np.asarray(op.svd((32, 32, 1)).singulars)
    assert (s[:8, :8] > 0).all() and (s[8:] == 0).all() and (s[:, 8:] == 0).all()


def test_inpainting_singulars_are_the_mask():
    op = operators.build("inpainting", (8, 8, 1), jax.random.PRNGKey(2), mask_type="random", drop_fraction=(0.5, 0.5))
    np.testing.assert_array_equal(op.svd((8, 8, 1)).singulars, op.data["mask"])


def test_reflect_matrix_matches_numpy_reflect_padding():
    taps = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    x = np.random.default_rng(0).normal(size=7)
    want = np.correlate(np.pad(x, 2, mode="reflect"), taps, mode="valid")
    np.testing.assert_allclose(spectral.reflect_correlation_matrix(taps, 7) @ x, want, rtol=1e-12)


@pytest.mark.parametrize("name, options, match", [
    ("motion_blur", dict(kernel_size=9, intensity=0.5), "'motion_blur' has no efficient SVD"),
    ("phase_retrieval", {}, "'phase_retrieval' has no SVD (it is not linear)"),
])
def test_operators_without_an_svd_are_refused(name, options, match):
    op = operators.build(name, (16, 16, 1), jax.random.PRNGKey(0), **options)
    with pytest.raises(ValueError, match=re.escape(match)):
        op.svd((16, 16, 1))


def test_cutoff_zeroes_small_singulars_but_keeps_them_observed():
    op = operators.build("gaussian_blur", (16, 16, 1), kernel_size=9, intensity=2.0)
    full, cut = op.svd((16, 16, 1)), op.svd((16, 16, 1), cutoff=0.03)
    s_full, s_cut = np.asarray(full.singulars), np.asarray(cut.singulars)
    one_d = np.sqrt(np.diag(s_full[..., 0]))                      # s_L = s_R here: the diagonal is s_i^2
    small = one_d < 0.03
    assert 0 < small.sum() < 16                                   # the case exercises both sides
    assert (s_cut[small, :] == 0).all() and (s_cut[:, small] == 0).all()
    np.testing.assert_array_equal(s_cut[~small][:, ~small], s_full[~small][:, ~small])
    np.testing.assert_array_equal(np.asarray(cut.observed), 1.0)  # a square blur observes every coordinate
    sr = operators.build("super_resolution", (32, 32, 1), scale_factor=4).svd((32, 32, 1))
    obs = np.asarray(sr.observed)[..., 0]
    assert obs[:8, :8].all() and obs.sum() == 64


def test_dense_svd_with_more_measurements_than_pixels_keeps_the_columns_that_matter():
    """A 2-D Fourier transform's real and imaginary parts on a random mask (M = 2 D): U keeps its first D columns
    (the others meet no singular value), and the factors still give A x and U^T A x = Sigma V^T x; a full U
    handed to `dense` is cut to the same; a U of any other width is refused by name."""
    shape = (4, 4, 1)
    mask = jnp.asarray(np.random.default_rng(0).random((4, 4)) < 0.6, jnp.float32)
    fourier = lambda x: jnp.stack([jnp.fft.fft2(x[..., 0], norm="ortho").real,
                                   jnp.fft.fft2(x[..., 0], norm="ortho").imag], -1) * mask[..., None]
    sp = spectral.dense_of(fourier, shape)
    assert sp.u.shape == (32, 16) and sp.v.shape == (16, 16)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    np.testing.assert_allclose(spectral.apply(sp, x), fourier(x), atol=1e-5)
    np.testing.assert_allclose(spectral.measurement_to_spectral(sp, fourier(x)),
                               sp.singulars * spectral.to_spectral(sp, x), atol=1e-5)
    a = np.asarray(jax.vmap(fourier)(jnp.eye(16).reshape(16, 4, 4, 1))).reshape(16, -1).T
    u, s, vt = np.linalg.svd(a.astype(np.float64), full_matrices=True)
    full = spectral.dense(u, s, vt.T, shape, (4, 4, 2))
    assert full.u.shape == (32, 16)
    np.testing.assert_allclose(spectral.apply(full, x), fourier(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"needs U \(32, 32\) or \(32, 16\).*got U \(32, 20\)"):
        spectral.dense(u[:, :20], s, vt.T, shape, (4, 4, 2))
