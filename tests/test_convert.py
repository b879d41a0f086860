"""checkpoints_convert: a torch-free, code-execution-free reader, and the CLI round trip."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert import CheckpointError, convert_state_dict, load_state_dict
from checkpoints_convert.__main__ import main as convert_main
from helpers import fixture_path, load_npz, nhwc
from dps_jax.models.checkpoint import CheckpointFormatError, load_checkpoint
from dps_jax.models.unet import UNetConfig

MARKER = "/tmp/dps_jax_pickle_exploit_marker"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def variants_config():
    return UNetConfig.from_dict(json.loads(str(load_npz("adm_variants.npz")["config"])))


def test_legacy_format_gives_same_params_as_zip():
    zipped = load_state_dict(fixture_path("adm_variants.pt"))
    legacy = load_state_dict(fixture_path("adm_variants_legacy.pt"))
    assert sorted(zipped) == sorted(legacy)
    for k in zipped:
        np.testing.assert_array_equal(zipped[k], legacy[k], err_msg=k)


def test_float16_checkpoint_reads_as_float16():
    half = load_state_dict(fixture_path("adm_variants_fp16.pt"))
    full = load_state_dict(fixture_path("adm_variants.pt"))
    assert all(v.dtype == np.float16 for v in half.values())
    for k in full:
        np.testing.assert_array_equal(half[k], full[k].astype(np.float16), err_msg=k)


def test_exploit_is_refused_and_never_runs():
    if os.path.exists(MARKER):
        os.remove(MARKER)
    with pytest.raises(CheckpointError, match="refusing to load global 'posix.system'"):
        load_state_dict(fixture_path("hostile_exploit.pt"))
    assert not os.path.exists(MARKER)


def test_truncated_file_is_a_clear_error(tmp_path):
    out = tmp_path / "out.msgpack"
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(fixture_path("hostile_truncated.pt"))
    assert convert_main([fixture_path("hostile_truncated.pt"), str(out), "--config", variants_config().to_json()]) == 1
    assert not out.exists() and not any(tmp_path.iterdir())


def test_wrong_shapes_list_every_problem(tmp_path):
    state = load_state_dict(fixture_path("hostile_wrong_shapes.pt"))
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(state, variants_config())
    msg = str(err.value)
    full = load_state_dict(fixture_path("adm_variants.pt"))
    (missing,) = sorted(set(full) - set(state))
    (wrong,) = [k for k in state if state[k].shape != full[k].shape]
    assert f"1 missing keys: {missing}" in msg
    assert f"1 shapes differ: {wrong} is {state[wrong].shape}, the model expects {full[wrong].shape}" in msg
    out = tmp_path / "out.msgpack"
    assert convert_main([fixture_path("hostile_wrong_shapes.pt"), str(out), "--config",
                         variants_config().to_json()]) == 1
    assert not any(tmp_path.iterdir())


def test_mismatch_errors_stay_short_and_name_the_prefix():
    """Every key prefixed ('net.'): one line with the first few keys, the count, and the flag that fixes it."""
    state = {"net." + k: v for k, v in load_state_dict(fixture_path("adm_variants.pt")).items()}
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(state, variants_config())
    msg = str(err.value)
    n = len(state)
    assert f"{n} missing keys: " in msg and f"{n} unexpected keys: net." in msg and len(msg) < 700
    assert "carry the prefix 'net.': pass --strip-prefix net." in msg


def test_unexpected_keys_are_listed():
    state = dict(load_state_dict(fixture_path("adm_variants.pt")))
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match="1 unexpected keys: extra.weight"):
        convert_state_dict(state, variants_config())


def test_deepinv_schedule_buffers_are_dropped_by_pattern(tmp_path, capsys):
    """deepinv's DiffUNet state dict is the ADM layout plus two schedule buffers: refused with the flag that
    leaves them out, converted with it to the same params as the plain file; a pattern that matches no extra
    key is refused (a typo must not pass)."""
    from checkpoints_convert import torch_writer as tf

    plain = load_state_dict(fixture_path("adm_variants.pt"))
    schedule = np.linspace(1.0, 0.01, 1000, dtype=np.float32)
    src = tf.write_arrays(tmp_path / "diffunet.pt", {**{k: np.asarray(v) for k, v in plain.items()},
                                                      "sqrt_alphas_cumprod": schedule,
                                                      "sqrt_1m_alphas_cumprod": np.sqrt(1 - schedule ** 2)})
    cfg = variants_config().to_json()
    out = tmp_path / "out.msgpack"
    assert convert_main([src, str(out), "--config", cfg]) == 1
    err = capsys.readouterr().err
    assert "2 unexpected keys: sqrt_1m_alphas_cumprod, sqrt_alphas_cumprod" in err and "--drop-unexpected" in err
    assert convert_main([src, str(out), "--config", cfg, "--drop-unexpected", "sqrt_alpha*"]) == 1
    assert "1 unexpected keys: sqrt_1m_alphas_cumprod" in capsys.readouterr().err
    assert convert_main([src, str(out), "--config", cfg, "--drop-unexpected", "ema_*"]) == 1
    assert "'ema_*' matches none of the checkpoint's 2 keys the model does not take" in capsys.readouterr().err
    assert not any(p.name.endswith(".msgpack") for p in tmp_path.iterdir())
    assert convert_main([src, str(out), "--config", cfg, "--drop-unexpected", "sqrt_*"]) == 0
    _, params, _, _ = load_checkpoint(str(out))
    want = convert_state_dict(dict(plain), variants_config())
    flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(tree)[0])
    got, want = flat(params), flat(want)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=str(k))


def test_missing_file():
    with pytest.raises(CheckpointError, match="checkpoint file not found: /nonexistent.pt"):
        load_state_dict("/nonexistent.pt")


def test_cli_round_trip(tmp_path):
    """Convert with the CLI's entry point (in process: test_cli_bad_input_is_one_line runs the real command),
    load in one call, run the model."""
    ref = load_npz("adm_variants.npz")
    cfg_file = tmp_path / "variants.json"
    cfg_file.write_text(str(ref["config"]))
    out = tmp_path / "variants.msgpack"
    assert convert_main([fixture_path("adm_variants.pt"), str(out), "--config", str(cfg_file)]) == 0
    model, params, cfg, extra = load_checkpoint(str(out))
    assert cfg == variants_config() and extra["source"] == fixture_path("adm_variants.pt")
    apply = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))          # compiled: 3x quicker
    y = apply(params, jnp.asarray(nhwc(ref["x"])), jnp.asarray(ref["t"]), jnp.asarray(ref["y"]))
    assert np.abs(np.asarray(y) - nhwc(ref["out"])).max() <= 1e-4


def test_cli_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "checkpoints_convert", fixture_path("hostile_exploit.pt"),
                           str(tmp_path / "x.msgpack"), "--model", "ffhq256"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "refusing to load global 'posix.system'" in proc.stderr and proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir()) and not os.path.exists(MARKER)


def test_corrupt_dps_jax_checkpoint(tmp_path):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x00not msgpack at all")
    with pytest.raises(CheckpointFormatError, match="bad.msgpack"):
        load_checkpoint(str(bad))
    with pytest.raises(CheckpointFormatError, match="checkpoint file not found"):
        load_checkpoint(str(tmp_path / "missing.msgpack"))


def test_converter_never_overwrites_its_input(tmp_path):
    src = tmp_path / "in.pt"
    src.write_bytes(open(fixture_path("adm_variants.pt"), "rb").read())
    link = tmp_path / "link.msgpack"
    os.symlink(src, link)
    for dst in (src, link, tmp_path / "." / "in.pt"):
        assert convert_main([str(src), str(dst), "--config", variants_config().to_json()]) == 1
    assert src.read_bytes() == open(fixture_path("adm_variants.pt"), "rb").read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt", "link.msgpack"]


def test_output_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert convert_main([fixture_path("adm_variants.pt"), str(tmp_path / "a.msgpack"),
                             "--config", variants_config().to_json()]) == 0
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "a.msgpack").st_mode & 0o777) == 0o640


def test_sigterm_during_write_leaves_nothing(tmp_path):
    """The converter killed while it writes (SIGTERM delivered from inside the writer): exit 143, no file."""
    code = ("import os, signal, sys; import dps_jax.models.checkpoint as c; real = c._write_tree\n"
            "def killed(f, tree, cast):\n    f.write(b'partial'); os.kill(os.getpid(), signal.SIGTERM)\n"
            "c._write_tree = killed\nfrom checkpoints_convert.__main__ import main\n"
            f"sys.exit(main([{fixture_path('adm_variants.pt')!r}, {str(tmp_path / 'o.msgpack')!r}, '--config', "
            f"{variants_config().to_json()!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 143, proc.stderr
    assert not any(tmp_path.iterdir())


def test_nonfinite_and_float16_overflow_are_refused_by_name():
    state = dict(load_state_dict(fixture_path("adm_variants.pt")))
    key = "out.2.weight"
    bad = np.array(state[key])
    bad.flat[:3] = [np.nan, np.inf, -np.inf]
    with pytest.raises(CheckpointError, match=f"3 non-finite values .* in 1 weights, first {key}; pass --allow-nonfinite"):
        convert_state_dict({**state, key: bad}, variants_config())
    params = convert_state_dict({**state, key: bad}, variants_config(), allow_nonfinite=True)
    assert np.isnan(params["out_2"]["kernel"]).sum() == 1
    big = np.array(state[key])
    big.flat[5] = 1e5
    with pytest.raises(CheckpointError, match=f"{key} holds values up to 1e\\+05, beyond float16's 6.55e\\+04"):
        convert_state_dict({**state, key: big}, variants_config(), dtype=np.float16)


def test_cli_picks_a_wrapped_state_dict(tmp_path):
    from checkpoints_convert import torch_writer as tf
    state = load_state_dict(fixture_path("adm_variants.pt"))
    path = tf.write_arrays(tmp_path / "w.pt", state, wrap=lambda ops: tf.plain_dict({"model": ops, "ema": ops}))
    out = tmp_path / "o.msgpack"
    assert convert_main([path, str(out), "--config", variants_config().to_json()]) == 1 and not out.exists()
    assert convert_main([path, str(out), "--key", "ema", "--config", variants_config().to_json()]) == 0
    params = load_checkpoint(str(out)).params
    np.testing.assert_array_equal(params["out_2"]["bias"], state["out.2.bias"])


def test_streamed_checkpoint_is_flax_msgpack(tmp_path):
    """save_checkpoint writes leaf by leaf; the bytes are exactly flax.serialization.msgpack_serialize's."""
    import flax.serialization
    from dps_jax.models import checkpoint
    params = convert_state_dict(load_state_dict(fixture_path("adm_variants.pt")), variants_config())
    checkpoint.save_checkpoint(str(tmp_path / "a.msgpack"), params, variants_config(), extra={"step": 3, "s": "x"})
    payload = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": variants_config().to_json(),
               "extra": {"step": 3, "s": "x"}, "params": params}
    assert (tmp_path / "a.msgpack").read_bytes() == flax.serialization.msgpack_serialize(payload)


@pytest.mark.parametrize("field, value, match", [
    ("num_heads", 0, r"num_heads must be -1 or an integer in \[1, 4096\], got 0"), ("num_heads", -3, "num_heads must be -1 or"),
    ("model_channels", 0, "model_channels must be an integer in"), ("channel_mult", [1, 0], "channel_mult must be"),
    ("attention_resolutions", None, "attention_resolutions must be a list"),
    ("num_classes", 0, "num_classes must be null or a positive integer"),
    ("num_res_blocks", 10 ** 9, "num_res_blocks must be an integer in"), ("model_channels", 48, "not a multiple of the 32"),
    ("use_fp16", "yes", "use_fp16 must be true or false"), ("dropout", 1.5, "dropout must be a number in"),
    ("image_size", True, "image_size must be an integer"),
])
def test_unet_config_names_the_bad_field(field, value, match):
    d = json.loads(variants_config().to_json())
    d[field] = value
    with pytest.raises(ValueError, match=match):
        UNetConfig.from_dict(d)


def test_cli_bad_config_is_one_line(tmp_path, capsys):
    d = dict(json.loads(variants_config().to_json()), num_heads=0)
    assert convert_main([fixture_path("adm_variants.pt"), str(tmp_path / "o.msgpack"), "--config", json.dumps(d)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --config: UNetConfig.num_heads must be") and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_bad_config_stored_in_a_checkpoint(tmp_path):
    import flax.serialization
    from dps_jax.models import checkpoint
    d = json.loads(variants_config().to_json())
    d["channel_mult"] = [0]
    payload = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": json.dumps(d), "params": {}}
    (tmp_path / "c.msgpack").write_bytes(flax.serialization.msgpack_serialize(payload))
    with pytest.raises(CheckpointFormatError, match="bad model config in checkpoint: UNetConfig.channel_mult must be"):
        load_checkpoint(str(tmp_path / "c.msgpack"))
