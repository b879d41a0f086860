"""Your own forward model: an operator from plain JAX functions, what is derived for a linear one, the checks
at the door, and every solver whose math allows it running on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import api, operators, solvers
from dps_jax.analytic import gmm, networks
from dps_jax.operators import spectral
from helpers import measurement_fit, random_mixture

SHAPE = (8, 8, 1)


def subsampled_fourier(image_shape, keep=0.4, seed=0):
    """Compressed sensing: a random subset of the 2-D DFT's coefficients, real and imaginary parts stacked
    (a user's linear A, written with jnp alone), and its mask."""
    mask = np.random.default_rng(seed).random(image_shape[:2]) < keep
    mask[0, 0] = True

    def forward(x, data):
        k = jnp.fft.fft2(x[..., 0], norm="ortho")
        return jnp.stack([k.real, k.imag], -1) * data["mask"][..., None]
    return forward, {"mask": jnp.asarray(mask, jnp.float32)}


def test_a_user_operator_jits_vmaps_and_derives_what_a_linear_one_needs():
    forward, data = subsampled_fourier(SHAPE)
    op = operators.from_callables(forward, SHAPE, linear=True, data=data, name="cs")
    x = jax.random.uniform(jax.random.PRNGKey(1), SHAPE, minval=-1, maxval=1)
    y = op(x)
    assert y.shape == (8, 8, 2) and op.image_shape == SHAPE
    np.testing.assert_allclose(jax.jit(lambda o, v: o(v))(op, x), y, atol=1e-6)        # a pytree: jits
    assert jax.vmap(op)(jnp.stack([x, -x])).shape == (2, 8, 8, 2)
    # The derived projection lands on {A x = y} and moves x only in A's row space.
    p = op.project(jnp.zeros(SHAPE), y)
    np.testing.assert_allclose(op(p), y, atol=1e-4)
    np.testing.assert_allclose(op.project(p, y), p, atol=1e-4)
    # The dense SVD reproduces A, and its pseudo-inverse is the projection of 0 (the least-norm solution).
    sp = op.svd(SHAPE)
    np.testing.assert_allclose(spectral.apply(sp, x), y, atol=1e-4)
    np.testing.assert_allclose(spectral.regularised_pinv(sp, y), p, atol=1e-4)
    # New data, same program: the arrays are arguments.
    op2 = op.replace(arrays={"mask": 1.0 - data["mask"]})
    assert float(jnp.abs(op2(x) - y).max()) > 0.1


@pytest.mark.parametrize("name, options", [("super_resolution", dict(scale_factor=2)),
                                           ("gaussian_blur", dict(kernel_size=5, intensity=1.0)),
                                           ("inpainting", dict(mask_type="random", drop_fraction=(0.5, 0.5)))])
def test_derived_pieces_agree_with_the_built_in_ones(name, options):
    """A built-in operator given as a plain function: the derived adjoint, projection and dense SVD agree
    with the operator's own (so tables made with either do not change)."""
    built = operators.build(name, SHAPE, key=jax.random.PRNGKey(0), **options)
    mine = operators.from_callables(lambda v: built(v), SHAPE, linear=True)
    x, r = (jax.random.normal(k, SHAPE) for k in jax.random.split(jax.random.PRNGKey(3)))
    y = built(r)
    np.testing.assert_allclose(mine.adjoint(y, x), built.adjoint(y, x), atol=1e-5)
    np.testing.assert_allclose(mine.project(x, y), built.project(x, y), atol=2e-3)
    a, b = mine.svd(SHAPE), built.svd(SHAPE)
    np.testing.assert_allclose(spectral.regularised_pinv(a, y), spectral.regularised_pinv(b, y), atol=2e-3)
    np.testing.assert_allclose(np.sort(np.asarray(a.singulars).ravel()), np.sort(np.asarray(b.singulars).ravel()),
                               atol=1e-4)


def test_bad_operators_and_inputs_are_one_line_each():
    with pytest.raises(ValueError, match=r"the adjoint is not the transpose of forward: <A x, y> = "):
        operators.from_callables(lambda x: 2 * x, SHAPE, linear=True, adjoint=lambda y: y)
    with pytest.raises(ValueError, match="is declared linear but its forward is not"):
        operators.from_callables(lambda x: x ** 2, SHAPE, linear=True)
    with pytest.raises(ValueError, match="forward returns complex64 values; y must be real floats"):
        operators.from_callables(lambda x: jnp.fft.fft2(x[..., 0]), SHAPE)
    with pytest.raises(ValueError, match=r"forward changes the image's dtype, float32 -> float16"):
        operators.from_callables(lambda x: x.astype(jnp.float16), SHAPE)
    with pytest.raises(ValueError, match=r"forward does not take an image of shape \(8, 8, 1\)"):
        operators.from_callables(lambda x: x @ jnp.ones((3, 3)), SHAPE)
    op = operators.from_callables(lambda x: x[::2, ::2], SHAPE, linear=True)
    with pytest.raises(ValueError, match=r"image has shape \(1, 8, 8\); .*it looks channels-first"):
        api.measure(op, np.zeros((1, 8, 8)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"image has shape \(2, 1, 8, 8\); .*channels-first"):
        api.measure(op, np.zeros((2, 1, 8, 8)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"the operator is for images \(8, 8, 1\)"):
        api.measure(op, np.zeros((16, 16, 1)), jax.random.PRNGKey(0))
    bad = np.zeros(SHAPE, np.float32)
    bad[2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="image holds 1 NaN/Inf values"):
        api.measure(op, bad, jax.random.PRNGKey(0))
    ys = api.measure(op, np.zeros((3,) + SHAPE), jax.random.PRNGKey(0))          # a batch: its own noise each
    assert ys.shape == (3, 4, 4, 1) and float(jnp.abs(ys[0] - ys[1]).max()) > 0
    with pytest.raises(ValueError, match=r"measurement contains 1 NaN/Inf values"):
        solvers.make_problem(op, np.where(np.arange(16).reshape(4, 4, 1) == 3, np.inf, 0.0), SHAPE)


# Every solver that takes a linear A, on compressed sensing written by the user (a mixture prior: quick to
# compile); the spectral ones (DDRM, PiGDM) through the dense SVD. Each its own case: one failure hides none.
LINEAR_SOLVERS = {"ps": {"scale": 1.0}, "ps+": {"scale": 1.0}, "ps_unit": {}, "scoreald": {}, "mcg": {"scale": 1.0},
                  "projection": {}, "sdedit": {"t_star": 300}, "diffpir": {"steps": 10}, "reddiff": {},
                  "daps": {"preset": "cpu", "steps": 4, "langevin_steps": 5}, "ddrm": {"steps": 5}, "pigdm": {},
                  "mcgdiff": {"steps": 6, "particles": 4}, "tmpd": {"covariance": "full"},
                  "sitcom": {"steps": 4, "iterations": 3},
                  "admm_tv": {"steps": 20}}


@pytest.fixture(scope="module")
def cs_case():
    mix = random_mixture(int(np.prod(SHAPE)))
    forward, data = subsampled_fourier(SHAPE, keep=0.5)
    op = operators.from_callables(forward, SHAPE, linear=True, data=data, name="cs")
    x = np.asarray(gmm.sample(mix, jax.random.PRNGKey(0), 1)[0]).reshape(SHAPE)
    # the mixture's exact denoiser as a VE score network: every solver below also runs on a prior other than
    # the discrete VP epsilon network they were written for (tests/test_priors.py checks the readings)
    prior = networks.as_prior(gmm.denoiser, mix, "ve", "score", SHAPE)
    return prior, op, api.measure(op, x, jax.random.PRNGKey(1), sigma=0.05)


@pytest.mark.parametrize("name", sorted(LINEAR_SOLVERS))
def test_every_linear_solver_runs_on_a_users_operator(name, cs_case):
    prior, op, y = cs_case
    options = dict(LINEAR_SOLVERS[name])
    if solvers.get(name).kind == "diffusion" and name not in ("diffpir", "daps", "ddrm", "mcgdiff"):
        options.setdefault("steps", 10)
    out = api.sample(None if solvers.get(name).kind == "iterative" else prior, op, y, solver=name,
                     options=options, num_samples=2, sigma=0.05, image_shape=SHAPE)
    assert out["samples"].shape == (2,) + SHAPE and np.isfinite(out["samples"]).all()
    if name in ("ddrm", "pigdm", "diffpir", "projection", "admm_tv"):      # they fit y
        assert (measurement_fit(op, out["samples"], y) < 0.5).all()
    if name in ("mcg", "projection"):      # how far each CG projection landed from y_t, every step
        assert out["projection_residual"].shape == (2, 10) and np.isfinite(out["projection_residual"]).all()


def test_pnp_admm_runs_on_a_users_operator_with_its_own_network(cs_case):
    _, op, y = cs_case
    shrink = lambda v: 0.5 * v                             # a denoiser: any (H, W, C) -> (H, W, C) function
    out = api.sample(None, op, y, solver="pnp_admm", options={"steps": 5}, num_samples=1, image_shape=SHAPE,
                     network=jax.tree_util.Partial(shrink))
    assert out["samples"].shape == (1,) + SHAPE and np.isfinite(out["samples"]).all()


def test_a_plain_function_runs_with_the_gradient_solvers_and_the_others_say_what_to_declare(cs_case):
    prior, _, _ = cs_case
    saturate = lambda x: jnp.tanh(2.0 * x)                 # a nonlinear sensor, given as a plain function
    x = np.zeros(SHAPE, np.float32)
    y = api.measure(saturate, x, jax.random.PRNGKey(0), sigma=0.05)
    out = api.sample(prior, saturate, y, options={"steps": 5, "scale": 1.0}, num_samples=2, image_shape=SHAPE)
    assert out["samples"].shape == (2,) + SHAPE
    with pytest.raises(ValueError, match="'ddrm' needs a linear operator with an SVD; 'custom' is nonlinear"):
        api.sample(prior, saturate, y, solver="ddrm", sigma=0.05, image_shape=SHAPE)


def test_the_documented_example_runs(tmp_path):
    """docs/examples/own_operator.py, at 3 steps and 2 samples, on a Gaussian-mixture prior of the shipped
    prior's image shape (quick to compile): its three problems solve and write a figure."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "examples",
                        "own_operator.py")
    spec = importlib.util.spec_from_file_location("own_operator_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    mixture = gmm.as_prior(random_mixture(32 * 32, k=2), (32, 32, 1))
    outs = example.main(steps=3, num_samples=2, out=str(tmp_path / "fig.png"), prior=mixture)
    assert set(outs) == {"compressed_sensing", "box_average", "saturating_sensor"}
    for out in outs.values():
        assert out["samples"].shape == (2, 32, 32, 1) and np.isfinite(out["samples"]).all()
    assert os.path.getsize(tmp_path / "fig.png") > 0


def test_an_svd_given_as_functions_reaches_ddrm():
    """A = s * (Q^T X Q) with a random orthogonal Q: its SVD as functions (V^T x = Q^T X Q, U = I) serves
    DDRM without a dense SVD; an SVD that does not reproduce A is refused."""
    q = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))[0].astype(np.float32)
    s = np.linspace(1.0, 0.0, 64, dtype=np.float32).reshape(SHAPE)          # the last coordinate unseen
    vt = lambda x: jnp.einsum("hi,hwc,wj->ijc", q, x, q)
    v = lambda c: jnp.einsum("hi,ijc,wj->hwc", q, c, q)
    op = operators.from_callables(lambda x: s * vt(x), SHAPE, linear=True,
                                  svd={"vt": vt, "v": v, "ut": lambda y: y, "u": lambda c: c, "singulars": s})
    x = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    sp = op.svd(SHAPE)
    assert isinstance(sp, spectral.Functional)
    np.testing.assert_allclose(spectral.apply(sp, x), op(x), atol=1e-5)
    y = api.measure(op, np.clip(np.asarray(x), -1, 1), jax.random.PRNGKey(1), sigma=0.05)
    mix = random_mixture(64)
    out = api.sample(gmm.as_prior(mix, SHAPE), op, y, solver="ddrm", options={"steps": 5}, sigma=0.05,
                     num_samples=2)
    assert np.isfinite(out["samples"]).all()
    with pytest.raises(ValueError, match="the SVD given does not reproduce forward"):
        operators.from_callables(lambda x: s * vt(x), SHAPE, linear=True,
                                 svd={"vt": v, "v": vt, "ut": lambda y: y, "u": lambda c: -c, "singulars": s})


def test_a_batch_of_measurements_is_solved_at_once_as_one_at_a_time(cs_case):
    """B measurements in one api.sample call (vmapped over problem and sample, chunked across problems)
    give each problem the samples of its own call with the folded key."""
    prior, op, y = cs_case
    ys = jnp.stack([y, 0.5 * y, -y])
    runner = solvers.build(prior, SHAPE, solver="ps", options={"steps": 4, "scale": 1.0}, num_samples=2, chunk_size=4)
    many = runner.call_many([solvers.make_problem(op, v, SHAPE) for v in ys], jax.random.PRNGKey(3))
    assert many["samples"].shape == (3, 2) + SHAPE and many["distance"].shape == (3, 2, 4)
    for i, v in enumerate(ys):
        one = runner(solvers.make_problem(op, v, SHAPE), jax.random.fold_in(jax.random.PRNGKey(3), i))
        np.testing.assert_allclose(many["samples"][i], one["samples"], rtol=1e-5, atol=1e-5)
    out = api.sample(prior, op, ys, options={"steps": 4, "scale": 1.0}, num_samples=2, seed=3)
    np.testing.assert_allclose(out["samples"], many["samples"], rtol=1e-5, atol=1e-5)
