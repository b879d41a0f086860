"""The KernelWizard (the neural blur of nonlinear deblurring) against the reference code's outputs
(fixtures/kernel_wizard.npz, tools/make_kernel_wizard_fixtures.py), and its converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert import torch_writer as torch_files
from checkpoints_convert import CheckpointError
from checkpoints_convert.__main__ import main as convert_main
from checkpoints_convert.kernel_wizard import convert_state_dict, torch_shapes
from dps_jax.models import kernel_wizard as kw
from dps_jax.models.checkpoint import CheckpointFormatError
from helpers import load_npz


def fixture_config(ref):
    return kw.KernelWizardConfig(**{k[len("config_"):]: int(ref[k]) for k in ref.files if k.startswith("config_")})


def reference_weights(shapes, seed):
    """The fixture script's rule: standard normals from default_rng(seed) in sorted key order, weights
    scaled by 1 / sqrt(prod(shape[1:])), biases by 0.1."""
    rng = np.random.default_rng(seed)
    out = {}
    for key in sorted(shapes):
        w = rng.standard_normal(shapes[key])
        out[key] = (w / np.sqrt(np.prod(shapes[key][1:])) if key.endswith("weight") else 0.1 * w).astype(np.float32)
    return out


def inputs(ref, config):
    rng = np.random.default_rng(int(ref["seed"]) + 1)
    n = int(ref["image_size"])
    sharp, blurred = (rng.uniform(0, 1, (1, config.in_channels, n, n)).astype(np.float32).transpose(0, 2, 3, 1)
                      for _ in range(2))
    return sharp, blurred


@pytest.fixture(scope="module")
def reference():
    ref = load_npz("kernel_wizard.npz")
    config = fixture_config(ref)
    state = reference_weights(torch_shapes(config), int(ref["seed"]))
    return ref, config, state


def test_matches_reference(reference):
    ref, config, state = reference
    assert len(state) == int(ref["num_keys"])     # the torch model has exactly the keys the converter expects
    params = convert_state_dict(dict(state), config)
    sharp, blurred = inputs(ref, config)
    model = kw.KernelWizard(config)
    out = np.asarray(model.apply({"params": params}, jnp.asarray(sharp), jnp.asarray(ref["z"])[None],
                                 method=kw.KernelWizard.adapt_kernel))[0]
    np.testing.assert_allclose(out[::4, ::4], ref["adapt_sub"], atol=1e-4)
    assert abs(out.astype(np.float64).sum() - float(ref["adapt_sum"])) <= 1e-5 * out.size
    assert abs((out.astype(np.float64) ** 2).sum() - float(ref["adapt_sumsq"])) <= 1e-5 * out.size
    mu, sigma = model.apply({"params": params}, jnp.asarray(sharp), jnp.asarray(blurred),
                            method=kw.KernelWizard.encode)
    scale = np.abs(ref["mu"]).max()
    np.testing.assert_allclose(np.asarray(mu)[0], ref["mu"], atol=1e-4 * scale)
    np.testing.assert_allclose(np.asarray(sigma)[0], ref["sigma"], atol=1e-4 * scale)


def test_blur_maps_the_image_range(reference):
    """kw.blur: [-1, 1] -> [0, 1] -> the model -> [-1, 1], clipped, as the DPS code's operator."""
    ref, config, state = reference
    params = convert_state_dict(dict(state), config)
    sharp, _ = inputs(ref, config)
    z = jnp.asarray(ref["z"])
    y = np.asarray(kw.blur(params, config, jnp.asarray(2 * sharp[0] - 1), z))
    direct = np.asarray(kw.KernelWizard(config).apply({"params": params}, jnp.asarray(sharp), z[None],
                                                      method=kw.KernelWizard.adapt_kernel))[0]
    np.testing.assert_allclose(y, np.clip(2 * direct - 1, -1, 1), atol=1e-5)
    assert y.min() >= -1 and y.max() <= 1 and (np.abs(2 * direct - 1) > 1).any()


def test_converter_file_round_trip(reference, tmp_path):
    """A torch file of the reference weights through the CLI (in process): the same params, loadable."""
    ref, config, state = reference
    src = torch_files.write_arrays(str(tmp_path / "kw.pth"), state)
    dst = tmp_path / "kw.msgpack"
    assert convert_main([src, str(dst), "--kernel-config", config.to_json()]) == 0
    params, loaded = kw.load(str(dst))
    assert loaded == config
    direct = convert_state_dict(dict(state), config)
    assert np.array_equal(params["adapt_up_3"]["kernel"], direct["adapt_up_3"]["kernel"])
    assert np.array_equal(params["ext_blocks_1"]["conv2"]["kernel"], direct["ext_blocks_1"]["conv2"]["kernel"])


def test_converter_lists_every_mismatch(reference):
    ref, config, state = reference
    bad = dict(state)
    del bad["recon_trunk.3.weight"]                              # the first upsampling conv (3 back blocks)
    bad["adapter.model.extra.weight"] = np.zeros(2, np.float32)
    bad["feature_extractor.0.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    with pytest.raises(CheckpointError) as e:
        convert_state_dict(bad, config)
    msg = str(e.value)
    assert "1 missing keys: recon_trunk.3.weight" in msg and "1 unexpected keys: adapter.model.extra.weight" in msg
    assert "feature_extractor.0.weight is (8, 3, 5, 5), the model expects (8, 3, 3, 3)" in msg


def test_published_layout():
    """GOPRO_wVAE.pth's config: z 512 x 2 x 2 on 256 x 256, the published key names and shapes."""
    c = kw.PRESETS["gopro_wvae"]
    assert c.latent_shape((256, 256, 3)) == (2, 2, 512)
    shapes = torch_shapes(c)
    assert shapes["adapter.model.submodule.submodule.submodule.submodule.up.1.weight"] == (1024, 512, 4, 4)
    assert shapes["kernel_extractor.model.19.conv_block.5.weight"] == (1024, 1024, 3, 3)
    assert shapes["recon_trunk.28.weight"] == (3, 64, 3, 3) and shapes["feature_extractor.15.conv2.bias"] == (64,)
    assert "feature_extractor.16.conv1.weight" not in shapes
    assert "adapter.model.down.0.bias" not in shapes and "adapter.model.up.1.bias" in shapes


def test_bad_configs_and_images():
    with pytest.raises(ValueError, match="kernel_dim must be the adapter's innermost width 512"):
        kw.KernelWizardConfig(kernel_dim=256)
    with pytest.raises(ValueError, match="features must be an integer"):
        kw.KernelWizardConfig(features=0)
    c = kw.PRESETS["gopro_wvae"]
    with pytest.raises(ValueError, match="multiples of 128, got 200 x 256"):
        c.latent_shape((200, 256, 3))
    with pytest.raises(ValueError, match="takes 3-channel images, got 1"):
        c.latent_shape((256, 256, 1))


def test_loading_a_unet_file_as_kernel_model_is_refused():
    from dps_jax.models.checkpoint import SHIPPED_PRIOR
    with pytest.raises(CheckpointFormatError, match="not a dps_jax kernel_wizard checkpoint"):
        kw.load(SHIPPED_PRIOR)


# ---- the nonlinear_blur operator (the shipped kernel model) --------------------------------------

def test_operator_draws_z_once_per_measurement():
    from dps_jax import operators
    op = operators.build("nonlinear_blur", (32, 32, 1), key=jax.random.PRNGKey(3))
    z = op.arrays["z"]
    assert z.shape == (2, 2, 128)
    np.testing.assert_allclose(z, 1.2 * np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2, 2, 128))), rtol=1e-6)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 1), minval=-1, maxval=1)
    blur = jax.jit(lambda o, v: jax.vmap(o)(v))        # one program: the operators below are its arguments
    y = blur(op, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(blur(op, x)))          # the same A at every call
    np.testing.assert_allclose(np.asarray(op(x[0])), np.asarray(y[0]), atol=1e-5)
    other = operators.build("nonlinear_blur", (32, 32, 1), key=jax.random.PRNGKey(4))
    assert float(jnp.abs(blur(other, x) - y).max()) > 1e-3                       # another key, another blur
    same = operators.build("nonlinear_blur", (32, 32, 1), z=z)
    np.testing.assert_array_equal(np.asarray(blur(same, x)), np.asarray(y))
    assert not op.linear and y.shape == x.shape and float(jnp.abs(y).max()) <= 1
    g = jax.jit(jax.grad(lambda v: jnp.sum((op(v) - y[1]) ** 2)))(x[0])
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


@pytest.mark.parametrize("options, shape, match", [
    (dict(), (64, 64, 3), "takes 1-channel images, got 3 channels; the shipped kernel model is for the 32 x 32"),
    (dict(), (36, 36, 1), "multiples of 16, got 36 x 36"),
    (dict(z=np.zeros((1, 1, 128))), (32, 32, 1), "z must have shape \\(2, 2, 128\\)"),
    (dict(kernel_scale=-1.0), (32, 32, 1), "kernel_scale must be a number >= 0, got -1.0"),
    (dict(z=np.full((2, 2, 128), np.nan)), (32, 32, 1), "z holds 512 non-finite values"),
    (dict(checkpoint="/nonexistent/kernel.msgpack"), (32, 32, 1), "checkpoint file not found"),
])
def test_operator_bad_input(options, shape, match):
    from dps_jax import operators
    with pytest.raises(ValueError, match=match):
        operators.build("nonlinear_blur", shape, key=jax.random.PRNGKey(0), **options)


def test_mcg_takes_the_data_consistency_step_and_projections_refuse():
    """MCG on nonlinear deblurring uses x + y - A(x) (the official code's step for such operators); the
    projection methods (Score-SDE, SDEdit) and DDRM cannot run on it and say why."""
    from dps_jax import operators, solvers
    op = operators.build("nonlinear_blur", (32, 32, 1), key=jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (32, 32, 1), minval=-1, maxval=1)
    y = op(jax.random.uniform(jax.random.PRNGKey(2), (32, 32, 1), minval=-1, maxval=1))
    np.testing.assert_allclose(op.correct(x, y), x + y - op(x), atol=1e-6)
    problem = solvers.make_problem(op, y, (32, 32, 1))
    prepare = lambda name, problem: solvers.prepare(solvers.get(name), problem, None, (32, 32, 1))
    assert prepare("mcg", problem) is problem
    for name in ("projection", "sdedit"):
        with pytest.raises(ValueError, match=f"solver '{name}' needs a linear operator.*'nonlinear_blur' is nonlinear"):
            prepare(name, problem)
    phase = operators.build("phase_retrieval", (32, 32, 1))
    with pytest.raises(ValueError, match="solver 'mcg' needs a linear operator"):
        prepare("mcg", solvers.make_problem(phase, phase(x), (32, 32, 1)))
