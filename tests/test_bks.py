"""BKS-styleGAN2's loop against the reference's (tests/fixtures/bks_dsd.npz, from tools/make_bks_fixtures.py): the
same networks, options and random draws, every iteration's loss and the best image and kernel after each epoch."""

import glob
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert import kernel_wizard as ckw
from checkpoints_convert.mapping import random_state_dict
from dps_jax import main, operators, solvers
from dps_jax.models import kernel_dip, kernel_wizard, stylegan2
from dps_jax.solvers import bks_stylegan as bks
from helpers import assert_one_line_refusals, load_npz, tiny_generator_file, tiny_kernel_file

FX = load_npz("bks_dsd.npz")
META = json.loads(str(FX["meta"]))


def nhwc(a):
    return np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 2, 3, 1))


def fixture_networks():
    seeds, gen = META["seeds"], META["generator"]
    table = dict(stylegan2.default_channels(gen["size"]))
    gconfig = stylegan2.StyleGAN2Config(size=gen["size"], style_dim=gen["style_dim"], n_mlp=gen["n_mlp"],
                                        channels=tuple((r, c // gen["channel_divisor"]) for r, c in table.items()))
    gparams = random_state_dict(stylegan2.param_shapes(gconfig), seeds["generator"])
    gparams.update(stylegan2.buffers(gconfig))           # its FIR kernels are its constructor's
    o = META["kernel_wizard"]
    kconfig = kernel_wizard.KernelWizardConfig(
        in_channels=o["input_nc"], features=o["nf"], front_blocks=o["front_RBs"], back_blocks=o["back_RBs"],
        extractor_blocks=o["KernelExtractor"]["n_blocks"], kernel_dim=o["kernel_dim"], use_vae=o["use_vae"])
    kparams = ckw.convert_state_dict(random_state_dict(ckw.torch_shapes(kconfig), seeds["kernel_wizard"]), kconfig)
    d = META["kernel_dip"]
    assert d["kernel_dim"] == kconfig.kernel_dim
    net = bks.Network({k: jnp.asarray(v) for k, v in gparams.items()}, jnp.asarray(FX["fit_mean"]),
                      jnp.asarray(FX["fit_std"]), jnp.asarray(FX["warmup_k"][0]), gconfig, (d["nf"], d["n_blocks"]))
    dconfig = kernel_dip.KernelDIPConfig(nf=d["nf"], n_blocks=d["n_blocks"], kernel_dim=d["kernel_dim"])
    kdip = {k: jnp.asarray(v) for k, v in random_state_dict(kernel_dip.param_shapes(dconfig), seeds["kernel_dip"]).items()}
    op = operators.Operator(name="nonlinear_blur", arrays={"params": kparams, "z": jnp.zeros((2, 2, kconfig.kernel_dim))},
                            static=(("config", kconfig.to_json()),))
    return net, kdip, op


def test_the_loop_is_the_references():
    """The solver's steps (`loop.scan` over its grid, the reference's draws replayed): every loss within 1e-5
    relative; the best kernel after each epoch within 1e-4 of its largest value and the best image within 5e-3
    (measured 2.4e-6 at XLA's default optimisation, 1.1e-3 at the suite's level 0: Adam's normalised steps at
    learning rate 0.2 carry float32's differences in the gradient into the latent)."""
    net, kdip, op = fixture_networks()
    rng = np.random.default_rng(META["seeds"]["draws"])       # the reference's draws, in its call order
    dip_zk = nhwc(rng.uniform(0, 1, (1, 64, 64, 64)) * 0.1)
    w = rng.standard_normal((1, 14, 512)).astype(np.float32)
    np.testing.assert_array_equal(w, FX["latent"])
    sizes = [2 ** ((i + 5) // 2) for i in range(14)]       # its 14 maps (a 256 generator reads the first 13)
    noises = [jnp.asarray(rng.standard_normal((1, 1, r, r)).astype(np.float32)[0, 0]) for r in sizes]
    draws = np.stack([nhwc(rng.standard_normal((1, 64, 64, 64))) for _ in range(int(FX["draw_counts"][1]))])
    o = META["options"]
    options = solvers.make_options(bks.SOLVER, steps=o["num_epochs"], warmup_iters=o["num_warmup_iters"],
                                   x_iters=o["num_x_iters"], k_iters=o["num_k_iters"])
    y01 = nhwc(np.random.default_rng(META["seeds"]["ref_im"]).uniform(0, 1, (1, 3, 256, 256)))[0]
    problem = solvers.make_problem(op, 2 * y01 - 1, (256, 256, 3))
    state = bks.initial_state(jnp.asarray(w), noises[:13], kdip, jnp.asarray(dip_zk), options.trainable_noise,
                              (256, 256, 3), (2, 2, 64))
    xs = bks.SOLVER.step_grid(options).xs
    # Row by row through the solver's own update (what `loop.scan` runs), each row's phase a constant of its
    # program: XLA:CPU at the suite's optimisation level 0 runs these 256 x 256 networks ~50x slower inside a
    # conditional than at the top level.
    step = jax.jit(lambda state, lr, noise, phase, log: bks.SOLVER.update(
        state, {"phase": jnp.int32(phase), "lr": lr, "log": jnp.bool_(log)}, {"dip": noise}, problem, net, options),
        static_argnums=(3, 4))
    per = options.x_iters + options.k_iters
    losses, epochs = [], []
    for i, draw in enumerate(draws):
        state, record = step(state, xs["lr"][i], draw, int(xs["phase"][i]), bool(xs["log"][i]))
        if i >= options.warmup_iters:
            losses.append(float(record["loss"]))
            if (i - options.warmup_iters + 1) % per == 0:
                epochs.append((np.asarray(state["best_image"]), np.asarray(state["best_z"])))
    want = FX["losses"]
    rel = np.abs(np.asarray(losses) - want) / np.abs(want)
    assert len(losses) == len(want) and rel.max() <= 1e-5, rel
    for e, (image, z) in enumerate(epochs):
        np.testing.assert_allclose(z[0], FX["best_ker"][e], atol=1e-4 * np.abs(FX["best_ker"]).max())
        np.testing.assert_allclose(image[0, ::8, ::8], FX["best_im_sub"][e], atol=5e-3)
        assert abs(image.astype(np.float64).sum() - FX["best_im_sum"][e]) <= 1e-4 * image.size
    np.testing.assert_allclose(np.asarray(bks.result(state)), 2 * np.clip(epochs[-1][0][0], 0, 1) - 1)


def test_geocross_and_the_schedule_closed_forms():
    """geocross: zero for equal rows, 2 * pi^2 * D / ... for opposite ones; linear1cycledrop's corners."""
    w = np.ones((1, 14, 512), np.float32)
    assert float(bks.geocross(jnp.asarray(w))) == pytest.approx(0.0, abs=1e-4)
    w[0, 1::2] *= -1                          # half the rows opposite: angle pi between 49 of the 196 pairs x 2
    pairs = 2 * 7 * 7 / 196
    assert float(bks.geocross(jnp.asarray(w))) == pytest.approx(pairs * np.pi ** 2 * 512 / 6.0, rel=1e-4)
    assert bks.one_cycle_drop(0, 100) == pytest.approx(0.1)
    assert bks.one_cycle_drop(45, 100) == pytest.approx(1.0)
    assert bks.one_cycle_drop(90, 100) == pytest.approx(0.1)
    assert bks.one_cycle_drop(99, 100) == pytest.approx(0.1 + 0.9 * (0.001 - 0.1))


def test_the_grid_rows():
    """Warm-up rows, then per epoch x rows (one-cycle factors over all x steps) and k rows (0.7 every fifth of the
    k steps); a phase's last row logs."""
    options = solvers.make_options(bks.SOLVER, steps=5, warmup_iters=3, x_iters=2, k_iters=1)
    grid = bks.SOLVER.step_grid(options)
    xs = {k: np.asarray(v) for k, v in grid.xs.items()}
    assert grid.evaluations == 15 and list(xs["phase"]) == [0] * 3 + [1, 1, 2] * 5
    assert list(xs["log"]) == [False] * 3 + [False, True, True] * 5
    np.testing.assert_allclose(xs["lr"][3::3], [bks.one_cycle_drop(2 * e, 10) for e in range(5)], rtol=1e-6)
    np.testing.assert_allclose(xs["lr"][5::3], 0.7 ** np.arange(5), rtol=1e-6)


def test_runs_from_the_command_line_on_nonlinear_deblurring_only(tmp_path):
    """A run on the nonlinear-deblurring config with a (random) generator: restarts from independent draws, the
    best image of each in [-1, 1]; any other task, or a missing generator file, is one line and nothing written."""
    gen = tiny_generator_file(tmp_path / "gen.msgpack")
    kernel = tiny_kernel_file(tmp_path / "kernel.msgpack")
    opts = [f"--config.solver.bks_stylegan.{k}={v}" for k, v in dict(
        generator=gen, fit_samples=200, steps=1, warmup_iters=0, x_iters=1, k_iters=0, dip_nf=4, dip_blocks=1).items()]
    common = ["--config.solver.name=bks_stylegan", "--config.num_samples=2", "--config.data.num_images=1",
              f"--config.compilation_cache={os.environ['DPS_JAX_SUITE_CACHE']}", *opts]
    assert_one_line_refusals([
        ("configs/super_resolution.py", [], "solver 'bks_stylegan' deblurs blindly in the KernelWizard's blur "
                                            "space: it takes the nonlinear_blur operator (task nonlinear_deblur) "
                                            "only; the operator is 'super_resolution'"),
        ("configs/nonlinear_deblur.py", [f"--config.solver.bks_stylegan.generator={tmp_path / 'none.msgpack'}"],
         f"solver 'bks_stylegan': no generator file {tmp_path / 'none.msgpack'}")], common, tmp_path)
    out = io.StringIO()
    argv = ["dps_jax.main", "--config=configs/nonlinear_deblur.py", f"--config.output.root={tmp_path / 'run'}",
            f"--config.operator.checkpoint={kernel}", *common]
    assert main.cli(argv, stream=out) == 0, out.getvalue()[-2000:]
    assert "bks_stylegan: 1 steps (solver.bks_stylegan.steps), 1 network evaluations" in out.getvalue()
    (metrics,) = glob.glob(str(tmp_path / "run" / "**" / "metrics.json"), recursive=True)
    m = json.load(open(metrics))
    assert m["solver"] == "bks_stylegan" and m["steps"] == 1           # grid rows: 1 x step
    (img,) = m["images"]
    samples = np.load(os.path.join(os.path.dirname(metrics), img["image"], "samples.npz"))["samples"]
    assert samples.shape == (2, 32, 32, 1) and np.abs(samples).max() <= 1
    assert np.abs(samples[0] - samples[1]).max() > 1e-3            # restarts from independent draws


def test_fresh_dip_weights_are_torchs_conv_init():
    """Weights and biases uniform on +-1 / sqrt(fan_in) (torch's Conv2d default): every value inside, the spread
    of a uniform (std bound / sqrt(3)), and a new key draws new weights."""
    config = kernel_dip.KernelDIPConfig(nf=8, n_blocks=1, kernel_dim=16)
    params = kernel_dip.init_params(jax.random.PRNGKey(0), config)
    assert set(params) == set(kernel_dip.param_shapes(config))
    for name, shape in kernel_dip.param_shapes(config).items():
        p = np.asarray(params[name])
        assert p.shape == shape
        weight = params[name.replace(".bias", ".weight")].shape
        bound = 1 / np.sqrt(np.prod(weight[1:]))
        assert np.abs(p).max() <= bound
        if p.size > 1000:
            assert p.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    other = kernel_dip.init_params(jax.random.PRNGKey(1), config)
    assert not np.allclose(other["model.1.weight"], params["model.1.weight"])
