"""The classical baselines of the paper's tables: ER / HIO / OSS (phase retrieval) and ADMM-TV.

No reference code is public for the paper's runs of these, so the tests check what the methods are:
fixed points, Fienup's monotone error of ER, closed forms of the pieces, and the optimality conditions
of the TV problem ADMM solves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import operators, solvers
from dps_jax.solvers import admm_tv, fienup

SHAPE = (8, 8, 1)


def smooth_image(seed=0, shape=SHAPE):
    """A smooth image in [-0.9, 0.9]: low frequencies of a random field."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    x = sum(rng.normal() * np.cos(np.pi * (a * yy + b * xx)) for a in range(3) for b in range(3))
    x = np.repeat(x[..., None], c, axis=-1)
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def phase_problem(x):
    op = operators.build("phase_retrieval", x.shape, oversample=2.0)
    return solvers.make_problem(op, op(jnp.asarray(x)), x.shape)


def run(solver, problem, shape, num_samples=4, **options):
    runner = solvers.build(None, shape, solver=solver, options=options, num_samples=num_samples)
    return runner(problem, jax.random.PRNGKey(0))


# ---- ER / HIO / OSS -------------------------------------------------------------------------------

def padded(x, problem):
    ph, pw = problem.op.data["pad_h"], problem.op.data["pad_w"]
    return jnp.pad(jnp.asarray(x), ((ph, ph), (pw, pw), (0, 0)))


@pytest.mark.parametrize("name", ["er", "hio"])
def test_the_true_image_is_a_fixed_point(name):
    x = smooth_image()
    problem = phase_problem(x)
    spec = solvers.get(name)
    options = solvers.make_options(spec, steps=5)
    state = {"g": padded(x, problem), "x": jnp.asarray(x)}
    new, record = spec.update(state, jnp.int32(0), {}, problem, None, options)
    np.testing.assert_allclose(new["g"], state["g"], atol=2e-6)
    assert float(record["residual"]) < 1e-6


def test_er_fourier_error_never_increases():
    """Fienup (1982): with g in the object set C after each step, || |F g_k| - y || is non-increasing."""
    x = smooth_image(1)
    out = run("er", phase_problem(x), SHAPE, steps=200)
    r = out["residual"]                                              # (4 restarts, 200 iterations)
    assert r.shape == (4, 200)
    assert np.all(np.diff(r, axis=1) <= 1e-6 * r[:, :-1] + 1e-7), np.diff(r, axis=1).max()
    assert np.all(r[:, -1] < 0.5 * r[:, 0])


def test_hio_recovers_a_small_image():
    """From random starts, the restart with the smallest Fourier residual is the image up to the
    ambiguities the data cannot resolve: the twin (the 180-degree rotation) and, since the object
    constraint [-1, 1] is symmetric, the sign."""
    x = smooth_image(2)
    out = run("hio", phase_problem(x), SHAPE, steps=600)
    best = int(np.argmin(out["residual"][:, -1]))
    sample = out["samples"][best]
    error = min(np.linalg.norm(sample - s * v) / np.linalg.norm(x) for v in (x, x[::-1, ::-1]) for s in (1, -1))
    assert out["residual"][best, -1] < 1e-2 and error < 0.02, (out["residual"][:, -1], error)


def test_oss_returns_its_best_iterate():
    """OSS's record is the smallest residual so far, and its result is the image that has it. (On this
    noiseless toy it fits the data to 0.3% but lands 14% from the image, where HIO recovers it.)"""
    x = smooth_image(2)
    problem = phase_problem(x)
    out = run("oss", problem, SHAPE, steps=600)
    r = out["residual"]
    assert np.all(np.diff(r, axis=1) <= 0) and np.all(r[:, -1] < 1e-2), r[:, -1]
    for sample, best in zip(out["samples"], r[:, -1]):
        assert float(fienup.amplitude_residual(jnp.asarray(sample), problem)) == pytest.approx(float(best), rel=1e-4)


def test_oss_filter_widths_step_from_n_to_one_over_n():
    options = solvers.make_options(fienup.OSS, steps=100, stages=10)
    widths = [float(fienup.oss_filter_width(jnp.int32(k), options, 12)) for k in range(0, 100, 10)]
    np.testing.assert_allclose(widths, np.linspace(12, 1 / 12, 10), rtol=1e-5)
    assert float(fienup.oss_filter_width(jnp.int32(99), options, 12)) == pytest.approx(1 / 12, rel=1e-5)


def test_low_pass_is_identity_when_wide_and_the_mean_when_narrow():
    g = jnp.asarray(np.random.default_rng(3).normal(size=(12, 12, 2)), jnp.float32)
    np.testing.assert_allclose(fienup.low_pass(g, 1e6), g, atol=1e-5)
    np.testing.assert_allclose(fienup.low_pass(g, 1e-3), jnp.broadcast_to(g.mean((0, 1)), g.shape), atol=1e-5)


def test_phase_retrieval_solvers_refuse_other_operators():
    op = operators.build("super_resolution", (8, 8, 1), scale_factor=2)
    problem = solvers.make_problem(op, op(jnp.zeros((8, 8, 1))), (8, 8, 1))
    with pytest.raises(ValueError, match="'hio' solves Fourier phase retrieval only; the operator is 'super_resolution'"):
        run("hio", problem, (8, 8, 1), steps=2)
    op = operators.build("phase_retrieval", (8, 8, 1), unit_range=True)
    problem = solvers.make_problem(op, op(jnp.zeros((8, 8, 1))), (8, 8, 1))
    with pytest.raises(ValueError, match="'er' iterates on the \\[-1, 1\\] image; phase retrieval with unit_range"):
        run("er", problem, (8, 8, 1), steps=2)


# ---- ADMM-TV --------------------------------------------------------------------------------------

def test_difference_operator_and_its_adjoint():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 7, 2)), jnp.float32)
    p = jnp.asarray(rng.normal(size=(2, 5, 7, 2)), jnp.float32)
    assert float(jnp.vdot(admm_tv.grad(x), p)) == pytest.approx(float(jnp.vdot(x, admm_tv.grad_adjoint(p))), rel=1e-5)
    ramp = jnp.broadcast_to(jnp.arange(5.0)[:, None, None], (5, 7, 1))
    assert float(admm_tv.tv(ramp)) == pytest.approx(4 * 7)                 # 4 unit steps in each of 7 columns


def test_shrink_is_group_soft_thresholding():
    v = jnp.asarray([[3.0, 0.1], [4.0, 0.0]]).reshape(2, 1, 2, 1)             # pair norms 5 and 0.1
    z = admm_tv.shrink(v, 1.0)
    np.testing.assert_allclose(z[:, 0, 0, 0], [3.0 * 0.8, 4.0 * 0.8], rtol=1e-6)
    np.testing.assert_allclose(z[:, 0, 1, 0], [0.0, 0.0])


def test_admm_tv_reaches_the_optimum_of_the_tv_problem():
    """Inpainting with 40% of the pixels: after enough iterations x satisfies the problem's optimality
    conditions, 0 in A^T (A x - y) + lam D^T dTV(D x), with the dual rho u as the TV subgradient; and no
    small step in any random direction lowers the (convex) objective."""
    x_true = smooth_image(4, (10, 10, 1))
    op = operators.build("inpainting", x_true.shape, jax.random.PRNGKey(1), mask_type="random", drop_fraction=(0.6, 0.6))
    y = op(jnp.asarray(x_true)) + 0.05 * jax.random.normal(jax.random.PRNGKey(2), x_true.shape)
    problem = solvers.make_problem(op, y, x_true.shape)
    lam, rho = 0.05, 0.5
    options = solvers.make_options(admm_tv.SOLVER, lam=lam, rho=rho, steps=1500, cg_iterations=30)
    state = admm_tv.init(None, problem, None, options, x_true.shape)
    state, _ = jax.lax.scan(lambda s, k: admm_tv.update(s, k, {}, problem, None, options),
                            state, jnp.arange(options.steps))
    x, z, u = state["x"], state["z"], state["u"]
    at = lambda v: op.adjoint(v, x)
    stationarity = at(op(x) - y) + rho * admm_tv.grad_adjoint(u)
    assert float(jnp.linalg.norm(stationarity)) < 1e-3 * float(jnp.linalg.norm(at(y)))
    assert float(jnp.linalg.norm(admm_tv.grad(x) - z)) < 1e-3 * float(jnp.linalg.norm(z))
    dual_norm = jnp.sqrt(jnp.sum((rho * u) ** 2, axis=0))
    assert float(dual_norm.max()) <= lam * (1 + 1e-4)                      # rho u in lam * (unit ball)
    f = lambda v: float(admm_tv.objective(v, problem, lam))
    directions = jax.random.normal(jax.random.PRNGKey(3), (20,) + x.shape)
    assert min(f(x + 1e-2 * d) for d in directions) >= f(x) - 1e-5
    assert f(x) < f(at(y))


def test_admm_tv_leaves_a_constant_image_alone():
    y = jnp.full((6, 6, 3), 0.3)
    op = operators.build("identity", y.shape)
    out = run("admm_tv", solvers.make_problem(op, y, y.shape), y.shape, num_samples=1, steps=20)
    np.testing.assert_allclose(out["samples"][0], y, atol=1e-6)
    np.testing.assert_allclose(out["objective"][0], 0.0, atol=1e-8)


def test_admm_tv_refuses_a_nonlinear_operator():
    x = smooth_image()
    with pytest.raises(ValueError, match="'admm_tv' needs a linear operator; 'phase_retrieval' is nonlinear"):
        run("admm_tv", phase_problem(x), SHAPE, steps=2)
