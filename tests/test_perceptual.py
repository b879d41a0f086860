"""LPIPS and FID against their reference packages (fixtures/metrics_ref.npz from tools/make_metric_fixtures.py:
`lpips` 0.1.4 and `pytorch-fid` 0.3.0 on random network weights, the real v0.1 LPIPS heads), the Frechet
distance and KID against closed forms, the converter's refusals, and the shipped Fashion-MNIST classifier."""

import os

import numpy as np
import pytest

from checkpoints_convert import torch_writer as torch_files
from checkpoints_convert import metrics as convert_metrics
from checkpoints_convert.mapping import random_state_dict
from dps_jax import data
from dps_jax.metrics import fid, lpips
from dps_jax.models import classifier, lpips_net
from dps_jax.models.checkpoint import SHIPPED_PRIOR, CheckpointFormatError
from helpers import FMNIST_SAMPLE, fixture_path, load_npz


@pytest.fixture(scope="module")
def ref():
    return load_npz("metrics_ref.npz")


def nhwc(u8, lo=-1.0):
    """uint8 NCHW fixture images as float NHWC in [lo, 1]."""
    return u8.astype(np.float32).transpose(0, 2, 3, 1) / (255.0 / (1 - lo)) + lo


def write_lpips(tmp_path, net, seed):
    """A converted LPIPS file from a torch-format trunk file (random weights by the fixture rule, with the
    classifier weights a real torchvision file also holds) and the lpips package's real heads file."""
    config = lpips_net.LPIPSConfig(net)
    shapes = {k: v for k, v in convert_metrics.lpips_torch_shapes(config).items() if k.startswith("features.")}
    trunk = random_state_dict(shapes, seed)
    trunk["classifier.1.weight"] = np.ones((4, 3), np.float32)
    src = torch_files.write_arrays(str(tmp_path / f"{net}_trunk.pth"), trunk)
    dst = str(tmp_path / f"lpips_{net}.msgpack")
    assert convert_metrics.main(["lpips", src, fixture_path(f"lpips_v0.1_{net}.pth"), dst, "--net", net]) == 0
    return dst


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_the_lpips_package(ref, tmp_path, net):
    metric = lpips.load(write_lpips(tmp_path, net, int(ref["seed"])), batch=2)    # 3 pairs: a padded batch
    for size in (64, 32) if net == "alex" else (32,):        # VGG at one size: the suite's time
        x, y = nhwc(ref[f"lpips_{net}_{size}_x"]), nhwc(ref[f"lpips_{net}_{size}_y"])
        np.testing.assert_allclose(metric(x, y), ref[f"lpips_{net}_{size}"], rtol=1e-5, atol=1e-7)
        assert metric(x, x) == pytest.approx([0, 0, 0], abs=1e-7)
        np.testing.assert_allclose(metric(y, x), metric(x, y), rtol=1e-6)
    if net == "alex":          # grey images are the wrapper's, whatever the trunk (a second compile of VGG saved)
        grey = x[..., :1]
        np.testing.assert_allclose(metric(grey, y[..., :1]),
                                   metric(np.repeat(grey, 3, -1), np.repeat(y[..., :1], 3, -1)), rtol=1e-6)


def test_fid_inception_matches_pytorch_fid(ref, tmp_path):
    shapes = convert_metrics.inception_torch_shapes()
    state = random_state_dict(shapes, int(ref["seed"]))
    # What the real file holds besides: the logits layer and (newer torch) batch-norm counters.
    state.update({"fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008, np.float32),
                  "Conv2d_1a_3x3.bn.num_batches_tracked": np.zeros((), np.float32)})
    src = torch_files.write_arrays(str(tmp_path / "pt_inception.pth"), state)
    dst = str(tmp_path / "fid_inception.msgpack")
    assert convert_metrics.main(["fid", src, dst]) == 0
    net = fid.load_features(dst)
    features = net(nhwc(ref["fid_40_x"]))                 # resized to 299, pytorch-fid's default path
    want = ref["fid_40_features"]
    assert features.shape == (2, 2048)
    np.testing.assert_allclose(features, want, atol=1e-4 * np.abs(want).max())


def frechet_sets(seed):
    """The fixture script's two feature sets."""
    rng = np.random.default_rng(seed + 2)
    a = rng.standard_normal((300, 64)) @ (np.eye(64) + 0.3 * rng.standard_normal((64, 64)))
    b = 0.5 + rng.standard_normal((250, 64)) @ (np.eye(64) + 0.3 * rng.standard_normal((64, 64)))
    return a, b


def test_frechet_distance_matches_pytorch_fid_and_closed_forms(ref):
    a, b = frechet_sets(int(ref["seed"]))
    assert fid.fid(a, b) == pytest.approx(float(ref["frechet"]), rel=1e-6)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    d1, d2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = (q * d1) @ q.T, (q * d2) @ q.T                     # commuting: tr sqrt(S1 S2) = sum sqrt(d1 d2)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-10)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-10)
    # Fewer samples than features: singular covariances, still finite, and 0 for identical sets.
    f = rng.standard_normal((20, 64))
    assert fid.fid(f, f) == pytest.approx(0, abs=1e-8)
    assert np.isfinite(fid.fid(f, rng.standard_normal((20, 64)))) and fid.fid(f, f + 1) == pytest.approx(64, rel=1e-8)
    with pytest.raises(ValueError, match="expected"):
        fid.frechet_distance(mu1, s1, mu2[:5], s2)
    with pytest.raises(ValueError, match="N >= 2"):
        fid.statistics(f[:1])


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)) + 0.5
    k = lambda x, y: (x @ y / 3 + 1) ** 3
    want = (sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / 42
            + sum(k(b[i], b[j]) for i in range(7) for j in range(7) if i != j) / 42
            - 2 * sum(k(a[i], b[j]) for i in range(7) for j in range(7)) / 49)
    mean, std = fid.kid(a, b)                   # both sets of one subset's size: one subset, all samples
    assert mean == pytest.approx(want, rel=1e-12) and std == 0
    same = [fid.kid(rng.standard_normal((200, 8)), rng.standard_normal((200, 8)))[0] for _ in range(20)]
    assert abs(np.mean(same)) < 0.01                          # unbiased: zero on average for one distribution
    shifted = fid.kid(rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) + 0.5, subsets=10, subset_size=100)
    assert shifted[0] > 0.1 and shifted[1] > 0
    with pytest.raises(ValueError, match="at least 2"):
        fid.kid(a[:1], b)


def test_converter_refuses_bad_files(tmp_path, capsys):
    heads = fixture_path("lpips_v0.1_alex.pth")
    out = tmp_path / "out.msgpack"
    # The files in the wrong order; a hostile pickle; the wrong net for the trunk; negative heads.
    assert convert_metrics.main(["lpips", heads, heads, str(out)]) == 1
    assert "both hold" in capsys.readouterr().err
    assert convert_metrics.main(["lpips", fixture_path("hostile_exploit.pt"), heads, str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    alex = random_state_dict({k: v for k, v in convert_metrics.lpips_torch_shapes(lpips_net.LPIPSConfig("alex")).items()
                              if k.startswith("features.")}, 0)
    trunk = torch_files.write_arrays(str(tmp_path / "alex.pth"), alex)
    assert convert_metrics.main(["lpips", trunk, fixture_path("lpips_v0.1_vgg.pth"), str(out), "--net", "vgg"]) == 1
    assert "missing keys" in capsys.readouterr().err
    negative = torch_files.write_arrays(str(tmp_path / "neg.pth"), {
        f"lin{l}.model.1.weight": -np.ones((1, c, 1, 1), np.float32)
        for l, c in enumerate(lpips_net.LPIPSConfig("alex").channels)})
    assert convert_metrics.main(["lpips", trunk, negative, str(out)]) == 1
    assert "negative weights" in capsys.readouterr().err
    assert convert_metrics.main(["fid", trunk, str(out)]) == 1
    assert "does not match" in capsys.readouterr().err
    state = random_state_dict(convert_metrics.inception_torch_shapes(), 0)
    state["Mixed_6b.branch1x1.bn.running_var"][3] = -1.0
    bad_inception = torch_files.write_arrays(str(tmp_path / "inception.pth"), state)
    assert convert_metrics.main(["fid", bad_inception, str(out)]) == 1
    assert "1 batch-norm running variances are negative, first Mixed_6b.branch1x1.bn.running_var" in \
        capsys.readouterr().err
    assert convert_metrics.main(["fid", trunk, trunk]) == 1          # never overwrites its input
    assert not out.exists() and os.path.getsize(trunk) > 0


def test_missing_or_wrong_weight_files_are_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoints_convert.metrics lpips"):
        lpips.load(str(tmp_path / "nope.msgpack"))
    with pytest.raises(FileNotFoundError, match="checkpoints_convert.metrics fid"):
        fid.load_features(str(tmp_path / "nope.msgpack"))
    with pytest.raises(CheckpointFormatError, match="not a feature network"):
        fid.load_features(SHIPPED_PRIOR)
    with pytest.raises(CheckpointFormatError, match="not a dps_jax lpips"):
        lpips_net.load(SHIPPED_PRIOR)


def test_shipped_classifier_features_separate_real_images_from_noise():
    params, config = classifier.load()
    net = fid.load_features()                         # "" = the shipped classifier: FID-FMNIST
    test = data.fashion_mnist("test", FMNIST_SAMPLE)[:1000]
    labels = data.fashion_mnist_labels("test", FMNIST_SAMPLE)[:1000]
    logits = classifier.Classifier(config).apply({"params": params}, test)
    assert np.mean(np.argmax(logits, -1) == labels) > 0.9
    f = net(test)
    assert f.shape == (1000, config.features)
    real = fid.fid(f[:500], f[500:])
    noisy = fid.fid(f[:500], net(np.clip(test[500:] + 0.3 * np.random.default_rng(0).standard_normal(
        test[500:].shape), -1, 1)))
    assert noisy > 5 * real


def test_classifier_config_refuses_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        classifier.ClassifierConfig(image_size=36)
    with pytest.raises(ValueError, match="widths"):
        classifier.ClassifierConfig(widths=(32, "a"))
    with pytest.raises(ValueError, match="unknown classifier config keys"):
        classifier.ClassifierConfig.from_dict({"depth": 3})
    with pytest.raises(ValueError, match="net must be"):
        lpips_net.LPIPSConfig("squeeze")
