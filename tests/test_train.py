"""Training: a few steps on a folder of images, a checkpoint, a resume, and a loadable EMA export."""

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from dps_jax.train import prior as train
from dps_jax.models.checkpoint import load_checkpoint
from helpers import FMNIST_SAMPLE, random_image_folder


def tiny_config(root, num_steps):
    return ConfigDict(dict(
        seed=0,
        data=dict(name="folder", root=str(root), image_size=8, channels=1),
        model=dict(image_size=8, in_channels=1, model_channels=32, out_channels=1, num_res_blocks=1,
                   attention_resolutions=(), channel_mult=(1,), num_heads=2, dropout=0.1,
                   use_scale_shift_norm=True, resblock_updown=True),
        diffusion=dict(schedule="linear", num_timesteps=100),
        optim=dict(lr=1e-3, warmup_steps=1, weight_decay=0.0, grad_clip=1.0, ema_decay=0.5),
        batch_size=4, num_steps=num_steps, log_every=1, checkpoint_minutes=0.0))


def test_train_checkpoint_resume_and_export(tmp_path, capsys):
    # the resumed run loads the first run's compiled step from the suite's compilation cache (conftest.py)
    root = random_image_folder(tmp_path / "images")
    work = tmp_path / "work"
    train.train(tiny_config(root, 2), str(work))
    out = capsys.readouterr().out
    assert "step 2/2 loss" in out and "done: 2 steps" in out
    first = load_checkpoint(str(work / "ema.msgpack"))
    assert first.extra["step"] == 2 and first.extra["var_type"] == "fixed_large"

    train.train(tiny_config(root, 3), str(work))
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 2" in out and "done: 3 steps" in out
    model, params, cfg, extra = load_checkpoint(str(work / "ema.msgpack"))
    assert cfg.image_size == 8 and extra["step"] == 3
    leaves = lambda t: np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(t)])
    assert not np.allclose(leaves(first.params), leaves(params))          # the EMA moved

    other = tiny_config(root, 4)
    other.model.model_channels = 64                  # resuming into another model: an error, not a crash
    with pytest.raises(ValueError, match="state.msgpack does not match the configured model and optimiser"):
        train.train(other, str(work))


def test_classifier_trainer_resumes_and_reports_its_figures(tmp_path, capsys):
    import json

    from dps_jax.train import classifier as train_classifier
    from dps_jax.metrics import fid

    cfg = lambda n: ConfigDict(dict(
        seed=0, data=dict(name="fashion_mnist", root=FMNIST_SAMPLE, image_size=32, channels=1),
        model=dict(in_channels=1, image_size=32, widths=(4,), features=8, classes=10),
        optim=dict(lr=1e-2, weight_decay=0.0), batch_size=16, num_steps=n, log_every=1, checkpoint_minutes=0.0,
        floor_images=2000))
    work = tmp_path / "work"
    train_classifier.train(cfg(2), str(work))
    train_classifier.train(cfg(3), str(work))
    out = capsys.readouterr().out
    assert "step 2/2 cross-entropy" in out and "resumed from" in out and "step 3/3" in out
    figures = json.load(open(work / "eval.json"))
    assert 0.1 < figures["test_accuracy"] <= 1 and figures["fid_test_vs_train"] > 0
    net = fid.load_features(str(work / "classifier.msgpack"))
    assert net(np.zeros((3, 32, 32, 1))).shape == (3, 8)
    # Augmentation flips and shifts by at most one pixel: a black image stays black, a row stays a row.
    rng = np.random.default_rng(0)
    x = -np.ones((2, 32, 32, 1), np.float32)
    x[:, 10] = 1
    y = train_classifier.augment(rng, x)
    assert y.shape == x.shape and np.array_equal(np.sort(np.unique(y)), [-1, 1])
    assert all(np.flatnonzero(y[i, :, 5, 0] > 0).tolist() in ([9], [10], [11]) for i in range(2))


def test_stylegan2_trainer_resumes_and_exports_a_loadable_generator(tmp_path, capsys):
    """A step (with R1, as every step here: one compiled program), a resume to two, the exported average loads
    as a generator (the file the BKS solver reads); eval.json has its FID-FMNIST."""
    import json

    from dps_jax.models import stylegan2
    from dps_jax.train import stylegan2 as train_sg

    cfg = lambda n, eval_images: ConfigDict(dict(
        seed=0, data=dict(name="fashion_mnist", root=FMNIST_SAMPLE, image_size=32, channels=1),
        model=dict(size=32, style_dim=8, n_mlp=1, channel_base=64, channel_max=4, image_channels=1, lr_mlp=0.01),
        optim=dict(lr=0.002), r1_gamma=0.01, r1_every=1, ema_kimg=0.01, batch_size=4, num_steps=n, log_every=1,
        eval_images=eval_images, checkpoint_minutes=0.0))
    work = tmp_path / "work"
    train_sg.train(cfg(1, 0), str(work))
    assert not (work / "eval.json").exists()                  # eval_images 0: no evaluation
    train_sg.train(cfg(2, 8), str(work))
    out = capsys.readouterr().out
    assert "step 1/1 d " in out and "resumed from" in out and "at step 1" in out and "step 2/2" in out
    params, config = stylegan2.load(str(work / "stylegan2.msgpack"))
    assert config.size == 32 and config.image_channels == 1 and (config.width(16), config.width(32)) == (4, 2)
    image = stylegan2.generate(params, config, np.ones((2, 8), np.float32))
    assert image.shape == (2, 32, 32, 1) and np.isfinite(np.asarray(image)).all()
    assert np.isfinite(json.load(open(work / "eval.json"))["fid_fmnist"])


def test_minibatch_stddev_closed_form():
    """The extra channel: the std over groups of 4 of each feature (sample n in group n % (N / 4)), averaged."""
    from dps_jax.train import stylegan2 as train_sg

    x = np.zeros((8, 2, 2, 3), np.float32)
    x[:, :, :, 0] = np.array([0, 10, 2, 10, 4, 10, 6, 10])[:, None, None]    # odd samples constant
    out = np.asarray(train_sg.minibatch_stddev(jax.numpy.asarray(x)))
    assert out.shape == (8, 2, 2, 4)
    even = np.sqrt(np.var([0, 2, 4, 6]) + 1e-8) / 3 + 2 * 1e-4 / 3
    np.testing.assert_allclose(out[0::2, :, :, 3], even, rtol=1e-5)
    np.testing.assert_allclose(out[1::2, :, :, 3], 1e-4, rtol=1e-3)
