"""Memory-lean building blocks of the UNet: GroupNorm (+ scale-shift, + SiLU) with a hand-written VJP,
and a convolution whose backward pass flips its kernel only when the cotangent arrives.

Both exist for the DPS step, which differentiates the whole UNet with respect to its input. With autodiff
through plain jnp ops, XLA keeps x - mean and the normalised x of every GroupNorm, and the SiLU input,
alive for the backward pass (three full-size tensors per norm), and it schedules every flipped kernel
copy of the input-gradient convolutions at the start of the program, so they are all alive at the peak.
Here a norm keeps only its input and per-group statistics, and each kernel flip happens just before
its one use, written in the HWIO layout that XLA:CPU's fast convolutions take (inside a lax.scan body an
HWOI kernel is not, and the step is 2-3x slower). Values and gradients (inputs and parameters) are the
same as autodiff's: tests/test_layers.py.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.custom_batching
import jax.numpy as jnp
from jax import lax


def _groups(x, groups: int):
    """(N, ..., C) -> (N, ..., G, C // G)."""
    c = x.shape[-1]
    if c % groups:
        raise ValueError(f"GroupNorm: {c} channels are not divisible by {groups} groups")
    return x.reshape(x.shape[:-1] + (groups, c // groups))


def _stats(xg, eps: float):
    """Per-sample, per-group mean and 1 / std of xg (N, ..., G, Cg): each (N, 1.., G, 1), two-pass variance."""
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    mean = jnp.mean(xg, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
    return mean, lax.rsqrt(var + eps)


def _forward(x, gamma, beta, scale, shift, groups, eps, act):
    xg = _groups(x, groups)
    mean, rstd = _stats(xg, eps)
    z0 = ((xg - mean) * rstd).reshape(x.shape) * gamma + beta
    z = z0 if scale is None else z0 * (1.0 + scale) + shift
    return (z * jax.nn.sigmoid(z) if act else z), (mean, rstd)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def group_norm_act(x, gamma, beta, scale=None, shift=None, groups: int = 32, eps: float = 1e-5,
                   act: bool = True):
    """silu(GN(x) * (1 + scale) + shift), float32.

    x (N, ..., C); gamma, beta (C,) the norm's affine; scale, shift broadcastable to x (ADM's
    scale-shift norm, (N, 1, 1, C)) or None; act=False leaves out the SiLU. Statistics per sample and
    group over all spatial positions; eps inside the square root, as torch.nn.GroupNorm.
    """
    return _forward(x, gamma, beta, scale, shift, groups, eps, act)[0]


def _gn_fwd(x, gamma, beta, scale, shift, groups, eps, act):
    out, (mean, rstd) = _forward(x, gamma, beta, scale, shift, groups, eps, act)
    return out, (x, mean, rstd, gamma, beta, scale, shift)


def _sum_to(g, shape):
    """Sum g back to `shape`, the shape of a value that numpy broadcasting stretched to g.shape."""
    padded = (1,) * (g.ndim - len(shape)) + tuple(shape)
    axes = tuple(i for i, (a, b) in enumerate(zip(padded, g.shape)) if a == 1 and b != 1)
    return jnp.sum(g, axis=axes, keepdims=True).reshape(shape)


@jax.custom_batching.custom_vmap
def _after(a, g):
    """`a`, made to depend on the cotangent g: a + 0 * g[0, ..., 0], exact for finite g.

    A backward pass that recomputes a forward value from `_after(a, g)` is not merged with the forward
    pass by XLA's common-subexpression elimination (the forward copy would stay alive until the backward
    pass, which is what recomputing avoids), and a weight-only computation such as a kernel flip cannot be
    hoisted to the start of the program. optimization_barrier would say this, but XLA:CPU drops it before
    scheduling.
    """
    return _after_impl(a, g)


def _after_impl(a, g):
    return a + jnp.zeros((), a.dtype) * g[(0,) * g.ndim].astype(a.dtype)


@_after.def_vmap
def _after_vmap(axis_size, in_batched, a, g):
    a_batched, g_batched = in_batched
    if not a_batched:
        # An unbatched a (a kernel, under vmap over samples) stays unbatched: depending on the first
        # sample's cotangent orders it just as well, and a batched kernel would turn the convolution
        # into a grouped one, one kernel copy per sample.
        return _after(a, g[0] if g_batched else g), False
    return jax.vmap(_after_impl, in_axes=(0, 0 if g_batched else None))(a, g), True


def _gn_bwd(groups, eps, act, res, g):
    x, mean, rstd, gamma, beta, scale, shift = res
    x = _after(x, g)
    # Recompute the normalised input from the saved statistics: elementwise, fused with the rest.
    xhat = ((_groups(x, groups) - mean) * rstd).reshape(x.shape)
    z0 = xhat * gamma + beta
    z = z0 if scale is None else z0 * (1.0 + scale) + shift
    if act:
        s = jax.nn.sigmoid(z)
        g = g * s * (1.0 + z * (1.0 - s))
    d_scale = d_shift = None
    if scale is not None:
        d_shift = _sum_to(g, jnp.shape(shift))
        d_scale = _sum_to(g * z0, jnp.shape(scale))
        g = g * (1.0 + scale)
    red = tuple(range(x.ndim - 1))
    d_gamma, d_beta = jnp.sum(g * xhat, axis=red), jnp.sum(g, axis=red)
    # d/dx of (x - mean) * rstd for one group: rstd * (g - mean(g) - xhat * mean(g * xhat)).
    gx = _groups(g * gamma, groups)
    xg = _groups(xhat, groups)
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    dx = rstd * (gx - jnp.mean(gx, axis=axes, keepdims=True)
                 - xg * jnp.mean(gx * xg, axis=axes, keepdims=True))
    return dx.reshape(x.shape), d_gamma, d_beta, d_scale, d_shift


group_norm_act.defvjp(_gn_fwd, _gn_bwd)


class GroupNormAct(nn.Module):
    """GroupNorm (params `scale`, `bias`, as flax.linen.GroupNorm) with optional scale-shift and SiLU,
    computed in float32. __call__(x (N, ..., C), scale=None, shift=None) -> float32 (N, ..., C)."""
    groups: int = 32
    epsilon: float = 1e-5
    act: bool = True

    @nn.compact
    def __call__(self, x, scale=None, shift=None):
        c = x.shape[-1]
        gamma = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        beta = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return group_norm_act(x.astype(jnp.float32), gamma, beta, scale, shift, self.groups, self.epsilon,
                              self.act)


def _conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, kernel, strides: Tuple[int, int], padding: Sequence[Tuple[int, int]]):
    """2-D convolution, x (N, H, W, I), kernel (kh, kw, I, O) -> (N, H', W', O); plain lax convolution
    forward, and a backward pass whose flipped-kernel copy is computed only once the cotangent exists."""
    return _conv(x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, res, g):
    x, kernel = res
    _, vjp_kernel = jax.vjp(lambda k: _conv(x, k, strides, padding), kernel)   # dead code under DPS
    if tuple(strides) != (1, 1):
        _, vjp_x = jax.vjp(lambda x: _conv(x, _after(kernel, g), strides, padding), x)
        return vjp_x(g)[0], vjp_kernel(g)[0]
    # Stride 1: the input gradient is the correlation of g with the kernel flipped in space, in and out
    # channels swapped, padded by k - 1 - p. The flipped copy is made here, in HWIO order and after g
    # exists: an HWOI kernel that XLA folds into the convolution's dimension labels inside a while loop
    # (lax.scan) is not taken by XLA:CPU's fast (YNNPACK) convolution, a 2-3x slower step.
    kh, kw = kernel.shape[:2]
    flipped = _after(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), g)
    pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), padding)]
    return _conv(g, flipped, (1, 1), pads), vjp_kernel(g)[0]


conv2d.defvjp(_conv_fwd, _conv_bwd)


class Conv(nn.Module):
    """flax.linen.Conv's params (`kernel` (kh, kw, I, O), `bias` (O,)) and initialisers, NHWC, computed
    with `conv2d`. `dtype` is the compute dtype."""
    features: int
    kernel_size: Tuple[int, int]
    strides: Tuple[int, int] = (1, 1)
    padding: Sequence[Tuple[int, int]] = ((0, 0), (0, 0))
    dtype: Any = jnp.float32
    kernel_init: Any = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, tuple(self.kernel_size) + (x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), tuple(self.strides),
                   tuple(tuple(p) for p in self.padding))
        return y + bias.astype(self.dtype)
