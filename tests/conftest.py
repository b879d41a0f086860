"""Shared test helpers: fixtures (golden numbers from the official PyTorch code) in NHWC."""

import json
import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture_path(name: str) -> str:
    return os.path.join(FIXTURES, name)


def load_npz(name: str):
    return np.load(fixture_path(name))


def nhwc(a):
    """(..., C, H, W) -> (..., H, W, C)."""
    a = np.asarray(a)
    return np.moveaxis(a, -3, -1)


@pytest.fixture(scope="session")
def coefs():
    """Stacked float32 step coefficients of the linear schedule respaced to 10 steps (reverse order)."""
    from dps_jax import diffusion, schedule

    return diffusion.step_coefficients(schedule.build_tables("linear", 1000, "10"))


def row(coefs, i):
    """The coefficients of the i-th step of a stacked table."""
    import jax

    return jax.tree_util.tree_map(lambda a: a[i], coefs)


@pytest.fixture(scope="session")
def ffhq_like():
    """(UNet module, params, config) of the `adm_ffhq_like` fixture, converted from its .pt file."""
    from checkpoints_convert import convert_state_dict, load_state_dict
    from dps_jax.models.unet import UNet, UNetConfig

    cfg = UNetConfig.from_dict(json.loads(str(load_npz("adm_ffhq_like.npz")["config"])))
    params = convert_state_dict(load_state_dict(fixture_path("adm_ffhq_like.pt")), cfg)
    return UNet(cfg), params, cfg
