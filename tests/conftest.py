"""Session-wide pytest fixtures; plain helpers live in helpers.py."""

import json
import os
import shutil
import tempfile

# The suite is mostly XLA compiles. LLVM's least optimisation cuts their time by about a fifth (8:55 against
# 11:28 for the whole suite on the 2-core machine), and XLA:CPU's older fusion code generation, which every
# command asks for (dps_jax.cli.cpu_compile_flags), halves what is left (a DPS step through the fixture UNet:
# 3.3 s against 7.0 s); neither changes a test's outcome. Set before jax is imported, and inherited by the
# command-line runs the tests start.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
from dps_jax.cli import cpu_compile_flags  # noqa: E402  (imports no jax)

cpu_compile_flags()

# One persistent compilation cache for the whole run, fresh each run, so that no test reads programs an earlier
# run left (a warm cache once hid a minute of the suite's compiling) and the runs that test the cache share it.
# The process pytest starts makes it before the xdist workers are spawned (they and the subprocesses the tests
# start inherit it through the environment) and removes it at the end. JAX's threshold stays (programs that
# compile in over 1 s): caching every program measured no faster.
SUITE_CACHE_OWNER = "DPS_JAX_SUITE_CACHE" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ
if SUITE_CACHE_OWNER:
    os.environ["DPS_JAX_SUITE_CACHE"] = tempfile.mkdtemp(prefix="dps_jax_suite_xla_")
SUITE_CACHE = os.environ["DPS_JAX_SUITE_CACHE"]
os.environ["JAX_COMPILATION_CACHE_DIR"] = SUITE_CACHE

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


def pytest_sessionfinish(session):
    if SUITE_CACHE_OWNER:
        shutil.rmtree(SUITE_CACHE, ignore_errors=True)


# Files whose tests take 10-35 s each (subprocess runs, wheel build, training, the fixture UNet's gradients).
# Run first: under `--dist worksteal` the two workers then end on short tests instead of one waiting for the
# other's long one.
HEAVY_FIRST = ("test_install.py", "test_main.py", "test_train.py", "test_pigdm_reddiff.py", "test_perceptual.py",
               "test_own_operator.py", "test_bks.py", "test_bks_generic.py", "test_dps_fixtures.py", "test_unet.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
