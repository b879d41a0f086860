"""The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021) in Flax, NHWC.

Submodule names are the PyTorch module paths with '.' -> '_' ("input_blocks_1_0", "in_layers_2"),
so a converted state_dict maps onto the params tree by name (see checkpoints_convert).

    model = UNet(config)
    out = model.apply({"params": params}, x, t)        # x (N, H, W, C) in [-1, 1], t (N,) -> (N, H, W, C_out)

Compute is float32 by default (GroupNorm and the attention softmax always are); `dtype=bfloat16`
runs convolutions and matrix products in bfloat16 with float32 parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.models.config_json import JsonConfig
from dps_jax.models.layers import Conv, GroupNormAct

DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4)}


@dataclasses.dataclass(frozen=True)
class UNetConfig(JsonConfig):
    """The arguments of guided-diffusion's `UNetModel` (attention_resolutions as downsample rates)."""
    KIND = "UNet"
    WHAT = "UNetModel arguments"
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 6
    num_res_blocks: int = 1
    attention_resolutions: Tuple[int, ...] = (16,)
    dropout: float = 0.0
    channel_mult: Tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    conv_resample: bool = True
    num_classes: Optional[int] = None
    use_checkpoint: bool = False
    use_fp16: bool = False
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False

    def __post_init__(self):
        # Every field is checked here, with its name, so a bad converter --config or a bad config stored in a
        # checkpoint is one clear line instead of an error deep inside the model (or a model that never ends).
        def fail(name, want):
            raise ValueError(f"UNetConfig.{name} must be {want}, got {getattr(self, name)!r:.80}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        for name, hi in (("image_size", 8192), ("in_channels", 1024), ("model_channels", 8192),
                         ("out_channels", 1024), ("num_res_blocks", 32)):
            if not is_int(getattr(self, name)) or not 1 <= getattr(self, name) <= hi:
                fail(name, f"an integer in [1, {hi}]")
        for name in ("attention_resolutions", "channel_mult"):
            if isinstance(getattr(self, name), (str, bytes, dict)) or not hasattr(getattr(self, name), "__iter__"):
                fail(name, "a list of numbers")
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        if not all(is_int(a) and a >= 1 for a in self.attention_resolutions):
            fail("attention_resolutions", "a list of positive integers (downsample rates)")
        if not 1 <= len(self.channel_mult) <= 12 or not all(
                isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m <= 64 for m in self.channel_mult):
            fail("channel_mult", "a list of 1 to 12 positive numbers")
        for m in self.channel_mult:
            ch = int(m * self.model_channels)
            if ch < 32 or ch % 32:
                raise ValueError(f"UNetConfig: model_channels {self.model_channels} x channel_mult {m} = {ch} "
                                 "channels, not a multiple of the 32 GroupNorm groups")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            fail("dropout", "a number in [0, 1)")
        if self.num_classes is not None and (not is_int(self.num_classes) or self.num_classes < 1):
            fail("num_classes", "null or a positive integer")
        for name in ("conv_resample", "use_checkpoint", "use_fp16", "use_scale_shift_norm", "resblock_updown",
                     "use_new_attention_order"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")
        for name in ("num_heads", "num_head_channels", "num_heads_upsample"):
            v = getattr(self, name)
            if not is_int(v) or not (v == -1 or 1 <= v <= 4096):
                fail(name, "-1 or an integer in [1, 4096]")
        if self.num_head_channels == -1 and self.num_heads < 1:
            fail("num_heads", "a positive integer when num_head_channels is -1")

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def create_model_config(image_size: int, num_channels: int, num_res_blocks: int, channel_mult: str = "",
                        learn_sigma: bool = False, class_cond: bool = False, use_checkpoint: bool = False,
                        attention_resolutions: str = "16", num_heads: int = 1, num_head_channels: int = -1,
                        num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                        dropout: float = 0.0, resblock_updown: bool = False, use_fp16: bool = False,
                        use_new_attention_order: bool = False, in_channels: int = 3,
                        num_classes: int = 1000) -> UNetConfig:
    """A UNetConfig from guided-diffusion's `create_model` flags (the published checkpoints' settings).

    `attention_resolutions` are feature-map sizes ("32,16,8"), converted to downsample rates;
    `channel_mult` "" picks the default for the image size.
    """
    if channel_mult in ("", None):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size {image_size}; expected one of "
                             f"{sorted(DEFAULT_CHANNEL_MULT)} or an explicit channel_mult like '1,2,2'")
        mult = DEFAULT_CHANNEL_MULT[image_size]
    elif isinstance(channel_mult, str):
        mult = tuple(int(m) for m in channel_mult.split(","))
    else:
        mult = tuple(channel_mult)
    res = [int(r) for r in str(attention_resolutions).split(",") if r.strip()]
    for r in res:
        if r < 1 or image_size % r:
            raise ValueError(f"attention resolution {r} does not divide image_size {image_size}")
    return UNetConfig(
        image_size=image_size, in_channels=in_channels, model_channels=num_channels,
        out_channels=2 * in_channels if learn_sigma else in_channels, num_res_blocks=num_res_blocks,
        attention_resolutions=tuple(image_size // r for r in res), dropout=dropout, channel_mult=mult,
        num_classes=num_classes if class_cond else None, use_checkpoint=use_checkpoint, use_fp16=use_fp16,
        num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order)


# The published models (and the shipped prior) by name, as guided-diffusion `create_model` arguments: the
# one preset vocabulary of the task configs (`configs/<task>.py:<preset>`), the converter (`--model`) and
# the benchmarks (which pass the same arguments to the official PyTorch `create_model`).
PRESETS = {
    # ffhq_10m.pt, the DPS paper's FFHQ 256 prior.
    "ffhq256": dict(image_size=256, num_channels=128, num_res_blocks=1, learn_sigma=True, attention_resolutions="16",
                    num_heads=4, num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True),
    # 256x256_diffusion_uncond.pt, guided-diffusion's unconditional ImageNet 256 model.
    "imagenet256": dict(image_size=256, num_channels=256, num_res_blocks=2, learn_sigma=True,
                        attention_resolutions="32,16,8", num_heads=4, num_head_channels=64,
                        use_scale_shift_norm=True, resblock_updown=True),
    # dps_jax/assets/fmnist32.msgpack, the 32 x 32 Fashion-MNIST prior trained by dps_jax.train.prior.
    "fmnist32": dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2", in_channels=1,
                     attention_resolutions="8", num_heads=4, use_scale_shift_norm=True, resblock_updown=True,
                     dropout=0.1),
}


def preset(name: str) -> UNetConfig:
    try:
        return create_model_config(**PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}") from None


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding [cos(t w_i), sin(t w_i)], w_i = max_period^(-i / (dim // 2)); (N,) -> (N, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def GroupNorm32(name, act=True):
    """GroupNorm with 32 groups, eps 1e-5, in float32 (as guided-diffusion), then SiLU unless act=False."""
    return GroupNormAct(groups=32, epsilon=1e-5, act=act, name=name)


def _conv(features, name, dtype, kernel=3, stride=1):
    pad = kernel // 2
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                dtype=dtype, name=name)


def upsample_nearest(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x):
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
    out_channels: int
    dropout: float
    use_scale_shift_norm: bool
    up: bool = False
    down: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb, deterministic: bool = True):
        in_ch = x.shape[-1]
        h = GroupNorm32("in_layers_0")(x).astype(self.dtype)
        if self.up:
            h, x = upsample_nearest(h), upsample_nearest(x)
        elif self.down:
            h, x = avg_pool2(h), avg_pool2(x)
        h = _conv(self.out_channels, "in_layers_2", self.dtype)(h)
        emb_out = nn.Dense(2 * self.out_channels if self.use_scale_shift_norm else self.out_channels,
                           dtype=self.dtype, name="emb_layers_1")(nn.silu(emb))
        emb_out = emb_out[:, None, None, :].astype(jnp.float32)
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = GroupNorm32("out_layers_0")(h, scale, shift)
        else:
            h = GroupNorm32("out_layers_0")(h.astype(jnp.float32) + emb_out)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic).astype(self.dtype)
        h = _conv(self.out_channels, "out_layers_3", self.dtype)(h)
        if self.out_channels != in_ch:
            x = _conv(self.out_channels, "skip_connection", self.dtype, kernel=1)(x)
        return x.astype(jnp.float32) + h.astype(jnp.float32)


def attention(q, k, v):
    """softmax(q k^T / sqrt(C)) v per head. q, k, v: (N, T, heads, C) -> (N, T, heads, C).

    q and k are each scaled by C^(-1/4) before their product (the same logits, smaller in bfloat16); the
    softmax is always float32.
    """
    s = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))
    w = jnp.einsum("bthc,bshc->bhts", q * s, k * s)
    w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshc->bthc", w, v)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, heads split from one qkv projection (see `attention`)."""
    num_heads: int
    new_order: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        heads, ch = self.num_heads, c // self.num_heads
        xs = x.reshape(b, hh * ww, c)
        qkv = nn.Dense(3 * c, dtype=self.dtype, name="qkv")(GroupNorm32("norm", act=False)(xs).astype(self.dtype))
        if self.new_order:
            # Channels of qkv ordered (q|k|v, head, ch): split q, k, v first.
            q, k, v = (qkv.reshape(b, hh * ww, 3, heads, ch)[:, :, i] for i in range(3))
        else:
            # Legacy order (head, q|k|v, ch): split heads first.
            q, k, v = (qkv.reshape(b, hh * ww, heads, 3, ch)[:, :, :, i] for i in range(3))
        a = attention(q, k, v).reshape(b, hh * ww, c)
        h = nn.Dense(c, dtype=self.dtype, name="proj_out")(a)
        return (xs.astype(jnp.float32) + h.astype(jnp.float32)).reshape(b, hh, ww, c)


class UNet(nn.Module):
    """guided-diffusion's UNetModel. __call__(x (N, H, W, C), t (N,), y (N,) labels or None)."""
    config: UNetConfig
    dtype: Any = jnp.float32

    def _heads(self, ch, upsample):
        config = self.config
        if config.num_head_channels != -1:
            if ch % config.num_head_channels:
                raise ValueError(f"{ch} channels are not divisible by num_head_channels {config.num_head_channels}")
            return ch // config.num_head_channels
        n = config.num_heads_upsample if (upsample and config.num_heads_upsample != -1) else config.num_heads
        if ch % n:
            raise ValueError(f"{ch} channels are not divisible by {n} attention heads")
        return n

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False):
        config, dt = self.config, self.dtype
        if (y is None) != (config.num_classes is None):
            raise ValueError("pass class labels y if and only if the model is class-conditional "
                             f"(num_classes={config.num_classes})")
        if x.ndim != 4 or x.shape[-1] != config.in_channels:
            raise ValueError(f"UNet input must be (N, H, W, {config.in_channels}), got {x.shape}")
        f = config.downsample_factor
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"image size {x.shape[1]} x {x.shape[2]} is not divisible by {f}, "
                             f"the UNet's total downsampling ({len(config.channel_mult)} levels)")
        det = not train
        block = dict(dropout=config.dropout, use_scale_shift_norm=config.use_scale_shift_norm, dtype=dt)
        Res = nn.remat(ResBlock, static_argnums=(3,)) if config.use_checkpoint else ResBlock

        temb_dim = config.model_channels * 4
        emb = timestep_embedding(jnp.broadcast_to(t, (x.shape[0],)), config.model_channels)
        emb = nn.Dense(temb_dim, dtype=dt, name="time_embed_0")(emb)
        emb = nn.Dense(temb_dim, dtype=dt, name="time_embed_2")(nn.silu(emb)).astype(jnp.float32)
        if config.num_classes is not None:
            emb = emb + nn.Embed(config.num_classes, temb_dim, name="label_emb")(y)

        ch = int(config.channel_mult[0] * config.model_channels)
        h = _conv(ch, "input_blocks_0_0", dt)(x.astype(dt)).astype(jnp.float32)
        hs, chans, ds, idx = [h], [ch], 1, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                ch = int(mult * config.model_channels)
                h = Res(ch, name=f"input_blocks_{idx}_0", **block)(h, emb, det)
                if ds in config.attention_resolutions:
                    h = AttentionBlock(self._heads(ch, False), config.use_new_attention_order, dt,
                                       name=f"input_blocks_{idx}_1")(h)
                hs.append(h); chans.append(ch); idx += 1
            if level != len(config.channel_mult) - 1:
                if config.resblock_updown:
                    h = Res(ch, down=True, name=f"input_blocks_{idx}_0", **block)(h, emb, det)
                elif config.conv_resample:
                    h = _conv(ch, f"input_blocks_{idx}_0_op", dt, stride=2)(h.astype(dt)).astype(jnp.float32)
                else:
                    h = avg_pool2(h)
                hs.append(h); chans.append(ch); idx += 1; ds *= 2

        h = Res(ch, name="middle_block_0", **block)(h, emb, det)
        h = AttentionBlock(self._heads(ch, False), config.use_new_attention_order, dt, name="middle_block_1")(h)
        h = Res(ch, name="middle_block_2", **block)(h, emb, det)

        idx = 0
        for level, mult in list(enumerate(config.channel_mult))[::-1]:
            for i in range(config.num_res_blocks + 1):
                chans.pop()
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                ch = int(config.model_channels * mult)
                h = Res(ch, name=f"output_blocks_{idx}_0", **block)(h, emb, det)
                sub = 1
                if ds in config.attention_resolutions:
                    h = AttentionBlock(self._heads(ch, True), config.use_new_attention_order, dt,
                                       name=f"output_blocks_{idx}_{sub}")(h)
                    sub += 1
                if level and i == config.num_res_blocks:
                    if config.resblock_updown:
                        h = Res(ch, up=True, name=f"output_blocks_{idx}_{sub}", **block)(h, emb, det)
                    else:
                        h = upsample_nearest(h)
                        if config.conv_resample:
                            h = _conv(ch, f"output_blocks_{idx}_{sub}_conv", dt)(h.astype(dt)).astype(jnp.float32)
                    ds //= 2
                idx += 1

        h = GroupNorm32("out_0")(h).astype(dt)
        return _conv(config.out_channels, "out_2", dt)(h).astype(jnp.float32)


def init_params(config: UNetConfig, key=None, dtype=jnp.float32):
    """Randomly initialised params for `config` (Flax default initialisers)."""
    key = jax.random.PRNGKey(0) if key is None else key
    s = config.image_size
    x = jnp.zeros((1, s, s, config.in_channels), jnp.float32)
    y = None if config.num_classes is None else jnp.zeros((1,), jnp.int32)
    # Under jit the forward pass that init traces is dead code (only params are returned) and XLA drops
    # it: no full-size activations are computed (1.2 GB less peak memory for the FFHQ 256 model).
    init = jax.jit(lambda k, x, t, y: UNet(config, dtype).init(k, x, t, y)["params"])
    return init(key, x, jnp.zeros((1,), jnp.int32), y)


def param_shapes(config: UNetConfig):
    """The params tree as jax.ShapeDtypeStructs, without computing anything (jax.eval_shape); a fresh tree."""
    return jax.tree_util.tree_map(lambda s: s, _param_shapes(config))


@functools.lru_cache(maxsize=16)
def _param_shapes(config: UNetConfig):
    # Tracing the init takes 1.6 s for the shipped prior's config, and every checkpoint read checks against it.
    return jax.eval_shape(lambda k: init_params(config, k), jax.random.PRNGKey(0))


def normal_params(config: UNetConfig, std: float, seed: int = 0):
    """Params for `config` drawn i.i.d. from N(0, std^2) by numpy, from the shapes alone: no init program
    is compiled or run (benchmarks and tests of the published architectures at random weights)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(std * rng.standard_normal(s.shape, np.float32)),
                                  param_shapes(config))


def count_params(tree) -> int:
    return int(sum(math.prod(l.shape) for l in jax.tree_util.tree_leaves(tree)))
