"""Weight files and training states as untrusted input: every msgpack file dps_jax reads goes through one
bounded, typed reader (`models/msgpack_io.py`); each hostile or broken file below is one short line, read in
little time and memory."""

import json
import resource
import time

import flax.serialization
import jax
import msgpack
import numpy as np
import pytest

from dps_jax.models import checkpoint, lpips_net, msgpack_io
from dps_jax.models.checkpoint import SHIPPED_PRIOR, CheckpointFormatError
from dps_jax.train import common as training


def array_record(a, dtype_name=None, shape=None, data=None):
    """flax's array ExtType for `a`, with any field forged."""
    a = np.asarray(a)
    return msgpack.ExtType(1, msgpack.packb((list(shape if shape is not None else a.shape),
                                             dtype_name or a.dtype.name, data if data is not None else a.tobytes())))


def shipped_payload():
    with open(SHIPPED_PRIOR, "rb") as f:
        return flax.serialization.msgpack_restore(f.read())


def write(tmp_path, name, obj) -> str:
    path = tmp_path / name
    path.write_bytes(obj if isinstance(obj, bytes) else msgpack.packb(obj, use_bin_type=True))
    return str(path)


def nested(depth):
    node = {"x": 1}
    for _ in range(depth):
        node = {"x": node}
    return node


def hostile_files(tmp_path):
    p = shipped_payload()
    first = next(iter(p["params"]))
    base = {k: v for k, v in p.items() if k != "params"}
    small = {"format": p["format"], "version": p["version"], "config": p["config"], "extra": {}}
    cases = [
        ("int_keys", {**small, "params": {1: {"kernel": array_record(np.zeros(2, np.float32))}}}, "a key of type int"),
        ("bool_leaf", {**small, "params": {first: {"kernel": True}}}, "params do not match"),
        ("complex_leaf", {**small, "params": {first: msgpack.ExtType(2, msgpack.packb([1.0, 2.0]))}},
         "msgpack extension type 2"),
        ("timestamp_leaf", {**small, "params": {first: msgpack.Timestamp(1, 0)}}, "a value of type Timestamp"),
        ("no_params", base, "holds format, version, config (a JSON string), extra and params"),
        ("not_a_map", [1, 2, 3], "not a dps_jax adm_unet checkpoint"),
        ("lying_array", {**small, "params": {first: array_record(np.zeros(4, np.float32), shape=[1000, 1000])}},
         "backed by 16 bytes, not 4000000"),
        ("int_weights", {**small, "params": {first: array_record(np.zeros(4, np.int8))}}, "params do not match"),
        ("odd_dtype", {**small, "params": {first: array_record(np.zeros(4, np.float32), dtype_name="<U8")}},
         "an array of dtype '<U8'"),
        ("nan_weights", {**small, "params": {first: array_record(np.full(4, np.nan, np.float32))}}, "4 NaN/Inf values"),
        ("deep", {**small, "extra": nested(200), "params": {}}, "nesting deeper than 16"),
        ("long_config", {**small, "config": "x" * 500_000, "params": {}}, "bad model config"),
        # a network of a million blocks per level: refused from its numbers, before any shape is derived
        ("huge_model", {**small, "config": json.dumps({**json.loads(p["config"]), "num_res_blocks": 10 ** 6}),
                        "params": {}}, "UNetConfig.num_res_blocks must be an integer in [1, 32]"),
        ("empty_maps", {**small, "extra": {str(i): {} for i in range(50_000)}, "params": {}}, "do not match"),
        ("garbage", b"\xc1\xc1\xc1 not msgpack", "not readable msgpack"),
        ("empty", b"", "an empty file"),
        ("truncated", open(SHIPPED_PRIOR, "rb").read()[:5000], "a truncated file"),
        # a bin header that declares 4 GB in a file of a few bytes: refused, never allocated
        ("sparse_4gb", b"\x81\xa6params\xc6" + (2 ** 32 - 1).to_bytes(4, "big") + b"\x00" * 8, "a truncated file"),
        ("trailing", msgpack.packb({**small, "params": {}}) + b"\x00", "data after the end of the tree"),
    ]
    return [(write(tmp_path, f"{name}.msgpack", obj), match) for name, obj, match in cases]


def test_hostile_weight_files_are_one_short_line_each(tmp_path):
    start = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path, match in hostile_files(tmp_path):
        with pytest.raises(CheckpointFormatError) as e:
            checkpoint.load_checkpoint(path)
        line = str(e.value)
        # the path is the caller's; what the file adds to the line is bounded
        assert match in line and "\n" not in line and len(line.replace(str(path), "PATH")) < 240, (path, line)
    assert time.perf_counter() - start < 60
    # ru_maxrss is in KiB: reading them all took no more than 200 MiB beyond what the process had
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 * 1024


def test_a_clean_file_reads_and_lists_and_notes_stay_readable(tmp_path):
    model, params, config, extra = checkpoint.load_checkpoint(SHIPPED_PRIOR)
    assert config.image_size == 32 and extra
    p = shipped_payload()
    p["extra"] = {"source": ["a.pt", "b.pt"], "step": 3}                   # lists in notes are fine
    path = write(tmp_path, "ok.msgpack", msgpack.packb(p, default=flax.serialization._msgpack_ext_pack))
    assert checkpoint.load_checkpoint(path).extra["source"] == ["a.pt", "b.pt"]
    with pytest.raises(msgpack_io.WeightFileError, match="a folder, not a file"):
        msgpack_io.read_tree(str(tmp_path))


def test_lpips_heads_must_be_non_negative_and_finite(tmp_path):
    from helpers import random_lpips_file

    path = random_lpips_file(tmp_path / "lpips.msgpack")
    params, config = lpips_net.load(path)
    bad = jax.tree_util.tree_map(np.array, params)
    head = next(k for k in bad if k.startswith("lin"))              # a head: one weight per channel
    bad[head] = -np.abs(bad[head]) - 1
    checkpoint.save_checkpoint(str(tmp_path / "neg.msgpack"), bad, config, fmt=lpips_net.FORMAT)
    with pytest.raises(CheckpointFormatError, match=f"LPIPS head {head} has negative weights"):
        lpips_net.load(str(tmp_path / "neg.msgpack"))
    bad[head] = np.full_like(bad[head], np.inf)
    checkpoint.save_checkpoint(str(tmp_path / "inf.msgpack"), bad, config, fmt=lpips_net.FORMAT)
    with pytest.raises(CheckpointFormatError, match="NaN/Inf values"):
        lpips_net.load(str(tmp_path / "inf.msgpack"))


def test_bad_training_states_are_refused_saying_what_to_delete(tmp_path):
    import jax.numpy as jnp

    template = ({"w": jax.ShapeDtypeStruct((3,), jnp.float32)}, jax.ShapeDtypeStruct((), jnp.int32))
    good = ({"w": np.ones(3, np.float32)}, np.int32(5))
    path = tmp_path / "state.msgpack"
    path.write_bytes(flax.serialization.to_bytes(good))
    restored = training.restore_state(str(path), template)
    assert int(restored[1]) == 5 and np.allclose(restored[0]["w"], 1)
    cases = {
        "empty": b"",
        "truncated": flax.serialization.to_bytes(good)[:10],
        "garbage": b"\x00\xff garbage",
        "nan": flax.serialization.to_bytes(({"w": np.full(3, np.nan, np.float32)}, np.int32(5))),
        "step": flax.serialization.to_bytes(({"w": np.ones(3, np.float32)}, np.int64(2 ** 40))),
        "other_model": flax.serialization.to_bytes(({"w": np.ones(4, np.float32)}, np.int32(5))),
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.msgpack"
        p.write_bytes(data)
        with pytest.raises(ValueError) as e:
            training.restore_state(str(p), template)
        line = str(e.value)
        assert f"delete {p} to start afresh" in line and "\n" not in line, (name, line)
        assert len(line.replace(str(p), "PATH")) < 320, (name, line)
    (tmp_path / "dir.msgpack").mkdir()
    with pytest.raises(ValueError, match="a folder, not a file"):
        training.restore_state(str(tmp_path / "dir.msgpack"), template)


def test_every_weight_loader_refuses_with_the_one_error_type(tmp_path):
    from dps_jax.models import classifier, dncnn, kernel_wizard, stylegan2, vgg19

    garbage = write(tmp_path, "garbage.msgpack", b"\xc1\xc1 not msgpack")
    forged = write(tmp_path, "forged.msgpack", {"params": {"w": array_record(np.zeros(2, np.float32),
                                                                            dtype_name="float\xff6")}})
    for load in (checkpoint.load_checkpoint, classifier.load, kernel_wizard.load, dncnn.load, stylegan2.load,
                 vgg19.load):
        for path in (garbage, forged):
            with pytest.raises(msgpack_io.WeightFileError) as e:
                load(path)
            line = str(e.value)
            # a forged dtype name is echoed as ASCII, so the line prints on any terminal
            assert path in line and line.isascii() and "\n" not in line, (load, line)


def test_seeded_corruptions_of_a_shipped_weight_file_never_escape():
    """The fuzz benchmark's cases (byte and structural edits, benchmarks/fuzz_weights.py) on the shipped DnCNN
    file: each is read or refused in one WeightFileError line, never another exception (the full run over
    every shipped file: docs/checkpoints.md)."""
    from benchmarks import fuzz_weights

    r = fuzz_weights.fuzz("dncnn_fmnist32.msgpack", 60, seed=0, trace_memory=False)
    assert r["escaped"] == 0, r["examples"]
    assert r["read"] + r["refused"] == 60 and r["refused"] >= 20 and 0 < r["max_error_chars"] < 400
