"""SITCOM: the authors' script's own step loop replayed (tests/fixtures/sitcom.npz), and what it refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import operators, prior as prior_lib, solvers
from dps_jax.solvers import base, sitcom
from helpers import load_npz

SHAPE = (4, 4, 3)


@pytest.mark.parametrize("case", ["sr", "inpainting"])
def test_matches_the_reference_script(case):
    """With the script's re-noising draws: every step's x_t, the x0 of its Adam fit (`fit`) and the last
    x_t' (through, on inpainting, the extra gradient step); the grid is its DDIM scheduler's."""
    f = load_npz("sitcom.npz")
    g = lambda k: np.asarray(f[f"{case}_{k}"])
    w, b = jnp.asarray(g("w")), jnp.asarray(g("b"))
    apply = lambda params, x, t: jnp.tanh(params["w"] @ x.reshape(-1) + params["b"] * (t / 1000.0)).reshape(x.shape)
    prior = prior_lib.Prior(params={"w": w, "b": b}, apply=apply, var_type="fixed_small")
    if case == "sr":
        op = operators.from_callables(lambda x: x.reshape(2, 2, 2, 2, 3).mean((1, 3)), SHAPE, linear=True)
    else:
        op = operators.build("inpainting", SHAPE, mask=g("mask"))
    options = solvers.make_options(sitcom.SOLVER, steps=int(g("steps")), iterations=int(g("iterations")))
    problem = base.prepare(sitcom.SOLVER, solvers.make_problem(op, g("y"), SHAPE, sigma=float(g("sigma"))),
                           options, SHAPE)
    xs = sitcom.SOLVER.step_grid(options).xs
    np.testing.assert_array_equal(np.asarray(xs["t"]), g("timesteps"))
    np.testing.assert_allclose(np.asarray(xs["ab"]), g("alphas_cumprod")[g("timesteps")], rtol=2e-6)
    step = jax.jit(lambda st, c, z: sitcom.update(st, c, {"x": z}, problem, prior, options))
    state = {"x": jnp.asarray(g("x_T")), "x0": jnp.zeros(SHAPE)}
    taken = []
    for k in range(int(g("steps"))):
        c = jax.tree_util.tree_map(lambda a: a[k], xs)
        np.testing.assert_allclose(np.asarray(state["x"]), g("x_in")[k], rtol=1e-5, atol=2e-5, err_msg=f"x_t of step {k}")
        x0, _ = sitcom.fit(prior, problem, state["x"], c["t"], c["ab"], options)
        np.testing.assert_allclose(np.asarray(x0), g("x0_fit")[k], atol=2e-5, err_msg=f"the fit's x0 at step {k}")
        state, record = step(state, c, jnp.asarray(g("z")[k]))
        taken.append(int(record["iterations"]))
    np.testing.assert_allclose(np.asarray(state["x"]), g("x_last"), rtol=1e-5, atol=2e-5)
    if case == "inpainting":       # the noise threshold stopped the Adam loop early somewhere
        assert min(taken) < int(g("iterations")), taken
    else:
        assert taken == [int(g("iterations"))] * int(g("steps"))


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="sitcom iterations must be an integer >= 1"):
        solvers.make_options(sitcom.SOLVER, iterations=0)
    op = operators.from_callables(lambda x: x, SHAPE, linear=True)
    prior = prior_lib.Prior(params={}, apply=lambda p, x, t: 0.0 * x, var_type="fixed_small")
    problem = solvers.make_problem(op, np.zeros(SHAPE, np.float32), SHAPE)
    with pytest.raises(ValueError, match="needs the Gaussian noise std of y"):
        base.prepare(sitcom.SOLVER, problem, solvers.make_options(sitcom.SOLVER), SHAPE)
