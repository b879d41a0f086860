"""BKS-generic's loop against the reference's (tests/fixtures/bks_generic.npz, from
tools/make_bks_generic_fixtures.py): the same networks, options and random draws; every optimiser step's loss,
each iteration's image and kernel latent. Its schedule against closed forms; the VGG19 converter; its command
line."""

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
from dps_jax import evaluate, main, operators, solvers
from dps_jax.models import image_dip, kernel_dip, kernel_wizard, vgg19
from dps_jax.solvers import bks_generic as bg
from helpers import assert_one_line_refusals, load_npz, paper_table_config, tiny_generator_file, tiny_kernel_file

FX = load_npz("bks_generic.npz")
META = json.loads(str(FX["meta"]))


def nhwc(a):
    return np.ascontiguousarray(np.asarray(a, np.float64).transpose(0, 2, 3, 1))


def fixture_networks():
    seeds = META["seeds"]
    o = META["kernel_wizard"]
    kconfig = kernel_wizard.KernelWizardConfig(
        in_channels=o["input_nc"], features=o["nf"], front_blocks=o["front_RBs"], back_blocks=o["back_RBs"],
        extractor_blocks=o["KernelExtractor"]["n_blocks"], kernel_dim=o["kernel_dim"], use_vae=o["use_vae"])
    kparams = ckw.convert_state_dict(random_state_dict(ckw.torch_shapes(kconfig), seeds["kernel_wizard"]), kconfig)
    op = operators.Operator(name="nonlinear_blur", arrays={"params": kparams, "z": jnp.zeros((META["size"] // 128,) * 2 + (kconfig.kernel_dim,))},
                            static=(("config", kconfig.to_json()),))
    # the stand-in VGG19's torchvision layer list, keys "<index>.weight" (OIHW)
    vconfig = vgg19.VGG19Config(width_divisor=META["vgg_divisor"])
    torch_shapes = {}
    for name, s in vgg19.param_shapes(vconfig).items():
        kh, kw, cin, cout = s["kernel"].shape
        torch_shapes[f"{name[4:]}.weight"], torch_shapes[f"{name[4:]}.bias"] = (cout, cin, kh, kw), (cout,)
    for index in (30, 32, 34):                  # the trunk's last convolutions: in its draw, never in its loss
        torch_shapes[f"{index}.weight"], torch_shapes[f"{index}.bias"] = (512 // META["vgg_divisor"],) * 2 + (3, 3), \
            (512 // META["vgg_divisor"],)
    vw = random_state_dict(torch_shapes, seeds["vgg"])
    vgg = {name: {"kernel": jnp.asarray(vw[f"{name[4:]}.weight"].transpose(2, 3, 1, 0)),
                  "bias": jnp.asarray(vw[f"{name[4:]}.bias"])} for name in vgg19.param_shapes(vconfig)}
    x = META["image_dip"]
    d = META["kernel_dip"]
    net = bg.Network(vgg=vgg, warmup_z=jnp.asarray(FX["warmup_k"][0]), xdip_fields=(x["channels"], x["skip"], x["levels"]),
                     kdip_fields=(d["nf"], d["n_blocks"]))
    xconfig = bg.xdip_config(net, 3)
    xdip = {k: jnp.asarray(v) for k, v in random_state_dict(image_dip.param_shapes(xconfig), seeds["image_dip"]).items()}
    dconfig = kernel_dip.KernelDIPConfig(nf=d["nf"], n_blocks=d["n_blocks"], kernel_dim=d["kernel_dim"])
    kdip = {k: jnp.asarray(v) for k, v in random_state_dict(kernel_dip.param_shapes(dconfig), seeds["kernel_dip"]).items()}
    return net, xdip, kdip, op


def f64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


def test_the_loop_is_the_references():
    """The first three joint iterations (both halves of the loss, two learning-rate decays; the fixture ran no
    warm-up steps)
    through the solver's update in float64, as the fixture ran (in float32 the loop's own rounding moves the
    image by ~5e-3 within two Adam steps), on the reference's draws: every loss within 1e-9 relative, each
    iteration's x and z within 1e-8."""
    with jax.enable_x64(True):
        replay(joint_rows=3)


def replay(joint_rows: int):
    net, xdip, kdip, op = f64(fixture_networks())
    rng = np.random.default_rng(META["seeds"]["draws"])       # the reference's draws, in its call order
    size = META["size"]
    dip_zk = nhwc(rng.uniform(0, 1, (1, 64, size // 4, size // 4)) * 0.1)
    dip_zx = nhwc(rng.uniform(0, 1, (1, 8, size, size)) * 0.1)
    o = META["options"]
    options = solvers.make_options(bg.SOLVER, steps=o["num_iters"], warmup_iters=o["num_warmup_iters"])
    phase, lr, second = bg.schedule_rows(options)
    y = np.random.default_rng(META["seeds"]["y"]).integers(0, 256, (size, size, 3)) / 255.0
    problem = solvers.make_problem(op, 2 * y - 1, (size, size, 3))
    problem = problem.replace(y=jnp.asarray(2 * y - 1))                # make_problem keeps float32
    state = bg.initial_state(xdip, kdip, jnp.asarray(dip_zx), jnp.asarray(dip_zk), (size, size, 3))
    # each row's phase a constant of its program (XLA:CPU at the suite's level 0 runs these networks far slower
    # inside a conditional)
    step = jax.jit(lambda state, lr, noise, phase, second: bg.SOLVER.update(
        state, {"phase": jnp.int32(phase), "lr": lr, "second": second}, noise, problem, net, options),
        static_argnums=3)
    zeros = {"x": jnp.zeros_like(state["dip_zx"]), "k": jnp.zeros_like(state["dip_zk"])}
    warm = 2 * options.warmup_iters
    losses = []
    for i in range(warm + joint_rows):
        noise = dict(zeros)
        for part, shape in (("x", (1, 8, size, size)), ("k", (1, 64, size // 4, size // 4))):
            if (part == "x" and phase[i] != bg.K_WARMUP) or (part == "k" and phase[i] != bg.X_WARMUP):
                noise[part] = jnp.asarray(nhwc(rng.standard_normal(shape)))
        before = state
        state, record = step(state, jnp.float64(lr[i]), noise, phase[i], jnp.bool_(second[i]))
        losses.append(float(record["loss"]))
        if i >= warm:                          # this iteration's x and z (z as it made it, before its step)
            j = i - warm
            x = np.asarray(state["image"][0])
            np.testing.assert_allclose(x[::8, ::8], FX["x_sub"][j], atol=1e-8)
            assert abs(x.sum() - FX["x_sum"][j]) <= 1e-9 * x.size
            z = kernel_dip.forward(before["kdip"], bg.kdip_config(net, FX["z"].shape[-1]),
                                   before["dip_zk"] + options.reg_noise_std * noise["k"])
            np.testing.assert_allclose(np.asarray(z[0]), FX["z"][j], atol=1e-8 * np.abs(FX["z"][j]).max())
    assert int(FX["draw_counts"][1]) == 2 * options.warmup_iters + 2 * options.steps
    want = FX["losses"][:len(losses)]
    rel = np.abs(np.asarray(losses) - want) / np.abs(want)
    assert rel.max() <= 1e-9, rel
    assert second[warm + 1] is False and second[warm + 2] is True        # the replayed rows cover both halves
    np.testing.assert_allclose(np.asarray(bg.result(state)), 2 * np.clip(x, 0, 1) - 1)


def test_the_schedule_rows():
    """Each warm-up at the full rate; joint iteration s at decay^((s + 1) // (steps // 5)) (torch's StepLR,
    stepped before the optimiser), the loss's second half from s = steps // 2."""
    options = solvers.make_options(bg.SOLVER, steps=10, warmup_iters=3)
    phase, lr, second = bg.schedule_rows(options)
    assert phase == [bg.X_WARMUP] * 3 + [bg.K_WARMUP] * 3 + [bg.JOINT] * 10
    np.testing.assert_allclose(lr, [1.0] * 6 + [0.7 ** ((s + 1) // 2) for s in range(10)])
    assert second == [False] * 11 + [True] * 5
    xs = bg.SOLVER.step_grid(options).xs
    assert xs["phase"].shape == (16,) and bool(xs["second"][-1]) and not bool(xs["second"][10])


def test_runs_from_the_command_line_on_nonlinear_deblurring_only(tmp_path):
    """A run on the nonlinear-deblurring config (no VGG19: pixel L1): restarts from independent draws, each
    image in [-1, 1]; any other task, a missing VGG19 file or an image DIP too deep for 32 x 32 is one line and
    nothing written."""
    kernel = tiny_kernel_file(tmp_path / "kernel.msgpack")
    opts = [f"--config.solver.bks_generic.{k}={v}" for k, v in dict(
        steps=1, warmup_iters=0, dip_levels=2, dip_channels=4, dip_skip=2, kdip_nf=4, kdip_blocks=0).items()]
    common = ["--config.solver.name=bks_generic", "--config.num_samples=2", "--config.data.num_images=1",
              f"--config.compilation_cache={os.environ['DPS_JAX_SUITE_CACHE']}", *opts]
    assert_one_line_refusals([
        ("configs/super_resolution.py", [], "solver 'bks_generic' deblurs blindly in the KernelWizard's blur "
                                            "space: it takes the nonlinear_blur operator (task nonlinear_deblur) "
                                            "only; the operator is 'super_resolution'"),
        ("configs/nonlinear_deblur.py", [f"--config.solver.bks_generic.vgg19={tmp_path / 'none.msgpack'}"],
         f"solver 'bks_generic': no VGG19 file {tmp_path / 'none.msgpack'}"),
        ("configs/nonlinear_deblur.py", ["--config.solver.bks_generic.dip_levels=5"],
         "the image DIP with 5 levels needs sizes that are multiples of 64, got 32 x 32; lower its levels")],
        common, tmp_path)
    out = io.StringIO()
    argv = ["dps_jax.main", "--config=configs/nonlinear_deblur.py", f"--config.output.root={tmp_path / 'run'}",
            f"--config.operator.checkpoint={kernel}", *common]
    assert main.cli(argv, stream=out) == 0, out.getvalue()[-2000:]
    assert "bks_generic: 1 steps (solver.bks_generic.steps); x_lr 0.0005" in out.getvalue()
    (metrics,) = glob.glob(str(tmp_path / "run" / "**" / "metrics.json"), recursive=True)
    m = json.load(open(metrics))
    assert m["solver"] == "bks_generic"
    (img,) = m["images"]
    samples = np.load(os.path.join(os.path.dirname(metrics), img["image"], "samples.npz"))["samples"]
    assert samples.shape == (2, 32, 32, 1) and np.abs(samples).max() <= 1
    assert np.abs(samples[0] - samples[1]).max() > 1e-3            # restarts from independent draws


def test_both_bks_solvers_in_the_comparison_command(tmp_path, monkeypatch):
    """`dps_jax.evaluate` runs bks_generic and bks_stylegan on nonlinear deblurring (small networks in place of the
    shipped KernelWizard and generator: compile time) and gives every other task n/a with the solver's reason.
    One image: the table skips FID / KID, whose covariance needs two."""
    monkeypatch.setattr(kernel_wizard, "SHIPPED_KERNEL_MODEL", tiny_kernel_file(tmp_path / "kernel.msgpack"))
    c = paper_table_config()
    c.data.source, c.data.num_images = "folder", 1            # one of the shipped test images
    c.tasks, c.methods = "nonlinear_deblur,super_resolution", "bks_generic,bks_stylegan"
    c.output.root, c.compilation_cache = str(tmp_path / "table"), os.environ["DPS_JAX_SUITE_CACHE"]
    for k, v in dict(steps=2, warmup_iters=0, dip_levels=2, dip_channels=4, dip_skip=2, kdip_nf=4,
                     kdip_blocks=0).items():
        setattr(c.cells.solver.bks_generic, k, v)
    for k, v in dict(generator=tiny_generator_file(tmp_path / "gen.msgpack"), fit_samples=200, steps=1,
                     warmup_iters=0, x_iters=1, k_iters=1, dip_nf=4, dip_blocks=0).items():
        setattr(c.cells.solver.bks_stylegan, k, v)
    evaluate.evaluate(c, io.StringIO())
    summary = json.load(open(tmp_path / "table" / "table.json"))
    cells = {(x["task"], x["method"]): x for x in summary["cells"]}
    assert set(cells) == {("nonlinear_deblur", "bks_generic"), ("nonlinear_deblur", "bks_stylegan")}
    for cell in cells.values():
        assert np.isfinite(cell["metrics"]["psnr"]["mean"]) and cell["num_images"] == 1
        assert cell["identity"]["solver.bks_generic.steps" if cell["method"] == "bks_generic"
                                else "solver.bks_stylegan.generator"] in (2, str(tmp_path / "gen.msgpack"))
    reasons = {(u["method"], tuple(u["tasks"])): u["reason"] for u in summary["unsupported"]}
    assert set(reasons) == {("bks_generic", ("super_resolution",)), ("bks_stylegan", ("super_resolution",))}
    assert all("takes the nonlinear_blur operator (task nonlinear_deblur) only" in r for r in reasons.values())


def test_vgg19_converter_maps_torchvisions_trunk_and_refuses_other_files(tmp_path):
    """torchvision's keys (features.<index>, OIHW) to the trunk's convolutions up to relu5_1 (HWIO); the
    classifier and the trunk past relu5_1 are dropped; a file missing a layer is one error naming it; a
    written file reads back through vgg19.load."""
    from checkpoints_convert import metrics as cm
    from checkpoints_convert.torch_reader import CheckpointError
    from dps_jax.models import checkpoint

    config = vgg19.VGG19Config(width_divisor=16)
    state = {}
    for name, s in vgg19.param_shapes(config).items():
        kh, kw, cin, cout = s["kernel"].shape
        state[f"features.{name[4:]}.weight"] = np.random.default_rng(len(state)).standard_normal((cout, cin, kh, kw))
        state[f"features.{name[4:]}.bias"] = np.arange(cout, dtype=np.float64)
    extra = {"features.30.weight": np.zeros((32, 32, 3, 3)), "classifier.0.weight": np.zeros((8, 4))}
    params = cm.convert_vgg19({**state, **extra}, config)
    np.testing.assert_array_equal(params["conv28"]["kernel"], np.float32(state["features.28.weight"].transpose(2, 3, 1, 0)))
    np.testing.assert_array_equal(params["conv5"]["bias"], np.arange(8, dtype=np.float32))
    checkpoint.save_checkpoint(str(tmp_path / "vgg.msgpack"), params, config, fmt=vgg19.FORMAT)
    loaded, got = vgg19.load(str(tmp_path / "vgg.msgpack"))
    assert got == config and set(loaded) == set(params)
    del state["features.19.weight"]
    with pytest.raises(CheckpointError, match="features.19.weight"):
        cm.convert_vgg19(state, config)
