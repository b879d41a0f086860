"""EDM's network pickles read as data (the parameters and recorded constructor arguments of a pickle EDM's own
code wrote, tests/fixtures/edm_songunet_small.pkl from tools/make_edm_fixtures.py; pickles whose carried source or
globals would run code), and the JAX port of its SongUNet against EDM's forward pass."""

import json
import os
import pickle
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert import edm as edm_convert, edm_pickle
from checkpoints_convert.mapping import random_state_dict
from checkpoints_convert.torch_reader import CheckpointError
from dps_jax import api, operators, prior as prior_lib
from dps_jax.models import edm_unet
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


# --- the JAX port of SongUNet, through the converter and the prior -------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("edm") / "edm.msgpack")
    extra = edm_convert.convert(fixture_path("edm_songunet_small.pkl"), dst)
    assert (extra["process"], extra["mean_type"], extra["sigma_data"]) == ("edm", "edm", 0.5)
    return dst


def test_converted_network_is_edm_denoiser(converted):
    """D(x; sigma) of the converted network, read through prior.x0_at_sigma, is EDM's own (EDMPrecond(SongUNet))."""
    pr = prior_lib.load(converted, clip_denoised=False)
    assert (pr.process, pr.image_shape, pr.size_multiple) == ("edm", (8, 8, 3), 2)
    d = jax.jit(jax.vmap(lambda x, s: prior_lib.x0_at_sigma(pr, x, s)))(FX["x"], FX["sigma"])
    np.testing.assert_allclose(d, FX["denoised"], atol=1e-4 * np.abs(FX["denoised"]).max())   # measured 2e-6


def test_solvers_run_on_the_converted_network(converted):
    pr = prior_lib.load(converted)
    op = operators.build("super_resolution", (8, 8, 3), scale_factor=2)
    y = np.asarray(op(jnp.asarray(FX["x"][0]) * 0.3))
    out = api.sample(pr, op, y, solver="daps", options={"steps": 2}, num_samples=2, sigma=0.05)
    assert out["samples"].shape == (2, 8, 8, 3) and np.all(np.isfinite(out["samples"]))


def test_networks_it_cannot_run_are_refused(monkeypatch, tmp_path):
    net = edm_pickle.load_network(fixture_path("edm_songunet_small.pkl"))
    other = net._replace(inner=net.inner._replace(class_name="UNetMeta"))
    with pytest.raises(CheckpointError, match="'UNetMeta'; the JAX port covers SongUNet"):
        edm_convert.config_of(other)
    labelled = net._replace(inner=net.inner._replace(init_kwargs={**net.inner.init_kwargs, "label_dim": 10}))
    with pytest.raises(CheckpointError, match="class_label 10 is not implemented; expected -1 .. 9"):
        edm_convert.config_of(labelled, class_label=10)
    cut = dict(net.state_dict)
    del cut["model.map_layer0.bias"]
    cut["model.junk"] = np.zeros(2, np.float32)
    monkeypatch.setattr(edm_convert, "load_network", lambda src, key: net._replace(state_dict=cut))
    dst = tmp_path / "x.msgpack"
    with pytest.raises(CheckpointError, match="1 missing keys: map_layer0.bias; 1 unexpected keys: junk"):
        edm_convert.convert("ignored.pkl", str(dst))
    assert not dst.exists()


def described(kwargs, precond="EDMPrecond"):
    """A Network as edm_pickle reads one, from the preconditioning object's constructor arguments."""
    inner = {k: v for k, v in kwargs.items() if k not in ("img_channels", "model_type")}
    return edm_pickle.Network(precond, kwargs, edm_pickle.Network(kwargs.get("model_type", "SongUNet"),
                                                                  {**inner, "in_channels": 3, "out_channels": 3},
                                                                  None, {}), {})


@pytest.mark.parametrize("name", ["ncsnpp_ve", "ddpmpp_vp", "adm_cond"])
def test_ncsnpp_ddpmpp_and_adm_are_edm_forward_pass(name):
    """NCSN++'s layout (Fourier embedding, residual encoder, [1, 3, 3, 1] filter) under VEPrecond, DDPM++ under
    VPPrecond, and the class-conditional ADM (DhariwalUNet: scale-shift blocks, two attention heads) read at one
    class: EDM's own D(x; sigma), from the same random weights built on the port's key table."""
    kwargs = json.loads(str(FX[f"{name}/init_kwargs"]))
    cfg = edm_convert.config_of(described(kwargs, str(FX[f"{name}/precond"])), int(FX[f"{name}/class_label"]))
    shapes = {"model." + k: s for k, s in edm_unet.param_shapes(cfg).items()}
    assert shapes == {k: tuple(v) for k, v in json.loads(str(FX[f"{name}/keys"])).items()}
    weights = random_state_dict(shapes, 21)
    for k in shapes:
        if f"{name}/buffer/{k}" in FX:      # EDM's own filters and Fourier frequencies
            weights[k] = FX[f"{name}/buffer/{k}"]
    params = {k[len("model."):]: jnp.asarray(v) for k, v in weights.items()}
    pr = prior_lib.Prior(params=params, apply=edm_unet.EDMApply(cfg), var_type="fixed_small", clip_denoised=False,
                         **edm_unet.prior_options(cfg))
    d = jax.jit(jax.vmap(lambda x, s: prior_lib.x0_at_sigma(pr, x, s)))(FX["x"], FX["sigma"])
    want = FX[f"{name}/denoised"]
    np.testing.assert_allclose(d, want, atol=1e-4 * np.abs(want).max())


def test_published_parameter_counts():
    """EDM's published networks (CIFAR-10 32 and FFHQ 64, DDPM++ and NCSN++; ImageNet 64 ADM, 295,899,267, the EDM
    paper's 296M), counted on the port's key table, equal the counts of EDM's own constructor (buffers, the filters
    and Fourier frequencies, are not parameters)."""
    counts = json.loads(str(FX["published_parameters"]))
    for name, kwargs in json.loads(str(FX["published_configs"])).items():
        shapes = edm_unet.param_shapes(edm_convert.config_of(described(kwargs)))
        n = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("resample_filter", "freqs")))
        assert n == counts[name], name
