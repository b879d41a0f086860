"""The UNet's hand-differentiated layers equal autodiff through the plain ops, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dps_jax.models import layers


def _reference_norm(x, gamma, beta, scale, shift, act):
    """flax.linen.GroupNorm (32 groups, eps 1e-5) + optional scale-shift and SiLU, by plain autodiff."""
    z = nn.GroupNorm(num_groups=32, epsilon=1e-5, use_fast_variance=False).apply(
        {"params": {"scale": gamma, "bias": beta}}, x)
    if scale is not None:
        z = z * (1.0 + scale) + shift
    return nn.silu(z) if act else z


def _inputs(shape, key=0, scale_shift=True, ss_shape=None):
    ks = jax.random.split(jax.random.PRNGKey(key), 6)
    c = shape[-1]
    # Mean far from zero: the two-pass variance must not lose digits.
    x = 3.0 + 2.0 * jax.random.normal(ks[0], shape)
    gamma = 1.0 + 0.1 * jax.random.normal(ks[1], (c,))
    beta = 0.1 * jax.random.normal(ks[2], (c,))
    ss_shape = ss_shape or (shape[0],) + (1,) * (len(shape) - 2) + (c,)
    scale = 0.2 * jax.random.normal(ks[3], ss_shape) if scale_shift else None
    shift = 0.2 * jax.random.normal(ks[4], ss_shape) if scale_shift else None
    cot = jax.random.normal(ks[5], shape)
    return x, gamma, beta, scale, shift, cot


@pytest.mark.parametrize("shape,scale_shift,act,ss_shape", [
    ((2, 8, 8, 64), True, True, None), ((2, 8, 8, 64), False, True, None), ((2, 16, 64), False, False, None),
    ((1, 4, 6, 96), True, False, None),
    ((2, 8, 8, 64), True, True, (64,)), ((2, 8, 8, 64), True, True, (1, 8, 64))])   # lower rank, other axes
def test_group_norm_act_matches_autodiff(shape, scale_shift, act, ss_shape):
    x, gamma, beta, scale, shift, cot = _inputs(shape, scale_shift=scale_shift, ss_shape=ss_shape)
    args = (x, gamma, beta) + ((scale, shift) if scale_shift else ())

    def ours(*a):
        return layers.group_norm_act(*a[:3], *(a[3:] if scale_shift else (None, None)), 32, 1e-5, act)

    def ref(*a):
        return _reference_norm(*a[:3], *(a[3:] if scale_shift else (None, None)), act)

    # compiled: op by op, the two vjps took 4-7 s a case
    forward_and_back = jax.jit(lambda f, *a: (lambda o, v: (o, v(cot)))(*jax.vjp(f, *a)), static_argnums=0)
    out, grads = forward_and_back(ours, *args)
    out_ref, grads_ref = forward_and_back(ref, *args)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
    for name, g, g_ref in zip(("x", "gamma", "beta", "scale", "shift"), grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=2e-4 * float(jnp.abs(g_ref).max()), err_msg=name)


def test_group_norm_act_rejects_channels_not_divisible_by_groups():
    x = jnp.ones((1, 4, 4, 40))
    with pytest.raises(ValueError, match="40 channels are not divisible by 32 groups"):
        layers.group_norm_act(x, jnp.ones(40), jnp.zeros(40), None, None, 32, 1e-5, True)


@pytest.mark.parametrize("ksize,strides,padding", [(3, (1, 1), ((1, 1), (1, 1))), (1, (1, 1), ((0, 0), (0, 0))),
                                                   (3, (2, 2), ((1, 1), (1, 1))), (3, (1, 1), ((0, 2), (1, 0)))])
def test_conv2d_matches_lax_convolution(ksize, strides, padding):
    kx, kk = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, (2, 10, 12, 5))
    kernel = jax.random.normal(kk, (ksize, ksize, 5, 7))

    def ref(x, k):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out, vjp = jax.vjp(lambda x, k: layers.conv2d(x, k, strides, padding), x, kernel)
    out_ref, vjp_ref = jax.vjp(ref, x, kernel)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(jax.random.PRNGKey(2), out.shape)
    for g, g_ref in zip(vjp(cot), vjp_ref(cot)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_kernel_stays_unbatched_under_vmap_over_samples():
    """Vmapped over samples, the kernel flip must not become one copy per sample (a grouped convolution)."""
    kernel = jnp.arange(18.0).reshape(3, 3, 2, 1)
    g = jnp.ones((4, 5, 5, 1))
    same = jax.vmap(lambda g: layers._after(kernel, g), out_axes=None)(g)     # out_axes=None: unbatched
    np.testing.assert_array_equal(same, kernel)
    x = jnp.arange(8.0)
    np.testing.assert_array_equal(jax.vmap(layers._after)(x, jnp.ones((8, 3))), x)

    def loss(x, k):
        return jnp.sum(jnp.sin(layers.conv2d(x[None], k, (1, 1), ((1, 1), (1, 1)))))

    xs = jax.random.normal(jax.random.PRNGKey(3), (3, 6, 6, 2))
    grads = jax.vmap(jax.grad(loss), in_axes=(0, None))(xs, kernel)
    for i in range(3):
        np.testing.assert_allclose(grads[i], jax.grad(loss)(xs[i], kernel), rtol=1e-6)
    convs = _convolutions(jax.make_jaxpr(jax.vmap(jax.grad(loss), in_axes=(0, None)))(xs, kernel).jaxpr)
    # The input-gradient convolution (output shaped like the samples); the per-sample kernel gradient,
    # which DPS never uses, is a grouped convolution by construction and is left out.
    input_grad = [e for e in convs if e.outvars[0].aval.shape == xs.shape]
    assert len(input_grad) == 1 and input_grad[0].params["feature_group_count"] == 1
    assert input_grad[0].invars[1].aval.shape == (3, 3, 1, 2)          # one kernel: flipped, HWIO


def _convolutions(jaxpr):
    """Every conv_general_dilated equation of a jaxpr, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(eqn)
        for v in eqn.params.values():
            inner = getattr(v, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                found += _convolutions(inner)
            elif hasattr(v, "eqns"):
                found += _convolutions(v)
    return found


def _chain(norm, conv, x, params):
    for gamma, beta, k in params:
        x = x + conv(norm(x, gamma, beta), k)
    return jnp.sum(x ** 2)


def test_input_gradient_keeps_fewer_activations_than_autodiff():
    """The point of the layers: the gradient of a GroupNorm-SiLU-conv chain needs less scratch memory
    than plain autodiff's (which keeps x - mean, the normalised x and the SiLU input of every norm)."""
    c, hw, depth = 64, 32, 6
    keys = jax.random.split(jax.random.PRNGKey(0), depth)
    params = [(jnp.ones(c), jnp.zeros(c), 0.05 * jax.random.normal(k, (3, 3, c, c))) for k in keys]
    x = jax.random.normal(jax.random.PRNGKey(1), (1, hw, hw, c))
    pad = ((1, 1), (1, 1))

    def ours(x):
        return _chain(lambda x, g, b: layers.group_norm_act(x, g, b, None, None, 32, 1e-5, True),
                      lambda x, k: layers.conv2d(x, k, (1, 1), pad), x, params)

    def ref(x):
        return _chain(lambda x, g, b: _reference_norm(x, g, b, None, None, True),
                      lambda x, k: lax.conv_general_dilated(x, k, (1, 1), pad,
                                                            dimension_numbers=("NHWC", "HWIO", "NHWC")), x, params)

    compiled = {f.__name__: jax.jit(jax.grad(f)).lower(x).compile() for f in (ours, ref)}
    np.testing.assert_allclose(compiled["ours"](x), compiled["ref"](x), rtol=1e-4, atol=1e-4)
    temp = {name: c.memory_analysis().temp_size_in_bytes for name, c in compiled.items()}
    assert temp["ours"] < 0.75 * temp["ref"], temp
