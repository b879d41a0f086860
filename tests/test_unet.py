"""The Flax ADM UNet against the official PyTorch UNetModel's outputs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert import convert_state_dict, load_state_dict
from helpers import fixture_path, load_npz, nhwc
from dps_jax.models.unet import (UNet, UNetConfig, attention, count_params, create_model_config, normal_params,
                                 param_shapes, preset)


def _fixture(name):
    """(reference arrays, config, converted params) of the `adm_<name>` fixture."""
    ref = load_npz(f"adm_{name}.npz")
    cfg = UNetConfig.from_dict(json.loads(str(ref["config"])))
    return ref, cfg, convert_state_dict(load_state_dict(fixture_path(f"adm_{name}.pt")), cfg)


def _run(name, dtype=jnp.float32):
    ref, cfg, params = _fixture(name)
    y = jnp.asarray(ref["y"]) if "y" in ref.files else None
    # Compiled: 4 s for ffhq_like, where op-by-op dispatch takes 13.
    apply = jax.jit(lambda p, x, t, y: UNet(cfg, dtype).apply({"params": p}, x, t, y))
    out = apply(params, jnp.asarray(nhwc(ref["x"])), jnp.asarray(ref["t"]), y)
    return np.asarray(out), nhwc(ref["out"])


@pytest.mark.parametrize("name", ["ffhq_like", "imagenet_like", "variants"])
def test_unet_matches_official(name):
    out, want = _run(name)
    assert out.shape == want.shape
    assert np.abs(out - want).max() <= 1e-4


def test_bfloat16_compute_is_close():
    """bfloat16 convolutions and products, float32 GroupNorm and residual stream: the output (against the
    official float32 one) and the input gradient DPS takes (of a data distance through the network) stay
    float32 and close to float32's: the gradient's derivative along itself matches a central difference
    of the float32 network (which checks its length and its direction)."""
    ref, cfg, params = _fixture("variants")
    x, t, want = jnp.asarray(nhwc(ref["x"])), jnp.asarray(ref["t"]), nhwc(ref["out"])

    def distance(x, dtype):
        out = UNet(cfg, dtype).apply({"params": params}, x, t, jnp.asarray(ref["y"]))
        return jnp.linalg.norm(out[..., :3] - 0.1), out
    (_, out), g16 = jax.jit(jax.value_and_grad(lambda x: distance(x, jnp.bfloat16), has_aux=True))(x)
    assert out.dtype == g16.dtype == jnp.float32
    assert np.abs(np.asarray(out) - want).max() < 0.1 * np.abs(want).max()
    norm = float(jnp.linalg.norm(g16))
    f32 = jax.jit(lambda x: distance(x, jnp.float32)[0])
    h = 1e-2
    slope = (float(f32(x + h * g16 / norm)) - float(f32(x - h * g16 / norm))) / (2 * h)    # |g32| cos(angle)
    assert abs(slope - norm) < 0.05 * norm, (slope, norm)


def test_attention_closed_form():
    q, k, v = np.random.default_rng(0).standard_normal((3, 2, 5, 3, 8)).astype(np.float32)   # (N, T, heads, C)
    logits = np.einsum("nthc,nshc->nhts", q, k) / np.sqrt(8)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("nhts,nshc->nthc", w / w.sum(-1, keepdims=True), v)
    np.testing.assert_allclose(attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, count", [("ffhq256", 93_563_910), ("imagenet256", 552_814_086)])
def test_published_parameter_counts(name, count):
    assert count_params(param_shapes(preset(name))) == count


def test_create_model_flags():
    cfg = create_model_config(image_size=256, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8",
                              learn_sigma=True)
    assert cfg.attention_resolutions == (8, 16, 32) and cfg.channel_mult == (1, 1, 2, 2, 4, 4)
    assert cfg.out_channels == 6
    assert create_model_config(64, 32, 1).channel_mult == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="no default channel_mult for image_size 48"):
        create_model_config(48, 32, 1)


def test_unet_composes_with_grad_vmap_and_checkpointing():
    cfg = UNetConfig(image_size=8, in_channels=1, model_channels=32, out_channels=2, num_res_blocks=1,
                     attention_resolutions=(2,), channel_mult=(1, 1), num_heads=2, use_checkpoint=True,
                     resblock_updown=True, use_scale_shift_norm=True)
    model = UNet(cfg)
    params = normal_params(cfg, 0.1)
    f = lambda x: model.apply({"params": params}, x[None], jnp.array([5]))[0]
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
    # Under jit: op-by-op init, apply and rematerialised gradient took 45 s. Two programs: the batch under
    # vmap, and one image's output with its rematerialised gradient (which the vmapped rows must equal).
    one = jax.jit(jax.value_and_grad(lambda x: (lambda out: (jnp.sum(out ** 2), out))(f(x)), has_aux=True))
    rows = [one(x) for x in xs]
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(xs), jnp.stack([out for (_, out), _ in rows]), atol=1e-5)
    for (_, _), g in rows:
        assert g.shape == (8, 8, 1) and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


def test_unet_rejects_bad_inputs():
    cfg = UNetConfig(image_size=8, in_channels=1, model_channels=32, out_channels=1, num_res_blocks=1,
                     attention_resolutions=(), channel_mult=(1, 1, 1))
    model = UNet(cfg)
    with pytest.raises(ValueError, match="image size 6 x 6 is not divisible by 4"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 1)), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match=r"UNet input must be \(N, H, W, 1\), got \(1, 8, 8, 3\)"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="unknown model preset 'ffhq1024'"):
        preset("ffhq1024")
    with pytest.raises(ValueError, match="unknown UNet config keys \\['num_layers'\\]"):
        UNetConfig.from_dict({"num_layers": 3})
