"""The torch reader under attack: crafted files (made here, by torch_files) are refused in one line or
read correctly, within memory and time bounded by the file's size; seeded corruptions never escape."""

import os
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from checkpoints_convert import torch_writer as tf
from checkpoints_convert import CheckpointError, load_state_dict
from helpers import fixture_path
from benchmarks import fuzz_reader

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 6)).astype(np.float32)
FLOATS = W.tobytes()        # one storage of 24 float32


def crafted(tmp_path, entries, storages=None, **kw):
    return tf.write(tmp_path / "x.pt", tf.ordered_dict(entries), {"0": FLOATS} if storages is None else storages, **kw)


def refused(path, match):
    with pytest.raises(CheckpointError, match=match) as err:
        load_state_dict(path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    return str(err.value)


def test_valid_views_are_read_exactly(tmp_path):
    """Transposed, offset, zero-stride (a small broadcast) and shared-storage views give numpy's answers."""
    flat = W.ravel()
    path = crafted(tmp_path, {
        "plain": tf.tensor("0", 24, (4, 6)),
        "transposed": tf.tensor("0", 24, (6, 4), (1, 6)),
        "offset": tf.tensor("0", 24, (2, 3), (6, 1), offset=13),
        "broadcast": tf.tensor("0", 24, (5, 6), (0, 1)),
        "scalar": tf.tensor("0", 24, (), (), offset=23),
        "empty": tf.tensor("0", 24, (0, 7)),
    })
    got = load_state_dict(path)
    np.testing.assert_array_equal(got["plain"], W)
    np.testing.assert_array_equal(got["transposed"], W.T)
    np.testing.assert_array_equal(got["offset"], np.stack([flat[13:16], flat[19:22]]))
    np.testing.assert_array_equal(got["broadcast"], np.broadcast_to(flat[:6], (5, 6)))
    assert got["scalar"].shape == () and got["scalar"] == flat[23]
    assert got["empty"].shape == (0, 7)


@pytest.mark.parametrize("view, match", [
    (dict(size=(4, 6), stride=(-6, 1), offset=18), "negative offset, size or stride"),
    (dict(size=(4, 6), offset=-6), "negative offset, size or stride"),
    (dict(size=(4, 6), offset=1), "reaches element 24 of storage '0', which has 24"),
    (dict(size=(4, 7)), "reaches element 27"),
    (dict(size=(2 ** 62, 2 ** 62), stride=(0, 0)), "more than a file of this size can back"),
    (dict(size=(3 * 2 ** 28,), stride=(0,)), "more than a file of this size can back"),   # 3 GiB of zero stride
    (dict(size=(2 ** 200,), stride=(0,)), r"shape \('~2\^201',\)"),
    (dict(size=(2 ** 62, 0)), "a size above 2\\^40"),          # empty, yet a shape numpy cannot make
])
def test_out_of_bounds_and_oversized_views_are_refused(tmp_path, view, match):
    refused(crafted(tmp_path, {"w": tf.tensor("0", 24, **view)}), match)


def test_storage_shorter_than_declared(tmp_path):
    refused(crafted(tmp_path, {"w": tf.tensor("0", 10 ** 9, (4, 6))}), "holds 96 bytes, its tensors declare 4000000000")


def test_many_views_of_one_storage_are_bounded(tmp_path):
    """A storage is read once; 2,000 full views of a 4 KiB storage declare 8 MiB from a ~280 KiB file."""
    big = np.zeros(1024, np.float32).tobytes()
    path = crafted(tmp_path, {f"k{n}": tf.tensor("0", 1024, (1024,)) for n in range(2000)}, {"0": big})
    assert os.path.getsize(path) < 300_000
    refused(path, "more than a file of this size can back")
    few = load_state_dict(crafted(tmp_path, {f"k{n}": tf.tensor("0", 24, (24,)) for n in range(5)}))
    # contiguous views share the one read of the storage: no copies
    assert len({v.__array_interface__["data"][0] for v in few.values()}) == 1


def test_decompression_is_bounded(tmp_path):
    """A 100 MB storage deflated to ~100 KB is refused from its header, before it is inflated."""
    zeros = bytes(100_000_000)
    path = crafted(tmp_path, {"w": tf.tensor("0", 25_000_000, (25_000_000,))}, {"0": zeros},
                   compression=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 200_000
    tracemalloc.start()
    refused(path, "zip member 'archive/data/0' would take 100000000 bytes")
    assert tracemalloc.get_traced_memory()[1] < 20_000_000
    tracemalloc.stop()


def test_zip_member_problems_are_one_line(tmp_path):
    path = crafted(tmp_path, {"w": tf.tensor("0", 24, (4, 6))})
    data = bytearray(open(path, "rb").read())
    at = data.index(b"little")            # the byteorder member's bytes: its CRC no longer matches
    data[at] ^= 1
    bad = tmp_path / "crc.pt"
    bad.write_bytes(bytes(data))
    refused(str(bad), "truncated or corrupt.*CRC")
    for flag, method, match in [(1, 0, "is encrypted"), (0, 14, "compression method 14")]:
        data = bytearray(open(path, "rb").read())
        for sig in (b"PK\x03\x04", b"PK\x01\x02"):    # local and central headers of every member
            start = 0
            while (at := data.find(sig, start)) >= 0:
                flags_at = at + (6 if sig == b"PK\x03\x04" else 8)
                data[flags_at] |= flag
                struct.pack_into("<H", data, flags_at + 2, method)
                start = at + 4
        bad.write_bytes(bytes(data))
        refused(str(bad), match)


def test_pickle_machine_bounds(tmp_path):
    """A memo index of 2^27 costs one entry; a dict graph sharing children 40 levels deep (2^40 paths),
    a self-referencing dict and 200,000 nested lists are refused at once, without recursion."""
    memo = tf.ordered_dict({"w": tf.tensor("0", 24, (4, 6)) + b"r" + struct.pack("<I", 2 ** 27)})
    tracemalloc.start()
    np.testing.assert_array_equal(load_state_dict(tf.write(tmp_path / "m.pt", memo, {"0": FLOATS}))["w"], W)
    assert tracemalloc.get_traced_memory()[1] < 5_000_000
    tracemalloc.stop()
    shared = b"}q\x000"                  # level 0, then each level {'a': prev, 'b': prev} memoised at its depth
    for d in range(1, 41):
        shared += b"}q" + bytes([d]) + b"(" + tf.s("a") + b"h" + bytes([d - 1]) + tf.s("b") + b"h" + bytes([d - 1]) + b"u"
        shared += b"0" if d < 40 else b""
    graph = tf.ordered_dict({"w": tf.tensor("0", 24, (4, 6)), "g": shared})
    selfref = b"}q\x00(" + tf.s("w") + tf.tensor("0", 24, (4, 6)) + tf.s("me") + b"h\x00u"
    nested = b"(" * 200_000 + b"l" * 200_000
    for name, ops, match in [("g", graph, "entries that are not tensors: 'g'"),
                             ("s", selfref, "entries that are not tensors: 'me'"),
                             ("n", nested, "expected a state_dict .* found a list")]:
        start = time.perf_counter()
        refused(tf.write(tmp_path / f"{name}.pt", ops, {"0": FLOATS}), match)
        assert time.perf_counter() - start < 5


@pytest.mark.parametrize("ops, match", [
    (tf.ordered_dict({"w": tf.tensor("0", 24, (4, 6))})[:-1] + tf.i(7) + tf.tensor("0", 24, (4, 6)) + b"u",
     "keys that are not strings: int"),
    (b"}(" + tf.tup([tf.s("a")]) + tf.tensor("0", 24, (4, 6)) + b"u", "a dict key or set item of type tuple"),
    (tf.glob("posix", "system") + tf.tup([tf.s("true")]) + b"R", "refusing to load global 'posix.system'"),
    (tf.glob("builtins", "eval"), "refusing to load global 'builtins.eval'"),
    (tf.s("x") + tf.tup([]) + b"R", "REDUCE of a str"),
    (b"\x8f(]\x90", "a dict key or set item of type list"),
    (tf.s("x") + tf.tup([]) + b"\x81", "NEWOBJ of a str"),
    (b"\x92", r"unsupported pickle opcode b'\\x92'"),
    (b"}" + b"h\x05", "memo entry 5, which was never stored"),
    (b"X\xff\xff\xff\x7f", "needs 2147483647 bytes"),
    (tf.tensor("0", 24, (4, 6)), "expected a state_dict .* found a _TensorRef"),
    (tf.ordered_dict({"w": tf.tensor("0", 24, (4, 6), (6, 1, 1))}), "1 sizes|2 sizes and 3 strides"),
    # Python 2 era files build the OrderedDict from a list of pairs (read: the lpips heads); anything else not.
    (tf.glob("collections", "OrderedDict") + tf.tup([b"](" + tf.tup([tf.i(1), tf.tensor("0", 24, (4, 6))]) + b"e"])
     + b"R", "OrderedDict rebuilt from arguments other than one list of \\(name, value\\) pairs"),
])
def test_hostile_pickles_are_refused(tmp_path, ops, match):
    refused(tf.write(tmp_path / "x.pt", ops, {"0": FLOATS}), match)


def test_wrappers_and_prefixes(tmp_path):
    arrays = {"a.weight": W, "b.bias": W[0]}
    for wrapper in ("state_dict", "model", "ema"):
        got = load_state_dict(tf.write_arrays(tmp_path / f"{wrapper}.pt", arrays,
                                              wrap=lambda ops: tf.plain_dict({wrapper: ops, "step": tf.i(7)})))
        assert sorted(got) == ["a.weight", "b.bias"]
    both = tf.write_arrays(tmp_path / "both.pt", arrays, wrap=lambda ops: tf.plain_dict({"model": ops, "ema": ops}))
    refused(both, r"several state_dicts \(model, ema\): choose one with --key model")
    np.testing.assert_array_equal(load_state_dict(both, key="ema")["a.weight"], W)
    refused(tf.write_arrays(tmp_path / "odd.pt", arrays, wrap=lambda ops: tf.plain_dict({"weights": ops, "step": tf.i(1)})),
            "entries that are not tensors: 'weights', 'step' .*under --key weights")
    ddp = tf.write(tmp_path / "ddp.pt", tf.ordered_dict({"module.a.weight": tf.tensor("0", 24, (4, 6))}), {"0": FLOATS})
    assert list(load_state_dict(ddp)) == ["a.weight"]
    custom = tf.write(tmp_path / "c.pt", tf.ordered_dict({"net.a.weight": tf.tensor("0", 24, (4, 6))}), {"0": FLOATS})
    assert list(load_state_dict(custom, strip_prefix="net.")) == ["a.weight"]
    with pytest.raises(CheckpointError, match="has no entry 'nope'; its entries: 'a.weight', 'b.bias'"):
        load_state_dict(tf.write_arrays(tmp_path / "k.pt", arrays), key="nope")


def test_not_a_regular_file(tmp_path):
    fifo = tmp_path / "x.pt"
    os.mkfifo(fifo)
    refused(str(fifo), "not a regular file")


def test_seeded_corruptions_never_escape():
    """200 byte edits, truncations and member swaps of a valid zip and a valid legacy checkpoint: each is
    read or refused with a CheckpointError, none raises anything else. (The long run, with memory traced:
    benchmarks/fuzz_reader.py; the bombs above check memory here.)"""
    for name in ("adm_variants_fp16.pt", "adm_variants_legacy.pt"):
        counts = fuzz_reader.fuzz(fixture_path(name), cases=100, seed=0, trace_memory=False)
        assert counts["escaped"] == 0, counts["examples"]
        assert counts["refused"] > 25 and counts["read"] + counts["refused"] == 100
        assert counts["max_seconds"] < 5
