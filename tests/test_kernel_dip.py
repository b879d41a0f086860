"""BKS's kernel DIP against the reference's forward pass (tests/fixtures/kernel_dip.npz, from
tools/make_kernel_dip_fixtures.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert.mapping import random_state_dict
from dps_jax.models import kernel_dip
from helpers import load_npz

FX = load_npz("kernel_dip.npz")


def test_kernel_dip_is_the_reference_forward_pass():
    """The key table is the reference's state_dict's; z within 1e-5 of its largest value on a noise input of the
    kind BKS feeds it (uniform [0, 0.1), 64 channels at 64 x 64, redrawn from the fixture script's seed)."""
    opt = json.loads(str(FX["opt"]))
    config = kernel_dip.KernelDIPConfig(nf=opt["nf"], n_blocks=opt["n_blocks"], kernel_dim=opt["kernel_dim"])
    shapes = {k: tuple(v) for k, v in json.loads(str(FX["keys"])).items()}
    assert kernel_dip.param_shapes(config) == shapes
    params = {k: jnp.asarray(v) for k, v in random_state_dict(shapes, 51).items()}
    noise = np.random.default_rng(51).uniform(0, 0.1, (1, 64, 64, 64)).astype(np.float32).transpose(0, 2, 3, 1)
    got = np.asarray(jax.jit(lambda p, n: kernel_dip.forward(p, config, n))(params, jnp.asarray(noise)))
    want = FX["z"]
    assert got.shape == (1, 2, 2, 16) and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    with pytest.raises(ValueError, match="takes 64-channel noise, got 8"):
        kernel_dip.forward(params, config, jnp.zeros((1, 64, 64, 8)))
    with pytest.raises(ValueError, match="KernelDIP.nf must be a positive integer"):
        kernel_dip.KernelDIPConfig(nf=0)
