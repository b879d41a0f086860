"""DnCNN and PnP-ADMM: the network and its weight files against SCICO (dncnn_scico_small.*, see
fixtures/README.md), PnP-ADMM against SCICO's ADMM, a closed form, the exact x-update, refused files."""

import os
import re

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import fixture_path, load_npz
from dps_jax import api, operators, solvers
from dps_jax.models import dncnn
from dps_jax.solvers import loop, pnp_admm, proximal


@pytest.fixture(scope="module")
def scico_small():
    return dncnn.load(fixture_path("dncnn_scico_small.mpk")), load_npz("dncnn_scico_small.npz")


def test_dncnn_matches_scico_on_one_and_three_channels(scico_small):
    den, f = scico_small
    assert (den.depth, den.features) == (6, 8)
    to01 = lambda a: (np.asarray(a) + 1) / 2
    out2 = dncnn.denoise(den, jnp.asarray(2 * f["x2"][..., None] - 1))
    np.testing.assert_allclose(to01(out2)[..., 0], f["out2"], atol=1e-5)
    # SCICO's (H, W, C) path swaps the first and last axes, so it denoises each channel transposed;
    # dps_jax does not (a deliberate difference): the same numbers come out with the transpose done by hand.
    x3t = jnp.asarray(2 * f["x3"] - 1).transpose(1, 0, 2)
    out3 = dncnn.denoise(den, x3t).transpose(1, 0, 2)
    np.testing.assert_allclose(to01(out3), f["out3"], atol=1e-5)
    assert np.abs(to01(dncnn.denoise(den, jnp.asarray(2 * f["x3"] - 1))) - f["out3"]).max() > 1e-2


@pytest.mark.parametrize("name", ["inpaint", "denoise"])
def test_pnp_admm_matches_scico_admm(name, scico_small):
    """SCICO's iterates in [0, 1] are ours in [-1, 1] under x -> 2 x - 1 (the x-update's objective only
    scales by 4, the denoiser maps the ranges); SCICO starts from A^T y of its [0, 1] data, so the start
    state is mapped the same way."""
    den, f = scico_small
    shape = (16, 16, 1)
    if name == "inpaint":
        mask = f["inpaint_mask"][..., None]
        op = operators.build("inpainting", shape, mask=mask)
    else:
        mask = np.ones(shape, np.float32)
        op = operators.build("identity", shape)
    y = 2 * f[f"{name}_y"][..., None] - mask                        # A (2 x - 1) + 2 n
    problem = solvers.make_problem(op, y, shape)
    options = solvers.make_options(pnp_admm.SOLVER)
    assert (options.rho, options.steps) == (0.2, 10)
    problem = solvers.prepare(pnp_admm.SOLVER, problem, options, shape)
    x0 = 2 * (mask * f[f"{name}_y"][..., None]) - 1                 # 2 A^T y - 1 of SCICO's y
    state = {"x": jnp.asarray(x0), "z": jnp.asarray(x0), "u": jnp.zeros(shape)}
    iters = jnp.arange(options.steps)
    final, _, scalars = jax.jit(lambda s: loop.scan(pnp_admm.SOLVER, s, iters, jax.random.PRNGKey(0), problem, den,
                                                    options))(state)
    np.testing.assert_allclose((np.asarray(final["x"])[..., 0] + 1) / 2, f[f"{name}_x"], atol=1e-4)


@flax.struct.dataclass
class Shrink:
    """D(v) = a v + (1 - a) m: the prox of c/2 ||x - m||^2 with step 1/rho, a = rho / (rho + c)."""
    a: float
    m: float

    def __call__(self, v):
        return self.a * v + (1 - self.a) * self.m


def test_identity_operator_and_a_known_denoiser_converge_to_its_fixed_point():
    """With A = I and D the prox of g = c/2 ||x - m||^2, PnP-ADMM is ADMM on 1/2 ||y - x||^2 + g(x): it
    converges to (y + c m) / (1 + c), the point where x = z = D(x + u) with u = (y - x) / rho."""
    shape, rho, c, m = (8, 8, 1), 0.2, 3.0, 0.25
    den = Shrink(a=rho / (rho + c), m=m)
    y = jax.random.uniform(jax.random.PRNGKey(0), shape, minval=-1, maxval=1)
    op = operators.build("identity", shape)
    out = api.sample(None, op, y, solver="pnp_admm", options={"rho": rho, "steps": 200}, num_samples=1,
                     image_shape=shape, network=den)
    x = out["samples"][0]
    np.testing.assert_allclose(x, (np.asarray(y) + c * m) / (1 + c), atol=1e-5)
    u = (np.asarray(y) - x) / rho                                     # the dual at the fixed point
    np.testing.assert_allclose(den(jnp.asarray(x + u)), x, atol=1e-5)  # x = z = D(x + u)
    assert out["primal_residual"][0, -1] < 1e-5
    assert np.all(np.diff(out["primal_residual"][0, 20:]) <= 1e-7)    # converging


@pytest.mark.parametrize("name, options", [("super_resolution", dict(scale_factor=4)),
                                           ("gaussian_blur", dict(kernel_size=9, intensity=2.0)),
                                           ("inpainting", dict(mask_type="random", drop_fraction=(0.7, 0.7)))])
def test_exact_x_update_solves_the_normal_equations(name, options):
    """(A^T A + rho I) x = A^T y + rho r by the SVD, checked by the gradient of the x-objective and
    against conjugate gradients run to convergence."""
    shape, rho = (16, 16, 1), 0.2
    op = operators.build(name, shape, jax.random.PRNGKey(0), **options)
    y = op(jax.random.normal(jax.random.PRNGKey(1), shape))
    r = jax.random.normal(jax.random.PRNGKey(2), shape)
    problem = solvers.make_problem(op, y, shape)
    x = proximal.solve_spectral(op.svd(shape), problem.y, r, rho)
    gradient = op.adjoint(op(x) - y, x) + rho * (x - r)
    assert float(jnp.abs(gradient).max()) < 1e-4
    x_cg = proximal.solve_cg(problem, jnp.zeros(shape), r, rho, 300)
    np.testing.assert_allclose(x, x_cg, atol=1e-4)


def test_pnp_admm_on_motion_blur_uses_conjugate_gradients():
    shape = (16, 16, 1)
    streak = 0.05 * np.eye(7)[::-1]
    streak[3, 3] += 0.6                  # a streak on a strong centre: CG converges in a few iterations
    op = operators.build("motion_blur", shape, kernel=streak / streak.sum())
    problem = solvers.make_problem(op, op(jnp.full(shape, 0.3)), shape)
    assert solvers.prepare(pnp_admm.SOLVER, problem, solvers.make_options(pnp_admm.SOLVER), shape).aux is None
    out = api.sample(None, op, problem.y, solver="pnp_admm", options={"steps": 30}, num_samples=1,
                     image_shape=shape, network=Shrink(a=1.0, m=0.0))
    # D = identity: proximal-point iterations on the least-squares problem; the residual keeps falling
    assert np.isfinite(out["residual"]).all() and out["residual"][0, -1] < 0.1 * out["residual"][0, 0]


def test_shipped_denoiser_loads_and_denoises():
    den = dncnn.load()
    x = jnp.full((32, 32, 1), -1.0).at[8:24, 10:22].set(0.6)
    noisy = x + 0.2 * jax.random.normal(jax.random.PRNGKey(0), x.shape)     # std 0.1 on [0, 1]
    err_noisy = float(jnp.sqrt(jnp.mean((noisy - x) ** 2)))
    err_out = float(jnp.sqrt(jnp.mean((dncnn.denoise(den, noisy) - x) ** 2)))
    assert err_out < 0.6 * err_noisy, (err_out, err_noisy)


def _write(tmp_path, name, data):
    path = os.path.join(tmp_path, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_bad_denoiser_files_are_refused_clearly(tmp_path, scico_small, monkeypatch):
    good = open(fixture_path("dncnn_scico_small.mpk"), "rb").read()
    den, _ = scico_small
    variables = jax.tree_util.tree_map(np.asarray, den.variables)

    def edited(fn):
        v = jax.tree_util.tree_map(np.array, variables)
        fn(v)
        return dncnn.to_bytes(v)

    cases = [
        ("truncated.mpk", good[: len(good) // 2], "not a DnCNN weight file (a truncated file"),
        ("garbage.mpk", b"\x93not msgpack at all", "not a DnCNN weight file"),
        ("shape.mpk", edited(lambda v: v["params"]["conv_end"].update(kernel=np.zeros((3, 3, 8, 2), np.float32))),
         "params/conv_end/kernel is float32 (3, 3, 8, 2), expected float (3, 3, 8, 1)"),
        ("nan.mpk", edited(lambda v: v["batch_stats"]["ConvBNBlock_1"]["BatchNorm_0"].update(
            var=np.full(8, np.nan, np.float32))), "batch_stats/ConvBNBlock_1/BatchNorm_0/var: 8 NaN/Inf values"),
        ("missing.mpk", edited(lambda v: v["params"]["ConvBNBlock_2"].pop("BatchNorm_0")),
         "missing ['params/ConvBNBlock_2/BatchNorm_0/bias'"),
    ]
    for name, data, match in cases:
        with pytest.raises(dncnn.DenoiserFormatError, match=re.escape(match)):
            dncnn.load(_write(tmp_path, name, data))
    with pytest.raises(FileNotFoundError, match="denoiser file not found"):
        dncnn.load(os.path.join(tmp_path, "nope.mpk"))
    monkeypatch.setattr(dncnn, "MAX_FILE_BYTES", 1000)
    with pytest.raises(dncnn.DenoiserFormatError, match="more than the 1000 a DnCNN file may have"):
        dncnn.load(_write(tmp_path, "big.mpk", good))


def test_denoiser_files_round_trip(tmp_path, scico_small):
    den, _ = scico_small
    back = dncnn.parse(dncnn.to_bytes(den.variables))
    for a, b in zip(jax.tree_util.tree_leaves(den.variables), jax.tree_util.tree_leaves(back.variables)):
        np.testing.assert_array_equal(a, b)
    half = dncnn.parse(dncnn.to_bytes(den.variables, np.float16))      # float16 storage, float32 in memory
    assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(half.variables))
