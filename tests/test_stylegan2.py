"""The StyleGAN2 generator (rosinality's stylegan2-pytorch layout, what BKS-styleGAN2 loads) read without torch,
against that code's forward pass on a file it wrote (tests/fixtures/stylegan2_small.*, from
tools/make_stylegan2_fixtures.py)."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert import stylegan2 as convert_sg
from checkpoints_convert import torch_writer as tw
from checkpoints_convert.torch_reader import CheckpointError, load_state_dict
from dps_jax.models import stylegan2 as sg
from helpers import fixture_path, load_npz

FX = load_npz("stylegan2_small.npz")


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sg") / "g.msgpack")
    convert_sg.convert(fixture_path("stylegan2_small.pt"), path)
    return sg.load(path)


def close(got, want, tol=1e-4):
    return float(np.abs(np.asarray(got) - want).max()) <= tol * float(np.abs(want).max())


def test_generator_is_rosinalitys_forward_pass(generator):
    """The mapping network's w (measured 7e-12 of 3e-3), the image of a W+ latent with the stored noise maps
    (6e-7 of 1.5) and with given ones, and G(z), all within 1e-4 of their largest value; the configuration
    (32 x 32, channels 32 at every resolution: the fixture's narrowed table) read from the tensors' shapes."""
    params, config = generator
    assert config.size == 32 and config.style_dim == 16 and config.n_mlp == 2
    assert config.channels == ((4, 32), (8, 32), (16, 32), (32, 32)) and config.n_latent == 8
    assert close(sg.mapping(params, config, jnp.asarray(FX["z"])), FX["w"])
    latent = jnp.asarray(FX["latent"])
    synth = jax.jit(lambda p, w, n: sg.synthesis(p, config, w, n))       # one program, noise maps as inputs
    stored = [params[f"noises.noise_{i}"][0, 0] for i in range(config.num_layers)]
    assert close(synth(params, latent, stored), FX["image_stored"])
    noises = [jnp.asarray(FX["noises"][i][:h, :w]) for i, (h, w) in enumerate(sg.noise_shapes(config))]
    given = synth(params, latent, noises)
    assert close(given, FX["image_given"])
    assert not close(given, FX["image_stored"], 0.01)             # the noise maps matter
    # G(z) with no noise maps given: the stored ones (op by op)
    assert close(sg.generate(params, config, jnp.asarray(FX["z"])), FX["image_z"])


def test_gradients_through_the_generator_are_the_derivative(generator):
    """What BKS-styleGAN2 optimises: the latent and the noise maps, by gradient; jax.grad agrees with a central
    difference along its own direction."""
    params, config = generator
    latent = jnp.asarray(FX["latent"][:1])
    noises = [jnp.asarray(FX["noises"][i][:h, :w]) for i, (h, w) in enumerate(sg.noise_shapes(config))]
    target = jnp.asarray(FX["image_given"][1:])
    loss = jax.jit(lambda w, n: jnp.mean((sg.synthesis(params, config, w, n) - target) ** 2))
    g_w, g_n = jax.jit(jax.grad(loss, argnums=(0, 1)))(latent, noises)
    norm = float(jnp.sqrt(jnp.sum(g_w ** 2) + sum(jnp.sum(g ** 2) for g in g_n)))
    h = 1e-3 / norm
    step = lambda s: loss(latent + s * h * g_w, [n + s * h * g for n, g in zip(noises, g_n)])
    slope = float(step(1.0) - step(-1.0)) / (2 * h)
    assert abs(slope - norm ** 2) < 0.02 * norm ** 2, (slope, norm ** 2)


def test_a_grey_generator_is_one_output_channel_of_the_colour_one(generator):
    """image_channels=1 (a generator for grey images): the to-RGB layers are per output channel and their
    upsampled skips depthwise, so the fixture network with its to-RGB weights cut to channel 1 draws exactly
    channel 1 of its colour image; the converter reads the channel count from the tensors' shapes."""
    import dataclasses

    params, config = generator
    grey = dataclasses.replace(config, image_channels=1)
    rgb = re.compile(r"to_rgb(1|s\.\d+)\.(conv\.weight|bias)")
    cut = {k: v[:, 1:2] if rgb.fullmatch(k) else v for k, v in params.items()}
    assert {k: np.shape(v) for k, v in cut.items()} == {k: tuple(s) for k, s in sg.param_shapes(grey).items()}
    assert convert_sg.config_of(cut).image_channels == 1
    noises = [jnp.asarray(FX["noises"][i][:h, :w]) for i, (h, w) in enumerate(sg.noise_shapes(config))]
    image = jax.jit(lambda p, w, n: sg.synthesis(p, grey, w, n))(cut, jnp.asarray(FX["latent"]), noises)
    assert image.shape == FX["image_given"].shape[:3] + (1,)
    assert close(image[..., 0], FX["image_given"][..., 1], 1e-5)
    with pytest.raises(ValueError, match="image_channels must be an integer >= 1, got 0"):
        dataclasses.replace(config, image_channels=0)


def test_published_parameter_counts():
    """config-f at 256 and 1024 (style_dim 512, eight mapping layers, channel multiplier 2): the key table's
    parameters equal what rosinality's constructor builds (30,034,338 and 30,370,060)."""
    published = json.loads(str(FX["published"]))
    for name, kw in published["kwargs"].items():
        config = sg.StyleGAN2Config(**kw)
        count = sum(int(np.prod(s)) for k, s in sg.param_shapes(config).items()
                    if not k.endswith(".kernel") and not k.startswith("noises."))
        assert count == published["parameters"][name], name
    assert published["parameters"]["ffhq256"] == 30_034_338


def test_files_it_cannot_read_are_refused_in_one_line(tmp_path):
    src = fixture_path("stylegan2_small.pt")
    dst = str(tmp_path / "out.msgpack")
    with pytest.raises(CheckpointError, match="no entry 'g'"):
        convert_sg.convert(src, dst, key="g")
    with pytest.raises(CheckpointError, match="is not the FIR kernel of blur_kernel \\[1, 1, 1, 1\\]"):
        convert_sg.convert(src, dst, blur_kernel=(1, 1, 1, 1))
    state = {k: np.asarray(v, np.float32) for k, v in load_state_dict(src, key="g_ema").items()}
    wrong = dict(state)
    wrong["convs.1.activate.bias"] = np.zeros(31, np.float32)
    del wrong["to_rgbs.0.upsample.kernel"]
    bad = tw.write_arrays(tmp_path / "wrong.pt", wrong, wrap=lambda ops: tw.plain_dict({"g_ema": ops}))
    with pytest.raises(CheckpointError, match="1 missing keys: to_rgbs.0.upsample.kernel; 1 shapes differ: "
                                              r"convs.1.activate.bias is \(31,\), the model expects \(32,\)"):
        convert_sg.convert(bad, dst)
    no_mapping = tw.write_arrays(tmp_path / "nomap.pt", {k: v for k, v in state.items() if not k.startswith("style.")},
                                 wrap=lambda ops: tw.plain_dict({"g_ema": ops}))
    with pytest.raises(CheckpointError, match="mapping layers style.N numbered \\[\\]"):
        convert_sg.convert(no_mapping, dst)
    data = open(src, "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    assert convert_sg.main([str(tmp_path / "cut.pt"), dst]) == 1
    assert convert_sg.main([src, dst, "--blur-kernel", "1,x"]) == 1
    assert not os.path.exists(dst)


def test_a_training_checkpoint_with_its_arguments_converts(tmp_path):
    """rosinality's train.py saves {'g', 'd', 'g_ema', ..., 'args': argparse.Namespace}: the Namespace is read as
    inert data (argparse is never called) and g_ema converts; any other class in its place is still refused."""
    src = fixture_path("stylegan2_small.pt")
    state = {k: np.asarray(v, np.float32) for k, v in load_state_dict(src, key="g_ema").items()}
    args = tw.glob("argparse", "Namespace") + b")\x81" + tw.plain_dict({"size": tw.i(32), "iter": tw.i(800000)}) + b"b"
    path = tw.write_arrays(tmp_path / "train.pt", state,
                           wrap=lambda ops: tw.plain_dict({"g_ema": ops, "args": args, "step": tw.i(3)}))
    extra = convert_sg.convert(path, str(tmp_path / "g.msgpack"))
    assert extra["size"] == 32
    evil = tw.glob("os", "system") + b")\x81"
    path = tw.write_arrays(tmp_path / "evil.pt", state, wrap=lambda ops: tw.plain_dict({"g_ema": ops, "args": evil}))
    with pytest.raises(CheckpointError, match="refusing to load global .os.system."):
        convert_sg.convert(path, str(tmp_path / "g2.msgpack"))


def test_bks_warmup_kernel_converts_and_bad_ones_are_refused(tmp_path):
    """BKS's kernel.pth (one saved tensor (1, kernel_dim, h, w)) becomes the .npy its solver reads as (h, w, k);
    a state_dict, a wrong rank or a non-finite value is refused in one line, nothing written."""
    from dps_jax.solvers import bks_stylegan

    z = np.random.default_rng(0).standard_normal((1, 8, 2, 2)).astype(np.float32)
    src = tw.write(tmp_path / "kernel.pth", tw.tensor("0", z.size, z.shape), {"0": z.astype("<f4").tobytes()})
    dst = str(tmp_path / "kernel.npy")
    assert convert_sg.main(["--warmup-kernel", src, dst]) == 0
    np.testing.assert_array_equal(bks_stylegan.read_warmup_kernel(dst), z[0].transpose(1, 2, 0))
    bad = {"dict.pth": tw.write_arrays(tmp_path / "dict.pth", {"z": z}),
           "rank.pth": tw.write(tmp_path / "rank.pth", tw.tensor("0", 8, (8,)), {"0": z.ravel()[:8].tobytes()}),
           "nan.pth": tw.write(tmp_path / "nan.pth", tw.tensor("0", z.size, z.shape),
                               {"0": np.full(z.shape, np.nan, "<f4").tobytes()})}
    for name, path in bad.items():
        out = str(tmp_path / f"{name}.npy")
        with pytest.raises(CheckpointError, match="one saved tensor" if name == "dict.pth" else "finite floats"):
            convert_sg.convert_warmup_kernel(path, out)
        assert not os.path.exists(out)
    (tmp_path / "pickle.npy").write_bytes(b"\x93NUMPY\x01\x00" + b"v\x00{'descr': '|O', 'fortran_order': False, "
                                          b"'shape': (1,), }".ljust(118) + b"\n" + b"\x80\x02c__builtin__\neval\n.")
    with pytest.raises(ValueError, match="is not a .npy array"):
        bks_stylegan.read_warmup_kernel(str(tmp_path / "pickle.npy"))


def test_the_shipped_generator_draws_fashion_mnist_like_images():
    """The generator that ships (bks_stylegan's default prior) loads and draws 32 x 32 garments: dark borders
    and a mean brightness near Fashion-MNIST's (0.286 in [0, 1], -0.43 in [-1, 1]); random weights give neither."""
    params, config = sg.load(sg.SHIPPED_GENERATOR)
    assert (config.size, config.image_channels) == (32, 1)
    z = jax.random.normal(jax.random.PRNGKey(0), (64, config.style_dim))
    x = np.asarray(sg.generate(params, config, z))
    assert x.shape == (64, 32, 32, 1)
    x = np.clip(x, -1, 1)
    assert -0.7 < x.mean() < -0.3, x.mean()          # measured -0.56 (random weights: -0.06)
    border = np.concatenate([x[:, :2].ravel(), x[:, -2:].ravel(), x[:, :, :2].ravel(), x[:, :, -2:].ravel()])
    assert border.mean() < -0.9, border.mean()       # measured -0.98 (random weights: -0.04)
