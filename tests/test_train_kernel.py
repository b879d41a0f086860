"""Training the KernelWizard: the synthetic camera-shake blur, and a few steps with a checkpoint and resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from dps_jax.train import kernel as train_kernel
from dps_jax.models import kernel_wizard as kw
from helpers import random_image_folder


def test_camera_shake_closed_forms():
    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 16, 2))
    still = train_kernel.camera_shake(jax.random.PRNGKey(1), x, max_shift=0.0, max_angle=0.0, max_zoom=0.0)
    np.testing.assert_allclose(still, x, atol=1e-6)                       # no motion: the image itself
    flat = train_kernel.camera_shake(jax.random.PRNGKey(1), jnp.full((16, 16, 1), 0.3))
    np.testing.assert_allclose(flat, 0.3, atol=1e-6)                      # an average of poses keeps a flat image
    # A point moved by a pure translation: its mass is kept (away from the borders) and spread along a line.
    dot = jnp.zeros((33, 33, 1)).at[16, 16, 0].set(1.0)
    streak = np.asarray(train_kernel.camera_shake(jax.random.PRNGKey(2), dot, max_shift=8.0, max_angle=0.0,
                                                  max_zoom=0.0))[..., 0]
    assert abs(streak.sum() - 1.0) < 1e-4 and streak.max() < 0.5 and (streak > 1e-3).sum() >= 4
    again = train_kernel.camera_shake(jax.random.PRNGKey(2), dot, max_shift=8.0, max_angle=0.0, max_zoom=0.0)
    np.testing.assert_array_equal(np.asarray(again)[..., 0], streak)       # one key, one path


def tiny_config(root, num_steps):
    return ConfigDict(dict(
        seed=0, data=dict(name="folder", root=str(root), image_size=8, channels=1),
        model=dict(in_channels=1, features=4, front_blocks=1, back_blocks=1, extractor_blocks=1, kernel_dim=8,
                   use_vae=True, feature_downsamples=0, adapter_levels=2, tail_features=4),
        blur=dict(frames=4, max_shift=2.0, max_angle=0.1, max_zoom=0.05),
        kl_weight=0.2, kl_start=1, kl_warmup=1, optim=dict(lr=1e-3), batch_size=2, num_steps=num_steps,
        log_every=1, checkpoint_minutes=0.0, eval_images=4))


def test_train_checkpoint_resume_and_export(tmp_path, capsys):
    # the resumed run loads the first run's compiled step from the suite's compilation cache (conftest.py)
    root = random_image_folder(tmp_path / "images")
    work = tmp_path / "work"
    train_kernel.train(tiny_config(root, 2), str(work))
    assert "step 2/2 charbonnier" in capsys.readouterr().out
    first, config = kw.load(str(work / "kernel_wizard.msgpack"))
    assert config.kernel_dim == 8 and config.latent_shape((8, 8, 1)) == (2, 2, 8)
    train_kernel.train(tiny_config(root, 3), str(work))
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 2" in out and "step 3/3" in out
    params, _ = kw.load(str(work / "kernel_wizard.msgpack"))
    assert not np.allclose(params["recon_out"]["kernel"], first["recon_out"]["kernel"])
    figures = json.load(open(work / "eval.json"))
    assert figures["images"] == 4 and all(np.isfinite(v) for v in figures.values())
