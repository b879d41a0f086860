"""Shared test helpers: golden fixtures (from reference implementations, see fixtures/README.md) in NHWC,
and small closed-form priors.

`DPS_JAX_FIXTURES=DIR` points the tests at another fixture directory, e.g. one that
`tools/make_fixtures.py` has just regenerated, to check that regeneration reproduces them.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import api, operators
from dps_jax.analytic import gmm
from dps_jax import prior as prior_lib
from dps_jax import schedule
from dps_jax.operators import spectral

FIXTURES = os.environ.get("DPS_JAX_FIXTURES") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


# 1000 Fashion-MNIST test and 500 training images with their labels, in the Debian package's layout.
FMNIST_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fashion_mnist")


def fixture_path(name: str) -> str:
    return os.path.join(FIXTURES, name)


def random_image_folder(root, num: int = 6, size: int = 8, seed: int = 0) -> str:
    """`num` random one-channel PNGs of size x size in `root` (created): a training set for the trainers' tests."""
    from dps_jax import io
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num):
        io.save_png(os.path.join(str(root), f"{i}.png"), rng.uniform(-1, 1, (size, size, 1)))
    return str(root)


def load_npz(name: str):
    return np.load(fixture_path(name))


def nhwc(a):
    """(..., C, H, W) -> (..., H, W, C)."""
    return np.moveaxis(np.asarray(a), -3, -1)


def row(coefs, i):
    """The coefficients of the i-th step of a stacked table."""
    return jax.tree_util.tree_map(lambda a: a[i], coefs)


ALPHAS_CUMPROD = jnp.asarray(schedule.build_tables("linear", 1000).alphas_cumprod, jnp.float32)


def linear_prior(a: float = 0.3, **kw) -> prior_lib.Prior:
    """eps_theta(x, t) = a x: x0_hat = (sqrt(1/ab) - sqrt(1/ab - 1) a) x is linear in x."""
    kw.setdefault("var_type", "fixed_small")
    return prior_lib.Prior(params={"a": jnp.asarray(a, jnp.float32)}, apply=_linear_eps, **kw)


def _linear_eps(params, x, t):
    return params["a"] * x


def gaussian_prior(s: float = 0.5, **kw) -> prior_lib.Prior:
    """The exact eps prediction for data x0 ~ N(0, s^2 I): sqrt(1 - ab) x_t / (ab s^2 + 1 - ab)."""
    kw.setdefault("var_type", "fixed_small")
    return prior_lib.Prior(params={"s": jnp.asarray(s, jnp.float32)}, apply=_gaussian_eps, **kw)


def _gaussian_eps(params, x, t):
    ab, s2 = ALPHAS_CUMPROD[t], params["s"] ** 2
    return jnp.sqrt(1 - ab) * x / (ab * s2 + 1 - ab)


class SpectralOp:
    """Stands in for problem.op in fixture tests: A x through a fixture's SVD."""
    linear = True

    def __init__(self, sp):
        self.sp = sp

    def __call__(self, x):
        return spectral.apply(self.sp, x)


def random_mixture(dim, k=3, seed=0):
    """A random k-component Gaussian mixture in `dim` dimensions, pixel std about 0.3, means in [-0.6, 0.6]."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, dim, dim)) * (0.3 / np.sqrt(dim))
    return gmm.make(rng.uniform(0.5, 2.0, size=k), rng.uniform(-0.6, 0.6, (k, dim)),
                    a @ np.swapaxes(a, 1, 2) + 0.01 * np.eye(dim))


def mixture_sr_case(shape=(8, 8, 1), sigma=0.05):
    """A fast-to-compile API case: a mixture prior, SR x2, x from the prior, noisy y.
    Returns (prior, op, x, y, sigma)."""
    mix = random_mixture(int(np.prod(shape)))
    op = operators.build("super_resolution", shape, scale_factor=2)
    x = np.asarray(gmm.sample(mix, jax.random.PRNGKey(0), 1)[0]).reshape(shape)
    return gmm.as_prior(mix, shape), op, x, api.measure(op, x, jax.random.PRNGKey(1), sigma=sigma), sigma


def measurement_fit(op, samples, y):
    """RMS of A(x) - y per sample: (N,)."""
    ax = np.asarray(jax.vmap(op)(jnp.asarray(samples)))
    return np.sqrt(np.mean((ax - np.asarray(y)) ** 2, axis=tuple(range(1, ax.ndim))))


def random_lpips_file(path, net: str = "alex", seed: int = 0) -> str:
    """An LPIPS weight file with a random trunk (the fixture rule) and unit heads: a real distance to run
    the wiring on, not the published metric."""
    from checkpoints_convert import metrics as convert_metrics
    from checkpoints_convert.mapping import random_state_dict
    from dps_jax.models import checkpoint, lpips_net

    config = lpips_net.LPIPSConfig(net)
    shapes = convert_metrics.lpips_torch_shapes(config)
    trunk = random_state_dict({k: v for k, v in shapes.items() if k.startswith("features.")}, seed)
    heads = {k: np.ones(v, np.float32) for k, v in shapes.items() if k.startswith("lin")}
    params = convert_metrics.convert_lpips(trunk, heads, config)
    checkpoint.save_checkpoint(str(path), params, config, fmt=lpips_net.FORMAT)
    return str(path)


def tiny_prior_file(path, seed: int = 0) -> str:
    """A random one-level UNet for 32 x 32 x 1 images (no attention) as a dps_jax checkpoint: what an end-to-end
    run of the plumbing needs, compiled in a third of the shipped prior's time (its gradient: 2.5 s, not 7.4)."""
    from dps_jax.models import checkpoint
    from dps_jax.models.unet import UNet, UNetConfig

    config = UNetConfig(image_size=32, in_channels=1, model_channels=32, out_channels=1, num_res_blocks=1,
                        attention_resolutions=(), channel_mult=(1,), num_heads=4, use_scale_shift_norm=True,
                        resblock_updown=True)
    # N(0, 0.05) leaves of the init's shapes (traced, not compiled: 4 s saved)
    shapes = jax.eval_shape(UNet(config).init, jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 1)),
                            jnp.zeros((1,), jnp.int32))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda s: rng.normal(0.0, 0.05, s.shape).astype(np.float32), shapes)
    checkpoint.save_checkpoint(str(path), params, config, extra={"var_type": "fixed_large"})
    return str(path)


def tiny_kernel_file(path, seed: int = 0) -> str:
    """A random KernelWizard of the shipped one's layout at a quarter of its width and one block per stack, for
    32 x 32 x 1 images: the nonlinear-deblurring plumbing without the shipped model's compile time."""
    from dps_jax.models import checkpoint, kernel_wizard as kw

    config = kw.KernelWizardConfig(in_channels=1, features=4, front_blocks=1, back_blocks=1, extractor_blocks=1,
                                   kernel_dim=32, feature_downsamples=0, adapter_levels=4, tail_features=4)
    params = kw.init_params(jax.random.PRNGKey(seed), config)
    checkpoint.save_checkpoint(str(path), params, config, fmt=kw.FORMAT)
    return str(path)


def tiny_generator_file(path, seed: int = 0) -> str:
    """A random StyleGAN2 generator for 32 x 32 x 1 images (8 channels, a 16-wide style, one mapping layer) in the
    converter's format: BKS-styleGAN2's plumbing without a trained generator."""
    from checkpoints_convert.mapping import random_state_dict
    from dps_jax.models import checkpoint, stylegan2

    config = stylegan2.StyleGAN2Config(size=32, style_dim=16, n_mlp=1, channels=((4, 8), (8, 8), (16, 8), (32, 8)),
                                       image_channels=1)
    params = random_state_dict(stylegan2.param_shapes(config), seed)
    params.update(stylegan2.buffers(config))
    checkpoint.save_checkpoint(str(path), params, config, fmt=stylegan2.FORMAT)
    return str(path)


def block_average(n: int, r: int, channels: int = 3):
    """DDRM's and RED-diff's own super-resolution operator (r x r block means) written in JAX, its SVD derived by
    dps_jax; and the map of those references' measurement vector ((C, h, w) block means, flat) to its y."""
    op = operators.from_callables(lambda x: x.reshape(n // r, r, n // r, r, channels).mean(axis=(1, 3)),
                                  (n, n, channels), linear=True, name="block_average")
    return op, lambda y: np.asarray(y).reshape(channels, n // r, n // r).transpose(1, 2, 0)


def paper_table_config():
    """The comparison command's config, configs/eval/paper_table.py's get_config()."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "eval", "paper_table.py")
    spec = importlib.util.spec_from_file_location("paper_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def assert_one_line_refusals(cases, common, root) -> None:
    """Each (config, extra args, message) run of `dps_jax.main` fails with status 1, one `error:` line holding
    the message, and writes nothing under root / "bad"."""
    import io

    from dps_jax import main

    for config, extra, match in cases:
        out = io.StringIO()
        argv = ["dps_jax.main", f"--config={config}", f"--config.output.root={root / 'bad'}", *common, *extra]
        assert main.cli(argv, stream=out) == 1
        lines = [line for line in out.getvalue().splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and match in lines[0], out.getvalue()[-1500:]
        assert not os.path.exists(root / "bad")
