"""score_sde_pytorch checkpoints (NCSN++ / DDPM++ under VE and VP SDEs) read without torch, against score_sde's own
score function and sampler step on the files its code wrote (tests/fixtures/score_sde_*.pth and score_sde.npz,
from tools/make_score_sde_fixtures.py)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert import score_sde as ss
from checkpoints_convert import torch_writer as tw
from checkpoints_convert.torch_reader import CheckpointError
from dps_jax import prior as prior_lib
from helpers import fixture_path, load_npz

FX = load_npz("score_sde.npz")
META = json.loads(str(FX["meta"]))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{case: (score_sde fields, prior)} of every fixture network, converted with its EMA weights."""
    root = tmp_path_factory.mktemp("score_sde")
    out = {}
    for label, c in META["cases"].items():
        path = str(root / f"{label}.msgpack")
        ss.convert(fixture_path(c["file"]), path, c["config"], tuple(c["overrides"]))
        out[label] = (ss.score_sde_config(c["config"], tuple(c["overrides"])), prior_lib.load(path))
    return out


def score(cfg, pr, x, t):
    """score_sde's score s(x, t) (its data units: [0, 1] for VE, [-1, 1] for VP) from the dps_jax prior."""
    if cfg["sde"] == "vesde":
        sigma = cfg["sigma_min"] * (cfg["sigma_max"] / cfg["sigma_min"]) ** t      # on [0, 1] data
        x11 = 2 * x - 1                                                          # dps_jax's [-1, 1], noise 2 sigma
        eps = (x11 - prior_lib.x0_at_sigma(pr, jnp.asarray(x11), 2 * sigma)) / (2 * sigma)
        return -eps / sigma
    if cfg["continuous"]:
        ab = np.exp(-(0.5 * (cfg["beta_max"] - cfg["beta_min"]) * t ** 2 + cfg["beta_min"] * t))
        sigma = np.sqrt(1 / ab - 1)
        eps = (x / np.sqrt(ab) - prior_lib.x0_at_sigma(pr, jnp.asarray(x / np.sqrt(ab)), sigma)) / sigma
    else:
        n = cfg["num_scales"]
        step = int(round(float(t) * (n - 1)))
        ab = np.cumprod(1 - np.linspace(cfg["beta_min"] / n, cfg["beta_max"] / n, n))[step]
        eps = prior_lib.eps_at_step(pr, jnp.asarray(x), step, np.float32(ab))
    return -np.asarray(eps) / np.sqrt(1 - ab)


def reverse_diffusion_mean(cfg, x, t, s):
    """The noise-free part of score_sde's ReverseDiffusionPredictor step at (x, t) given the score s: its SDE
    discretised on num_scales steps (VE: sigma grid; VP: the DDPM betas)."""
    n = cfg["num_scales"]
    k = int(np.float32(t) * (n - 1))
    if cfg["sde"] == "vesde":
        sigmas = np.exp(np.linspace(np.log(cfg["sigma_min"]), np.log(cfg["sigma_max"]), n))
        return x + (sigmas[k] ** 2 - (sigmas[k - 1] ** 2 if k else 0.0)) * s
    beta = np.linspace(cfg["beta_min"] / n, cfg["beta_max"] / n, n)[k]
    return x - (np.sqrt(1 - beta) * x - x) + beta * s


@pytest.mark.parametrize("label", sorted(META["cases"]))
def test_converted_network_gives_score_sdes_score_and_step(converted, label):
    """The score within 1e-4 of its largest value (measured: 8e-7 .. 3e-5), and one reverse-diffusion step's
    mean likewise, for NCSN++ with input and output pyramids and with a residual input pyramid (VE), and
    DDPM++ read as a continuous and as a discrete VP network."""
    cfg, pr = converted[label]
    x, t = FX[f"{label}/x"], FX[f"{label}/t"]
    got = np.stack([score(cfg, pr, x[i], t[i]) for i in range(len(t))])
    want = FX[f"{label}/score"]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), np.abs(got - want).max()
    step = np.stack([reverse_diffusion_mean(cfg, x[i], t[i], got[i]) for i in range(len(t))])
    want_step = FX[f"{label}/x_mean"]
    assert np.abs(step - want_step).max() <= 1e-4 * np.abs(want_step).max()
    assert pr.process == {"vesde": "ve", "vpsde": "vp" if cfg["continuous"] else "discrete_vp"}[cfg["sde"]]


def test_raw_weights_and_what_the_checkpoint_records(tmp_path):
    """--weights model reads the network's own parameters instead of the EMA (which differ in the fixture);
    the output records the config, SDE and weights it came from."""
    c = META["cases"]["ve_skip"]
    path = str(tmp_path / "raw.msgpack")
    extra = ss.convert(fixture_path(c["file"]), path, c["config"], tuple(c["overrides"]), weights="model")
    assert extra["weights"] == "model" and extra["sigma_max"] == 348.0 and extra["sde"] == "vesde"
    cfg = ss.score_sde_config(c["config"], tuple(c["overrides"]))
    pr = prior_lib.load(path)
    x, t, want = FX["ve_skip/x"], FX["ve_skip/t"], FX["ve_skip/score_raw"]
    got = np.stack([score(cfg, pr, x[i], t[i]) for i in range(len(t))])
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(FX["ve_skip/score"] - want).max() > 0.1 * np.abs(want).max()      # the EMA is another network


def test_presets_are_the_published_configs_and_their_parameter_counts():
    """Every preset equals the config file of score_sde's repository field by field (read by the fixture script),
    and the key table this converter expects has as many parameters as score_sde's constructor builds from it
    (65,574,549 for the 256 x 256 NCSN++ of FFHQ / CelebA-HQ; 61,804,419 for CIFAR-10 DDPM++)."""
    published = META["published"]
    assert set(published) == set(ss.PRESETS)
    for preset, info in published.items():
        assert info["differ"] == [], (preset, info["differ"])
        cfg = ss.score_sde_config(preset)
        if cfg["sde"] == "vesde" and not cfg["continuous"]:
            with pytest.raises(CheckpointError, match="discretely trained VE network"):
                ss.edm_config(cfg)
            continue
        assert ss.parameter_count(ss.edm_config(cfg)) == info["params"], preset
    assert published["ve/ffhq_256_ncsnpp_continuous"]["params"] == 65_574_549


def _ema_file(path, model: dict, shadow: list) -> str:
    arrays = list(model.values()) + shadow
    tensors = [tw.tensor(str(k), a.size, a.shape) for k, a in enumerate(arrays)]
    model_ops = tw.ordered_dict({name: tensors[k] for k, name in enumerate(model)})
    shadow_ops = b"](" + b"".join(tensors[len(model):]) + b"e"
    ops = tw.plain_dict({"model": model_ops, "ema": tw.plain_dict({"decay": tw.i(0), "shadow_params": shadow_ops}),
                         "step": tw.i(3)})
    return tw.write(path, ops, {str(k): np.ascontiguousarray(a, "<f4").tobytes() for k, a in enumerate(arrays)})


def test_files_and_configs_it_cannot_read_are_refused_in_one_line(tmp_path):
    c = META["cases"]["ve_skip"]
    src, over = fixture_path(c["file"]), tuple(c["overrides"])
    convert = lambda *a, **k: ss.convert(*a, **k)
    dst = str(tmp_path / "out.msgpack")
    cases = [
        # the file of another layout: NCSN++ with a residual input pyramid read as one with input skips
        ((src, dst, "ve/cifar10_ncsnpp_continuous", over + ("sigma_max=348", "num_scales=2000")),
         "does not match the model config: .*missing keys"),
        ((src, dst, "ve/cifar10_ncsnpp_continuous", over), r"is not the config's \(1000 from 50 to 0.01\)"),
        ((src, dst, c["config"], over + ("model.sigma_max=100",)), r"sigma table \(2000 sigmas from 348 to 0.01\) is not the config's \(2000 from 100"),
        ((src, dst, "ve/ffhq_1024", over), "unknown score_sde config 've/ffhq_1024'"),
        ((src, dst, c["config"], ("model.width=3",)), "--set 'model.width=3': expected FIELD=VALUE"),
        ((src, dst, c["config"], ("nf=eight",)), "nf takes a value of type int, got 'eight'"),
        ((src, dst, "ve/cifar10_ncsnpp"), "discretely trained VE network"),
        ((src, dst, c["config"], ("training.sde=subvpsde",)), "sub-VP is not supported"),
        ((src, dst, c["config"], ("name=ddpm",)), "model.name 'ddpm'.*diffusers"),
        ((src, dst, c["config"], ("progressive=residual",)), "model.progressive 'residual' is not implemented"),
    ]
    for args, message in cases:
        with pytest.raises(CheckpointError, match=message):
            convert(*args)
    model = {"module.all_modules.0.W": np.ones(4, np.float32), "module.all_modules.1.weight": np.ones((2, 2), np.float32),
             "module.all_modules.1.bias": np.ones(2, np.float32)}
    short = _ema_file(str(tmp_path / "short_ema.pth"), model, [np.ones((2, 2), np.float32)])
    with pytest.raises(CheckpointError, match="the EMA holds 1 tensors, the network 2 trainable ones"):
        convert(short, dst, c["config"], over)
    swapped = _ema_file(str(tmp_path / "swapped.pth"), model, [np.ones(2, np.float32), np.ones((2, 2), np.float32)])
    with pytest.raises(CheckpointError, match=r"the EMA's tensor for all_modules.1.weight is \(2,\)"):
        convert(swapped, dst, c["config"], over)
    data = open(src, "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    assert ss.main([str(cut), dst, "--config", c["config"], *sum((["--set", o] for o in over), [])]) == 1
    assert not os.path.exists(dst)
    assert {p.name for p in tmp_path.iterdir()} == {"short_ema.pth", "swapped.pth", "cut.pth"}   # nothing half-written
