"""checkpoints_convert: a torch-free, code-execution-free reader, and the CLI round trip."""

import json
import os
import subprocess
import sys

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
    assert "missing key" in msg and "checkpoint has shape" in msg and "the model expects" in msg
    full = load_state_dict(fixture_path("adm_variants.pt"))
    (missing,) = sorted(set(full) - set(state))
    (wrong,) = [k for k in state if state[k].shape != full[k].shape]
    assert f"missing key {missing}" in msg and f"{wrong}: checkpoint has shape {state[wrong].shape}" in msg
    out = tmp_path / "out.msgpack"
    assert convert_main([fixture_path("hostile_wrong_shapes.pt"), str(out), "--config",
                         variants_config().to_json()]) == 1
    assert not any(tmp_path.iterdir())


def test_unexpected_keys_are_listed():
    state = dict(load_state_dict(fixture_path("adm_variants.pt")))
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match="unexpected key extra.weight"):
        convert_state_dict(state, variants_config())


def test_missing_file():
    with pytest.raises(CheckpointError, match="checkpoint file not found: /nonexistent.pt"):
        load_state_dict("/nonexistent.pt")


def test_cli_round_trip(tmp_path):
    """Convert with the CLI (a separate process, as a user runs it), load in one call, run the model."""
    ref = load_npz("adm_variants.npz")
    cfg_file = tmp_path / "variants.json"
    cfg_file.write_text(str(ref["config"]))
    out = tmp_path / "variants.msgpack"
    proc = subprocess.run([sys.executable, "-m", "checkpoints_convert", fixture_path("adm_variants.pt"), str(out),
                           "--config", str(cfg_file)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    model, params, cfg, extra = load_checkpoint(str(out))
    assert cfg == variants_config() and extra["source"] == fixture_path("adm_variants.pt")
    y = model.apply({"params": params}, jnp.asarray(nhwc(ref["x"])), jnp.asarray(ref["t"]), jnp.asarray(ref["y"]))
    assert np.abs(np.asarray(y) - nhwc(ref["out"])).max() <= 1e-4


def test_cli_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "checkpoints_convert", fixture_path("hostile_exploit.pt"),
                           str(tmp_path / "x.msgpack"), "--model", "ffhq256"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: refusing to load global 'posix.system'")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir()) and not os.path.exists(MARKER)


def test_corrupt_dps_jax_checkpoint(tmp_path):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x00not msgpack at all")
    with pytest.raises(CheckpointFormatError, match="bad.msgpack"):
        load_checkpoint(str(bad))
    with pytest.raises(CheckpointFormatError, match="checkpoint file not found"):
        load_checkpoint(str(tmp_path / "missing.msgpack"))
