"""DPS trajectories of the official sampler (dps_*.npz), reproduced step by step and as whole runs.

Teacher-forced: step i starts from the recorded state xs[i-1] with the recorded noises, and must
land on xs[i] (1e-2 at the first step, 1e-3 after: the fixtures' README measures the float32
sensitivity of these random networks). Free-running runs are only stable for three of the seven; two are run.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_npz, nhwc
from dps_jax import diffusion, operators, prior, schedule, solvers
from dps_jax.solvers import loop

NAMES = ["ddpm_ps_inpaint_box", "ddim_ps_gaussian_blur", "ddpm_ps_sr2_poisson", "ddpm_ps_phase_retrieval",
         "ddpm_ps_sr2_gaussian_20steps", "ddpm_ps_sr2_24px_15steps", "ddim_ps_gaussian_blur_24px_15steps"]


def trajectory(name, ffhq_like):
    """The fixture, its problem, prior, solver, options, coefficient rows and recorded noises."""
    f = load_npz(f"dps_{name}.npz")
    spec = json.loads(str(f["spec"]))
    o = spec["operator"]
    shape = nhwc(f["x_T"])[0].shape
    if o["name"] == "inpainting":
        op = operators.build("inpainting", shape, mask=nhwc(f["mask"])[0])
    elif o["name"] == "gaussian_blur":
        op = operators.build("gaussian_blur", shape, kernel_size=o["kernel_size"], intensity=o["intensity"])
    elif o["name"] == "super_resolution":
        op = operators.build("super_resolution", shape, scale_factor=o["scale_factor"])
    else:
        op = operators.build("phase_retrieval", shape, oversample=o["oversample"], pad=spec["pad"])
    tables = schedule.build_tables("linear", 1000, spec["timestep_respacing"])
    np.testing.assert_array_equal(tables.timestep_map, f["timesteps"])
    model, params, _ = ffhq_like
    solver = solvers.get(spec["method"])
    options = solvers.make_options(solver, sampler=spec["sampler"], scale=spec["scale"])
    problem = solvers.make_problem(op, nhwc(f["y"])[0], shape, spec["noise"]["name"])
    noise = {"x": jnp.asarray(nhwc(f["noise_x"][:, 0])), "y": jnp.asarray(nhwc(f["noise_y"][:, 0]))}
    return (f, problem, prior.from_unet(model, params, "learned_range"), solver, options,
            diffusion.step_coefficients(tables), noise)


# The two fixtures run whole by test_free_running (every step's distance within 2e-3 there) are not
# teacher-forced again: each case is a compile of the fixture UNet's gradient, the suite's main cost.
FREE_RUNNING = ["ddpm_ps_sr2_gaussian_20steps", "ddim_ps_gaussian_blur_24px_15steps"]


@pytest.mark.parametrize("name", [n for n in NAMES if n not in FREE_RUNNING])
def test_teacher_forced_steps(name, ffhq_like):
    f, problem, pr, solver, options, coefs, noise = trajectory(name, ffhq_like)
    xs, x0s = nhwc(f["xs"]), nhwc(f["pred_xstart"])
    starts = np.concatenate([nhwc(f["x_T"]), xs[:-1]])
    step = lambda x, c, nz: solver.update(x, c, nz, problem, pr, options)
    # Every step at once: the inputs of each step are recorded, so the steps are independent.
    x_next, record = jax.jit(jax.vmap(step))(jnp.asarray(starts), coefs, noise)
    err = np.abs(np.asarray(x_next) - xs).reshape(len(xs), -1).max(axis=1)
    assert err[0] <= 1e-2 and err[1:].max() <= 1e-3, err
    assert np.abs(np.asarray(record["x0_hat"]) - x0s).max() <= 1e-3
    np.testing.assert_allclose(np.asarray(record["distance"]), f["distance"], rtol=1e-4)


# DDPM and DDIM whole runs (the 16 px DDIM blur run is as stable; its teacher-forced test stays)
@pytest.mark.parametrize("name", FREE_RUNNING)
def test_free_running(name, ffhq_like):
    f, problem, pr, solver, options, coefs, noise = trajectory(name, ffhq_like)
    run = jax.jit(lambda x_T, noise: loop.scan(solver, x_T, coefs, None, problem, pr, options, noise=noise))
    sample, _, scalars = run(jnp.asarray(nhwc(f["x_T"])[0]), noise)
    assert np.abs(np.asarray(sample) - nhwc(f["sample"])[0]).max() <= 2e-3
    np.testing.assert_allclose(np.asarray(scalars["distance"]), f["distance"], rtol=2e-3)
