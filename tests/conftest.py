"""Session-wide pytest fixtures; plain helpers live in helpers.py."""

import json
import os
import tempfile

# The suite is mostly XLA compiles: LLVM's least optimisation cuts their time by about a fifth (8:55 against
# 11:28 for the whole suite on the 2-core machine) and changes no test's outcome; set before jax is imported,
# and inherited by the command-line runs the tests start.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import pytest  # noqa: E402

from helpers import fixture_path, load_npz  # noqa: E402

# No test reads the machine's Fashion-MNIST (Debian's dataset-fashion-mnist, which a fresh machine lacks):
# the default folder points somewhere empty, and the tests that need images read the shipped sample
# (helpers.FMNIST_SAMPLE, tools/make_fmnist_sample.py).
os.environ["DPS_JAX_FASHION_MNIST"] = tempfile.mkdtemp(prefix="dps_jax_no_fashion_mnist_")


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
