"""diffusers' UNet2DModel: the Flax port and its torch-free converter against diffusers' own forward pass and DDIM
step (tests/fixtures/diffusers_unet.npz, tools/make_diffusers_fixtures.py), and against hostile files."""

import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert import diffusers as conv
from checkpoints_convert.mapping import random_state_dict
from checkpoints_convert.safetensors_io import load_safetensors, save_safetensors
from checkpoints_convert.torch_reader import CheckpointError
from checkpoints_convert.torch_writer import write_arrays
from dps_jax import api, diffusion, operators, prior as prior_lib, schedule
from dps_jax.models import diffusers_unet as du
from helpers import load_npz

FX = load_npz("diffusers_unet.npz")
SEED = {"cifar_like": 11, "variants": 12}


def fixture_config(name):
    return json.loads(str(FX[f"{name}/config"]))


def model_folder(root, name, weights="safetensors", scheduler=None, state=None):
    """A diffusers pipeline folder (unet/, scheduler/) holding the fixture's random weights."""
    cfg = du.DiffusersUNetConfig.from_diffusers(fixture_config(name))
    state = state if state is not None else random_state_dict(du.torch_shapes(cfg), SEED[name])
    unet = os.path.join(root, "unet")
    os.makedirs(unet, exist_ok=True)
    with open(os.path.join(unet, "config.json"), "w") as f:
        json.dump(fixture_config(name), f)
    if weights == "safetensors":
        save_safetensors(os.path.join(unet, "diffusion_pytorch_model.safetensors"), state)
    else:
        write_arrays(os.path.join(unet, "diffusion_pytorch_model.bin"), state)
    os.makedirs(os.path.join(root, "scheduler"), exist_ok=True)
    with open(os.path.join(root, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(scheduler or {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001,
                                "beta_end": 0.02, "num_train_timesteps": 1000, "prediction_type": "epsilon",
                                "variance_type": "fixed_small", "clip_sample": True}, f)
    return root


@pytest.mark.parametrize("name", ["cifar_like", "variants"])
def test_key_table_is_diffusers(name):
    cfg = du.DiffusersUNetConfig.from_diffusers(fixture_config(name))
    want = {k: tuple(v) for k, v in json.loads(str(FX[f"{name}/keys"])).items()}
    assert du.torch_shapes(cfg) == want


@pytest.mark.parametrize("name, weights", [("cifar_like", "safetensors"), ("variants", "bin")])
def test_converted_network_is_diffusers_forward_pass(tmp_path, name, weights):
    src = model_folder(str(tmp_path / "pipe"), name, weights)
    dst = str(tmp_path / "model.msgpack")
    extra = conv.convert(src, dst)
    assert extra["mean_type"] == "epsilon" and extra["beta_schedule"] == "linear"
    pr = prior_lib.load(dst, clip_denoised=False)
    assert (pr.mean_type, pr.var_type, pr.schedule) == ("epsilon", "fixed_small", ("linear", 1000))
    x, want = FX[f"{name}/x"], FX[f"{name}/out"]
    tables = schedule.build_tables("linear", 1000)
    c = jax.tree_util.tree_map(lambda a: a[999 - 900], diffusion.step_coefficients(tables))

    @jax.jit
    def run(params, x, t):
        p = pr.replace(params=params)
        return jax.vmap(p.apply, in_axes=(None, 0, 0))(params, x, t), jax.vmap(lambda xi: prior_lib.denoise(p, xi, c))(x)

    got, den = run(pr.params, jnp.asarray(x), jnp.asarray(FX["timesteps"]))
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())

    # one deterministic DDIM step (eta 0) of diffusers' scheduler, t 900 -> 800, through prior.denoise
    ab = float(tables.alphas_cumprod[800])
    prev = np.sqrt(ab) * den.x0_hat + np.sqrt(1 - ab) * den.eps
    want = FX[f"{name}/ddim_prev_900_800"]
    np.testing.assert_allclose(prev, want, atol=1e-4 * np.abs(want).max())


def test_published_parameter_counts():
    """ddpm-cifar10-32 and ddpm-celebahq-256 as diffusers builds them, and as the DDPM paper states (35.7M, 114M)."""
    counts = json.loads(str(FX["published_parameters"]))
    for name, cfg in json.loads(str(FX["published_configs"])).items():
        n = sum(int(np.prod(s)) for s in du.torch_shapes(du.DiffusersUNetConfig.from_diffusers(cfg)).values())
        assert n == counts[name]
    assert round(counts["ddpm-cifar10-32"] / 1e5) == 357 and round(counts["ddpm-celebahq-256"] / 1e6) == 114


def test_old_attention_names_and_schedule_records(tmp_path):
    """google/ddpm-* files carry attention weights as query/key/value/proj_attn: converted to the same params.
    A cosine v-prediction scheduler is recorded, and a run on another schedule is refused."""
    cfg = du.DiffusersUNetConfig.from_diffusers(fixture_config("variants"))
    state = random_state_dict(du.torch_shapes(cfg), 12)
    old = {}
    for k, w in state.items():
        for new, was in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new}.", f".{was}.")
        old[k] = w
    assert old != state
    sched = {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "num_train_timesteps": 1000}
    conv.convert(model_folder(str(tmp_path / "a"), "variants"), str(tmp_path / "a.msgpack"))
    conv.convert(model_folder(str(tmp_path / "b"), "variants", state=old, scheduler=sched), str(tmp_path / "b.msgpack"))
    a, b = prior_lib.load(str(tmp_path / "a.msgpack")), prior_lib.load(str(tmp_path / "b.msgpack"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)
    assert (b.mean_type, b.schedule) == ("v", ("cosine", 1000))
    op = operators.build("super_resolution", (8, 8, 1), scale_factor=2)
    y = np.zeros((4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="trained on the cosine schedule of 1000 steps; the run asks for linear"):
        api.sample(b, op, y, options={"steps": 2}, num_samples=1)


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(time_embedding_type="fourier"), "time_embedding_type='fourier' is not implemented"),
    (lambda d: d.update(down_block_types=["SkipDownBlock2D", "AttnDownBlock2D", "DownBlock2D"]),
     "block type 'SkipDownBlock2D' is not implemented"),
    (lambda d: d.update(num_class_embeds=10), "num_class_embeds=10 is not implemented"),
    (lambda d: d.update(brand_new_option=1), "unknown diffusers UNet2DModel config keys \\['brand_new_option'\\]"),
    (lambda d: d.update(_class_name="UNet2DConditionModel"), "only UNet2DModel is implemented"),
])
def test_configs_it_cannot_run_are_refused_by_name(change, match):
    d = fixture_config("cifar_like")
    change(d)
    with pytest.raises(ValueError, match=match):
        du.DiffusersUNetConfig.from_diffusers(d)


def test_mismatched_weights_are_listed(tmp_path):
    cfg = du.DiffusersUNetConfig.from_diffusers(fixture_config("cifar_like"))
    state = random_state_dict(du.torch_shapes(cfg), 11)
    del state["conv_in.weight"]
    state["mid_block.resnets.0.conv1.weight"] = state["mid_block.resnets.0.conv1.weight"][:, :3]
    state["extra.weight"] = np.zeros(3, np.float32)
    dst = tmp_path / "x.msgpack"
    with pytest.raises(CheckpointError, match="1 missing keys: conv_in.weight; 1 unexpected keys: extra.weight.*"
                                              "1 shapes differ: mid_block.resnets.0.conv1.weight"):
        conv.convert(model_folder(str(tmp_path / "p"), "cifar_like", state=state), str(dst))
    assert not dst.exists()


def _safetensors(path, header, data=b""):
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize("make, match", [
    (lambda p: open(p, "wb").write(struct.pack("<Q", 1 << 40) + b"{}"), "header of 1099511627776 bytes does not fit"),
    (lambda p: open(p, "wb").write(struct.pack("<Q", 4) + b"\xff\xfe{}"), "header is not JSON"),
    (lambda p: _safetensors(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
     "needs 16 bytes; its data_offsets \\[0, 16\\] give 16 bytes in a data section of 8"),
    (lambda p: _safetensors(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8),
     "needs 8 bytes"),
    (lambda p: _safetensors(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
     "share bytes"),
    (lambda p: _safetensors(p, {"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),
     "dtype 'C64'"),
    (lambda p: _safetensors(p, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "non-negative integers"),
])
def test_hostile_safetensors_are_refused_in_one_line(tmp_path, make, match):
    path = str(tmp_path / "bad.safetensors")
    make(path)
    with pytest.raises(CheckpointError, match=match) as e:
        load_safetensors(path)
    assert "\n" not in str(e.value)


def test_safetensors_round_trip_and_bf16(tmp_path):
    path = str(tmp_path / "t.safetensors")
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "h": np.array([1.5, -2], np.float16)}
    save_safetensors(path, tensors)
    back = load_safetensors(path)
    assert set(back) == {"w", "h"} and back["h"].dtype == np.float16
    np.testing.assert_array_equal(back["w"], tensors["w"])
    bits = (np.array([1.0, -3.5], np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    _safetensors(path, {"b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, bits)
    np.testing.assert_array_equal(load_safetensors(path)["b"], [1.0, -3.5])


def test_cli_converts_and_fails_in_one_line(tmp_path, capsys):
    src = model_folder(str(tmp_path / "pipe"), "variants")
    assert conv.main([src, str(tmp_path / "v.msgpack")]) == 0
    assert "epsilon network, linear schedule of 1000 steps" in capsys.readouterr().out
    assert conv.main([str(tmp_path / "nowhere"), str(tmp_path / "w.msgpack")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a diffusers pipeline" in err
    assert not (tmp_path / "w.msgpack").exists()
