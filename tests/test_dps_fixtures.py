"""DPS trajectories of the official sampler (dps_*.npz), reproduced step by step and as whole runs.

Teacher-forced: step i starts from the recorded state xs[i-1] with the recorded noises, and must
land on xs[i] (1e-2 at the first step, 1e-3 after: the fixtures' README measures the float32
sensitivity of these random networks). Free-running runs are only stable for two of the five.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_npz, nhwc
from dps_jax import diffusion, operators, samplers, schedule

NAMES = ["ddpm_ps_inpaint_box", "ddim_ps_gaussian_blur", "ddpm_ps_sr2_poisson", "ddpm_ps_phase_retrieval",
         "ddpm_ps_sr2_gaussian_20steps"]


def setup(name):
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
    cfg = samplers.SamplerConfig(sampler=spec["sampler"], guidance=spec["method"], noise_model=spec["noise"]["name"],
                                 var_type="learned_range", clip_denoised=True)
    return f, spec, op, diffusion.step_coefficients(tables), cfg


@pytest.mark.parametrize("name", NAMES)
def test_teacher_forced_steps(name, ffhq_like):
    model, params, _ = ffhq_like
    f, spec, op, coefs, cfg = setup(name)
    den = samplers.unet_denoise_fn(model)
    y = jnp.asarray(nhwc(f["y"])[0])
    xs, x0s = nhwc(f["xs"]), nhwc(f["pred_xstart"])
    starts = np.concatenate([nhwc(f["x_T"]), xs[:-1]])
    step = lambda x, c, nx, ny: samplers.reverse_step(den, params, op, y, x, c, spec["scale"], cfg, nx, ny,
                                                      jax.random.PRNGKey(0))
    # Every step at once: the inputs of each step are recorded, so the steps are independent.
    x_next, x0_hat, dist = jax.jit(jax.vmap(step))(jnp.asarray(starts), coefs, jnp.asarray(nhwc(f["noise_x"][:, 0])),
                                                   jnp.asarray(nhwc(f["noise_y"][:, 0])))
    err = np.abs(np.asarray(x_next) - xs).reshape(len(xs), -1).max(axis=1)
    assert err[0] <= 1e-2 and err[1:].max() <= 1e-3, err
    assert np.abs(np.asarray(x0_hat) - x0s).max() <= 1e-3
    np.testing.assert_allclose(np.asarray(dist), f["distance"], rtol=1e-4)


@pytest.mark.parametrize("name", ["ddim_ps_gaussian_blur", "ddpm_ps_sr2_gaussian_20steps"])
def test_free_running(name, ffhq_like):
    model, params, _ = ffhq_like
    f, spec, op, coefs, cfg = setup(name)
    out = jax.jit(lambda x_T, noise: samplers.reverse_loop(
        samplers.unet_denoise_fn(model), params, op, jnp.asarray(nhwc(f["y"])[0]), x_T, jax.random.PRNGKey(0),
        coefs, spec["scale"], cfg, noise=noise))(
        jnp.asarray(nhwc(f["x_T"])[0]),
        {"noise_x": jnp.asarray(nhwc(f["noise_x"][:, 0])), "noise_y": jnp.asarray(nhwc(f["noise_y"][:, 0]))})
    assert np.abs(np.asarray(out["sample"]) - nhwc(f["sample"])[0]).max() <= 2e-3
    np.testing.assert_allclose(np.asarray(out["distance"]), f["distance"], rtol=2e-3)
