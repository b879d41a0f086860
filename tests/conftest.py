"""Session-wide pytest fixtures; plain helpers live in helpers.py."""

import json

import pytest

from helpers import fixture_path, load_npz


@pytest.fixture(scope="session")
def coefs():
    """Stacked float32 step coefficients of the linear schedule respaced to 10 steps (reverse order)."""
    from dps_jax import diffusion, schedule

    return diffusion.step_coefficients(schedule.build_tables("linear", 1000, "10"))


@pytest.fixture(scope="session")
def ffhq_like():
    """(UNet module, params, config) of the `adm_ffhq_like` fixture, converted from its .pt file."""
    from checkpoints_convert import convert_state_dict, load_state_dict
    from dps_jax.models.unet import UNet, UNetConfig

    cfg = UNetConfig.from_dict(json.loads(str(load_npz("adm_ffhq_like.npz")["config"])))
    params = convert_state_dict(load_state_dict(fixture_path("adm_ffhq_like.pt")), cfg)
    return UNet(cfg), params, cfg
