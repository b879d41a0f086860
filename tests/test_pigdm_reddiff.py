"""PiGDM and RED-diff against their reference code (pigdm_*.npz, reddiff_*.npz: NVlabs/RED-diff's PGDM and
REDDIFF classes with their own default configs, the random-weight adm_ffhq_like network, 10 steps,
tools/make_solver_fixtures.py): PiGDM's start and every step teacher-forced, RED-diff's start and whole
run step by step; then both solvers on dps_jax's operators and the pairs they refuse."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import SpectralOp, block_average, load_npz, measurement_fit, mixture_sr_case, nhwc, row
from dps_jax import api, diffusion, operators, prior, schedule, solvers
from dps_jax.operators import spectral
from dps_jax.solvers import base, pigdm, proximal, reddiff

CASES = ["sr2", "blur", "inpaint"]


def case(prefix, name, ffhq_like):
    """The fixture, a problem carrying its SVD (sigma: the file's, 0 for PiGDM's noiseless y), the prior, rows."""
    f = load_npz(f"{prefix}_{name}.npz")
    sigma = json.loads(str(f["spec"])).get("sigma", 0.0)
    sp = spectral.Spectral(**{k: jnp.asarray(f[k]) for k in spectral.Spectral._fields})
    problem = solvers.Problem(op=SpectralOp(sp), y=jnp.asarray(nhwc(f["y"])[0]), sigma=np.float32(sigma), aux=sp)
    # the solvers' default grid at the fixture's step count: the reference's get_timesteps
    tables = schedule.build_tables("linear", 1000, base.reference_stride(
        solvers.make_options(solvers.get(prefix), steps=len(f["timesteps"]))))
    np.testing.assert_array_equal(tables.timestep_map, f["timesteps"])
    model, params, _ = ffhq_like
    return f, problem, prior.from_unet(model, params, "learned_range"), diffusion.step_coefficients(tables)


def rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def reference_pinv_extra(sp, y):
    """What the reference's `H_pinv` adds to the pseudo-inverse: on the observed coordinates whose singular
    value the cutoff zeroed it skips the division but keeps (U^T y)_i, so A^+ y gains V (those (U^T y)_i).
    dps_jax computes the pseudo-inverse (0 there). Zero for operators without zeroed singulars."""
    s = jnp.broadcast_to(sp.singulars, (16, 16, 3))
    zeroed = (sp.observed > 0) & (s == 0)
    return spectral.from_spectral(sp, jnp.where(zeroed, spectral.measurement_to_spectral(sp, y), 0.0))


# the blur has every branch (zeroed singular values); sr2 and inpaint differ only in their SVD arrays and are
# kept as fixtures (RED-diff's test runs sr2; the regeneration check covers all three)
@pytest.mark.parametrize("name", ["blur"])
def test_pigdm_against_reference(name, ffhq_like):
    f, problem, pr, coefs = case("pigdm", name, ffhq_like)
    spec = json.loads(str(f["spec"]))
    assert (spec["eta"], spec["grad_term_weight"], spec["awd"]) == (0.0, 1, True)
    options = solvers.make_options(pigdm.SOLVER)
    traj, x0s = nhwc(f["xs"])[::-1], nhwc(f["x0s"])[::-1]      # the reference lists them last step first
    randn = nhwc(f["randn"][:, 0])
    num = len(x0s)
    # y is noiseless here (the reference's PiGDM is), so the reference's H_pinv quirk (see
    # reference_pinv_extra) adds nothing: U^T y is 0 where the cutoff zeroed a singular value
    assert np.abs(reference_pinv_extra(problem.aux, problem.y)).max() < 1e-6
    # every step teacher-forced from the reference's state, and (row 0) the first step from the start noise,
    # which makes x_T from A^+ y first: one compiled call
    states = {"x": jnp.asarray(np.concatenate([randn[:1], traj[1:-1]])),
              "started": jnp.arange(num) > 0}
    new, record = jax.jit(jax.vmap(lambda s, c, z: pigdm.update(s, c, {"x": z}, problem, pr, options)))(
        states, coefs, jnp.asarray(randn[1:]))
    for i in range(num):
        assert rel(new["x"][i], traj[i + 1]) <= 1e-5, (i, rel(new["x"][i], traj[i + 1]))
        assert rel(record["x0_hat"][i], x0s[i]) <= 1e-5, i


def test_pigdm_on_inpainting_takes_the_references_in2_branch(ffhq_like):
    """RED-diff's PiGDM on the inpainting its README runs (`in2_*`, its own dense-mask Inpainting2) puts y on
    the observed pixels of x0_pred and zeroes the guidance there: ours on the inpainting operator, teacher-forced
    step by step against it (without the branch a step differs by up to 0.59, relative)."""
    f = load_npz("pigdm_in2.npz")
    op = operators.build("inpainting", (16, 16, 3), mask=jnp.asarray(f["mask"]))
    problem = solvers.Problem(op=op, y=jnp.asarray(nhwc(f["y"])[0]), sigma=np.float32(0.0), aux=op.svd((16, 16, 3)))
    np.testing.assert_allclose(problem.y, op(jnp.asarray(nhwc(f["ref"])[0])), atol=1e-6)
    tables = schedule.build_tables("linear", 1000, base.reference_stride(
        solvers.make_options(pigdm.SOLVER, steps=len(f["timesteps"]))))
    np.testing.assert_array_equal(tables.timestep_map, f["timesteps"])
    coefs = diffusion.step_coefficients(tables)
    model, params, _ = ffhq_like
    pr = prior.from_unet(model, params, "learned_range")
    traj, x0s = nhwc(f["xs"])[::-1], nhwc(f["x0s"])[::-1]
    randn = nhwc(f["randn"][:, 0])
    num = len(x0s)
    states = {"x": jnp.asarray(np.concatenate([randn[:1], traj[1:-1]])), "started": jnp.arange(num) > 0}
    options = solvers.make_options(pigdm.SOLVER)
    new, _ = jax.jit(jax.vmap(lambda s, c, z: pigdm.update(s, c, {"x": z}, problem, pr, options)))(
        states, coefs, jnp.asarray(randn[1:]))
    for i in range(num):
        assert rel(new["x"][i], traj[i + 1]) <= 1e-5, (i, rel(new["x"][i], traj[i + 1]))
    # the reference's x0s are after the branch: y on the observed pixels (the plain step, with the same SVD
    # and no branch, is 0.59 away, relative: tests/fixtures/README.md)
    m = np.broadcast_to(np.asarray(f["mask"]), x0s.shape[1:])
    np.testing.assert_allclose(x0s[:, m > 0], np.broadcast_to(problem.y, x0s.shape)[:, m > 0], atol=1e-6)


@pytest.mark.parametrize("name", ["sr2", "blur"])    # blur: the reference's H_pinv quirk (see above)
def test_reddiff_against_reference(name, ffhq_like):
    f, problem, pr, coefs = case("reddiff", name, ffhq_like)
    spec = json.loads(str(f["spec"]))
    options = solvers.make_options(reddiff.SOLVER, lr=spec["lr"], lam=spec["grad_term_weight"],
                                   obs_weight=spec["obs_weight"])
    assert (spec["lr"], spec["grad_term_weight"], spec["sigma_x0"]) == (0.1, 0.25, 0.0)
    state = reddiff.init(None, problem, pr, options, (16, 16, 3))
    extra = reference_pinv_extra(problem.aux, problem.y)
    np.testing.assert_allclose(state["mu"] + extra, nhwc(f["start"])[0], atol=2e-6)
    # from the reference's start (they differ only for the blur, by `extra`) the rest is the same method
    state = reddiff.init(None, problem, pr, options, (16, 16, 3)) if name != "blur" else \
        {"mu": jnp.asarray(nhwc(f["start"])[0]), "x0": jnp.asarray(nhwc(f["start"])[0]),
         "adam": reddiff.optimizer(options).init(jnp.asarray(nhwc(f["start"])[0]))}
    randn = nhwc(f["randn"][:, 0])                                 # per step: noise_x0 (unused), noise_xt
    mus = nhwc(f["mus"])
    step = jax.jit(lambda s, c, z: reddiff.update(s, c, {"x": z}, problem, pr, options))
    for i in range(len(mus)):
        state, _ = step(state, row(coefs, i), jnp.asarray(randn[2 * i + 1]))
        assert rel(state["mu"], mus[i]) <= 2e-5, (i, rel(state["mu"], mus[i]))
    assert rel(reddiff.result(state), nhwc(f["x0_pred"])[0]) <= 2e-5


def own_case(prefix, ffhq_like, operator="sr2"):
    """The reference's own SuperResolution (Inpainting) class at 24 x 24 and 15 steps (its 16), on dps_jax's block
    average (inpainting operator)."""
    f = load_npz(f"{prefix}_{operator}_own.npz")
    spec = json.loads(str(f["spec"]))
    n = spec["size"]
    if operator == "sr2":
        op, to_y = block_average(n, spec["ratio"])
    else:           # the reference's y: the kept values of the image in (C, H, W) order
        keep = np.broadcast_to(f["mask"] > 0, (3, n, n)).reshape(-1)
        op = operators.build("inpainting", (n, n, 3), mask=jnp.asarray(f["mask"])[..., None])

        def to_y(v):
            full = np.zeros(3 * n * n, np.float32)
            full[keep] = np.asarray(v).reshape(-1)
            return full.reshape(3, n, n).transpose(1, 2, 0)
    problem = solvers.Problem(op=op, y=jnp.asarray(to_y(f["y"])), sigma=np.float32(spec["sigma"]),
                              aux=op.svd((n, n, 3)))
    want = op(jnp.asarray(nhwc(f["ref"])[0])) + spec["sigma"] * to_y(f["y_noise"])
    np.testing.assert_allclose(problem.y, want, atol=1e-5)      # the same A, and the same layout of y
    tables = schedule.build_tables("linear", 1000, base.reference_stride(
        solvers.make_options(solvers.get(prefix), steps=spec["num_steps"])))
    np.testing.assert_array_equal(tables.timestep_map, f["timesteps"])
    model, params, _ = ffhq_like
    return f, spec, problem, prior.from_unet(model, params, "learned_range"), diffusion.step_coefficients(tables)


def test_pigdm_on_the_references_own_super_resolution(ffhq_like):
    """24 x 24, 15 steps (16 at stride 66): every step teacher-forced within 1e-5 relative."""
    f, spec, problem, pr, coefs = own_case("pigdm", ffhq_like)
    traj, randn = nhwc(f["xs"])[::-1], nhwc(f["randn"][:, 0])
    num = len(f["timesteps"])
    states = {"x": jnp.asarray(np.concatenate([randn[:1], traj[1:-1]])), "started": jnp.arange(num) > 0}
    options = solvers.make_options(pigdm.SOLVER)
    new, _ = jax.jit(jax.vmap(lambda s, c, z: pigdm.update(s, c, {"x": z}, problem, pr, options)))(
        states, coefs, jnp.asarray(randn[1:]))
    errs = [rel(new["x"][i], traj[i + 1]) for i in range(num)]
    assert max(errs) <= 1e-5, errs


@pytest.mark.parametrize("operator", ["sr2", "inpaint"])
def test_reddiff_on_the_references_own_operators(ffhq_like, operator):
    """24 x 24, 15 steps (16); its SuperResolution with y at noise 0.1, its Inpainting at 0.05: the start and mu
    after every Adam step within 2e-5 relative. The reference's `inp_*` class averages the data term over the kept
    pixels, its `in2_*` class (the one its README runs) and dps_jax over the whole image: with the observation
    weight scaled by that ratio the runs agree (tests/fixtures/README.md)."""
    f, spec, problem, pr, coefs = own_case("reddiff", ffhq_like, operator)
    ratio = 1.0 if operator == "sr2" else 1.0 / float(f["mask"].mean())
    options = solvers.make_options(reddiff.SOLVER, lr=spec["lr"], lam=spec["grad_term_weight"],
                                   obs_weight=spec["obs_weight"] * ratio)
    state = reddiff.init(None, problem, pr, options, (spec["size"],) * 2 + (3,))
    np.testing.assert_allclose(state["mu"], nhwc(f["start"])[0], atol=2e-6)
    randn, mus = nhwc(f["randn"][:, 0]), nhwc(f["mus"])
    step = jax.jit(lambda s, c, z: reddiff.update(s, c, {"x": z}, problem, pr, options))
    for i in range(len(mus)):
        state, _ = step(state, row(coefs, i), jnp.asarray(randn[2 * i + 1]))
        assert rel(state["mu"], mus[i]) <= 2e-5, (i, rel(state["mu"], mus[i]))
    assert rel(reddiff.result(state), nhwc(f["x0_pred"])[0]) <= 2e-5


@pytest.mark.parametrize("name", ["pigdm", "reddiff"])
def test_through_the_api(name):
    """On the Gaussian-mixture prior (fast to compile), SR x2 of an 8 x 8 image: N vmapped samples that fit y
    to about the noise level and differ from each other; the pairs they cannot take are refused in one line."""
    pr, op, x, y, sigma = mixture_sr_case()
    shape = x.shape
    out = api.sample(pr, op, y, solver=name, options={"steps": 50}, num_samples=3, sigma=sigma, image_shape=shape)
    assert out["samples"].shape == (3,) + shape and np.isfinite(out["samples"]).all()
    fit = measurement_fit(op, out["samples"], y)
    assert (fit < 2 * sigma).all(), fit
    assert not np.allclose(out["samples"][0], out["samples"][1])
    pr_op = operators.build("phase_retrieval", shape)
    if name == "pigdm":
        with pytest.raises(ValueError, match=re.escape("'pigdm' needs the Gaussian noise std of y")):
            api.sample(pr, op, y, solver="pigdm", options={"steps": 2}, image_shape=shape)
        with pytest.raises(ValueError, match="'pigdm' needs a linear operator with an SVD; 'phase_retrieval' is nonlinear"):
            api.sample(pr, pr_op, pr_op(x), solver="pigdm", options={"steps": 2}, sigma=sigma, image_shape=shape)
    else:
        with pytest.raises(ValueError, match="'reddiff' needs a linear operator; 'phase_retrieval' is nonlinear"):
            api.sample(pr, pr_op, pr_op(x), solver="reddiff", options={"steps": 2}, image_shape=shape)
        with pytest.raises(ValueError, match="'reddiff' models Gaussian measurement noise; got 'poisson'"):
            api.sample(pr, op, y, solver="reddiff", options={"steps": 2}, noise="poisson", image_shape=shape)


def test_reddiff_start_without_svd_is_the_least_norm_solution():
    """Motion blur has no SVD: the start is A^+ y by the operator's projection, and A(start) = y."""
    streak = 0.08 * np.eye(5)[::-1]          # an anti-diagonal streak on a strong centre: well conditioned
    streak[2, 2] += 0.6
    op = operators.build("motion_blur", (16, 16, 1), kernel=streak / streak.sum())
    x = jax.random.uniform(jax.random.PRNGKey(2), (16, 16, 1), minval=-1, maxval=1)
    problem = solvers.make_problem(op, op(x), (16, 16, 1))
    problem = solvers.prepare(reddiff.SOLVER, problem, solvers.make_options(reddiff.SOLVER), (16, 16, 1))
    assert problem.aux is None
    mu = proximal.pseudo_inverse(problem, (16, 16, 1))
    np.testing.assert_allclose(op(mu), op(x), atol=2e-3)


def test_pigdm_takes_the_inpainting_branch_only_on_noiseless_y():
    """The reference's in2 branch (y written onto x0's observed pixels) is for the noiseless y its README runs: by
    default a noisy y takes the plain step, which observed_branch='never' also takes; 'always' is the reference's
    code as written, the branch on any y."""
    from helpers import gaussian_prior

    shape = (8, 8, 1)
    mask = (jax.random.uniform(jax.random.PRNGKey(0), shape) > 0.5).astype(jnp.float32)
    op = operators.build("inpainting", shape, mask=mask)
    y = op(0.3 * jax.random.normal(jax.random.PRNGKey(1), shape))
    coefs = diffusion.step_coefficients(schedule.build_tables("linear", 1000, "10"))
    c, pr = row(coefs, 3), gaussian_prior()
    state = {"x": jax.random.normal(jax.random.PRNGKey(2), shape), "started": jnp.asarray(True)}
    z = {"x": jax.random.normal(jax.random.PRNGKey(3), shape)}

    def step(sigma, branch):
        problem = solvers.Problem(op=op, y=y, sigma=np.float32(sigma), aux=op.svd(shape))
        options = solvers.make_options(pigdm.SOLVER, observed_branch=branch)
        return pigdm.update(state, c, z, problem, pr, options)[0]["x"]

    noisy = {b: step(0.05, b) for b in pigdm.OBSERVED_BRANCH}
    np.testing.assert_array_equal(noisy["noiseless"], noisy["never"])
    assert float(jnp.abs(noisy["always"] - noisy["never"]).max()) > 0.05
    clean = {b: step(0.0, b) for b in pigdm.OBSERVED_BRANCH}
    np.testing.assert_array_equal(clean["noiseless"], clean["always"])
    assert float(jnp.abs(clean["always"] - clean["never"]).max()) > 0.05
    with pytest.raises(ValueError, match="pigdm observed_branch 'sometimes'"):
        solvers.make_options(pigdm.SOLVER, observed_branch="sometimes").check()
