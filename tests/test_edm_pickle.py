"""EDM's network pickles read as data: the parameters and recorded constructor arguments of a pickle EDM's own
code wrote (tests/fixtures/edm_songunet_small.pkl, tools/make_edm_fixtures.py), and pickles whose carried source
or globals would run code."""

import json
import os
import pickle
import sys
import types

import numpy as np
import pytest

from checkpoints_convert import edm_pickle
from checkpoints_convert.mapping import random_state_dict
from checkpoints_convert.torch_reader import CheckpointError
from helpers import fixture_path, load_npz

FX = load_npz("edm_songunet_small.npz")


def test_fixture_network_is_read_as_data():
    net = edm_pickle.load_network(fixture_path("edm_songunet_small.pkl"))
    kwargs = json.loads(str(FX["init_kwargs"]))
    assert net.class_name == "EDMPrecond" and net.init_kwargs == kwargs
    assert net.inner.class_name == "SongUNet"
    assert net.inner.init_kwargs["model_channels"] == 8 and net.inner.init_kwargs["in_channels"] == 3
    shapes = {k: tuple(v) for k, v in json.loads(str(FX["keys"])).items()}
    assert {k: a.shape for k, a in net.state_dict.items()} == shapes
    want = random_state_dict(shapes, 21)
    filters = json.loads(str(FX["resample_filter_keys"]))
    assert filters
    for k, a in net.state_dict.items():
        if k in filters:                   # the [1, 1] filter's outer product, normalised: EDM's own buffer
            np.testing.assert_array_equal(a, np.full(shapes[k], 0.25, np.float32))
        else:
            np.testing.assert_array_equal(a, want[k])


def _edm_style_pickle(path, module_src, state):
    """A pickle laid out as EDM's persistence writes one: a call of torch_utils.persistence's
    _reconstruct_persistent_obj on a record that carries `module_src`, which EDM's unpickling would exec."""
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):       # only named here; never called by the reader under test
        raise AssertionError("called")

    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class Net:
        def __reduce__(self):
            return (_reconstruct_persistent_obj, (dict(type="class", version=6, module_src=module_src,
                                                       class_name="Net", state=state),))

    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules["torch_utils"] = types.ModuleType("torch_utils")
    sys.modules["torch_utils.persistence"] = mod
    try:
        with open(path, "wb") as f:
            pickle.dump({"ema": Net()}, f, protocol=4)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_carried_source_is_never_run(tmp_path):
    marker = tmp_path / "marker"
    path = str(tmp_path / "evil.pkl")
    src = f"import os\nos.system('touch {marker}')\nclass Net:\n    pass\n"
    _edm_style_pickle(path, src, {"_init_kwargs": {"img_resolution": 8}, "_parameters": {}, "_modules": {}})
    assert b"os.system" in open(path, "rb").read()
    net = edm_pickle.load_network(path)
    assert (net.class_name, net.init_kwargs, net.state_dict) == ("Net", {"img_resolution": 8}, {})
    assert not marker.exists()


def test_other_globals_are_refused_by_name(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = str(tmp_path / "evil2.pkl")
    _edm_style_pickle(path, "", {"_init_kwargs": {}, "_parameters": {}, "_modules": {"x": Payload()}})
    with pytest.raises(CheckpointError, match="refusing to load global '(posix|nt).system'"):
        edm_pickle.load_network(path)
    assert not marker.exists()


def test_wrong_or_truncated_files_fail_in_one_line(tmp_path):
    data = open(fixture_path("edm_songunet_small.pkl"), "rb").read()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        edm_pickle.load_network(str(cut))
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="no entry 'net'"):
        edm_pickle.load_network(fixture_path("edm_songunet_small.pkl"), key="net")
