"""diffusers' `UNet2DModel` (the DDPM networks of google/ddpm-cifar10-32, ddpm-celebahq-256, ddpm-ema-church-256
and the models users train with diffusers) in Flax, NHWC.

    config = DiffusersUNetConfig.from_diffusers(json.load(open("unet/config.json")))
    out = DiffusersUNet(config).apply({"params": params}, x, t)   # x (N, H, W, C), t (N,) -> (N, H, W, C_out)

Written from the architecture (a DDPM UNet: sinusoidal time embedding, residual blocks with GroupNorm and a
per-block time projection, single- or multi-head self-attention blocks, strided-conv downsampling, nearest
upsampling) and proved against diffusers' own forward pass (tests/fixtures/diffusers_unet.npz). Flax
submodule names are the torch module paths, a list index joined by '_' ("down_blocks_1", "resnets_0",
"to_out_0"): `torch_key` gives the state_dict key of a params path.

Supported: positional time embeddings; block types DownBlock2D, AttnDownBlock2D, UpBlock2D, AttnUpBlock2D;
the UNetMidBlock2D (with or without attention); conv down/upsampling; SiLU; default or scale-shift time
conditioning. Other settings (Fourier time embeddings, class conditioning, FIR or ResNet resampling) are
refused by name when the config is read.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dps_jax.models.config_json import JsonConfig
from dps_jax.models.layers import Conv, GroupNormAct

FORMAT = "dps_jax.diffusers_unet2d"
DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
# UNet2DModel arguments whose other values this port does not implement: the value it takes.
FIXED = {"time_embedding_type": "positional", "mid_block_type": "UNetMidBlock2D", "downsample_type": "conv",
         "upsample_type": "conv", "class_embed_type": None, "num_class_embeds": None, "attn_norm_num_groups": None}
# Arguments that change nothing in the forward pass of a trained network (or only its training).
IGNORED = ("dropout", "num_train_timesteps")


@dataclasses.dataclass(frozen=True)
class DiffusersUNetConfig(JsonConfig):
    """The arguments of diffusers' `UNet2DModel` this port implements (their diffusers names and defaults)."""
    KIND = "diffusers UNet2DModel"
    WHAT = "UNet2DModel arguments"
    sample_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    freq_shift: float = 0.0
    flip_sin_to_cos: bool = True
    down_block_types: Tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    up_block_types: Tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: Tuple[int, ...] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    act_fn: str = "silu"
    attention_head_dim: Optional[int] = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    time_embedding_dim: Optional[int] = None

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.block_out_channels)
        if n < 1 or len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"{self.KIND}: block_out_channels, down_block_types and up_block_types must have one "
                             f"entry per resolution; got {n}, {len(self.down_block_types)}, {len(self.up_block_types)}")
        bad = [b for b in self.down_block_types if b not in DOWN_BLOCKS] + \
              [b for b in self.up_block_types if b not in UP_BLOCKS]
        if bad:
            raise ValueError(f"{self.KIND}: block type {bad[0]!r} is not implemented; expected down blocks "
                             f"{DOWN_BLOCKS} and up blocks {UP_BLOCKS}")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"{self.KIND}: act_fn {self.act_fn!r} is not implemented; expected 'silu'")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"{self.KIND}: resnet_time_scale_shift {self.resnet_time_scale_shift!r} is not "
                             "implemented; expected 'default' or 'scale_shift'")
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"{self.KIND}: downsample_padding must be 0 or 1, got {self.downsample_padding!r}")
        for c in self.block_out_channels:
            if not (isinstance(c, int) and c > 0 and c % self.norm_num_groups == 0):
                raise ValueError(f"{self.KIND}: block_out_channels {self.block_out_channels} must be positive "
                                 f"multiples of norm_num_groups {self.norm_num_groups}")
        if self.attention_head_dim is not None and any(c % self.attention_head_dim for c in self.block_out_channels):
            raise ValueError(f"{self.KIND}: attention_head_dim {self.attention_head_dim} must divide every entry "
                             f"of block_out_channels {self.block_out_channels}")
        if not (isinstance(self.sample_size, int) and self.sample_size % self.downsample_factor == 0):
            raise ValueError(f"{self.KIND}: sample_size {self.sample_size!r} must be a multiple of "
                             f"{self.downsample_factor}, the network's downsampling")
        if not (isinstance(self.layers_per_block, int) and 1 <= self.layers_per_block <= 16):
            raise ValueError(f"{self.KIND}: layers_per_block must be 1 .. 16, got {self.layers_per_block!r}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        return self.sample_size

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @classmethod
    def from_diffusers(cls, d: dict) -> "DiffusersUNetConfig":
        """The config from a diffusers `config.json` of a UNet2DModel: its bookkeeping keys (_class_name,
        _diffusers_version, ...) and the arguments that do not change a trained network's output are left
        out; an argument at a value this port does not implement is refused by name."""
        if not isinstance(d, dict):
            raise ValueError(f"a diffusers config must be a JSON object, got a {type(d).__name__}")
        name = d.get("_class_name", "UNet2DModel")
        if name != "UNet2DModel":
            raise ValueError(f"the diffusers model is a {str(name)[:60]!r}; only UNet2DModel is implemented")
        for key, want in FIXED.items():
            if key in d and d[key] != want:
                raise ValueError(f"diffusers UNet2DModel {key}={d[key]!r:.60} is not implemented; expected {want!r}")
        kept = {k: v for k, v in d.items() if not k.startswith("_") and k not in FIXED and k not in IGNORED}
        if kept.get("sample_size") is not None and not isinstance(kept["sample_size"], int):
            size = kept["sample_size"]
            if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
                kept["sample_size"] = int(size[0])
        return cls.from_dict(kept)


def torch_key(path) -> str:
    """The diffusers state_dict key of a Flax params path: ("down_blocks_0", "resnets_1", "conv1", "kernel")
    -> "down_blocks.0.resnets.1.conv1.weight"."""
    *modules, leaf = path
    parts = [re.sub(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|to_out)_(\d+)$",
                    r"\1.\2", m) for m in modules]
    return ".".join(parts + [{"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]])


def timestep_embedding(t, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0):
    """Sinusoidal embedding of timesteps t (N,) -> (N, dim): frequencies exp(-log(max_period) i / (dim/2 -
    freq_shift)), sines then cosines (cosines first when flipped), zero-padded to an odd dim."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added (or scale-shift) between; 1x1 conv shortcut when the
    width changes; (x + h) / output_scale_factor."""
    out_channels: int
    groups: int
    eps: float
    scale_shift: bool = False
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x, temb):
        h = GroupNormAct(self.groups, self.eps, name="norm1")(x)
        h = Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(h)
        proj = nn.Dense(self.out_channels * (2 if self.scale_shift else 1), name="time_emb_proj")(nn.silu(temb))
        proj = proj[:, None, None, :]
        if self.scale_shift:
            scale, shift = jnp.split(proj, 2, axis=-1)
            h = nn.silu(GroupNormAct(self.groups, self.eps, act=False, name="norm2")(h) * (1 + scale) + shift)
        else:
            h = GroupNormAct(self.groups, self.eps, name="norm2")(h + proj)
        h = Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = Conv(self.out_channels, (1, 1), name="conv_shortcut")(x)
        return (x + h) / self.output_scale_factor


class Attention(nn.Module):
    """Self-attention over the H x W positions (after a GroupNorm unless `norm` is off), heads of `head_dim`
    channels, residual, divided by `rescale`."""
    head_dim: int
    groups: int
    eps: float
    rescale: float = 1.0
    norm: bool = True

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        heads = c // self.head_dim
        y = GroupNormAct(self.groups, self.eps, act=False, name="group_norm")(x) if self.norm else x
        y = y.reshape(n, h * w, c)
        split = lambda a: a.reshape(n, h * w, heads, self.head_dim)
        q, k, v = (split(nn.Dense(c, name=name)(y)) for name in ("to_q", "to_k", "to_v"))
        weights = jax.nn.softmax(jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(self.head_dim), axis=-1)
        out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, h * w, c)
        out = nn.Dense(c, name="to_out_0")(out).reshape(n, h, w, c)
        return (out + x) / self.rescale


class DiffusersUNet(nn.Module):
    """UNet2DModel's forward pass: __call__(x (N, H, W, in_channels), t (N,)) -> (N, H, W, out_channels)."""
    config: DiffusersUNetConfig

    @nn.compact
    def __call__(self, x, t):
        cfg = self.config
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (x.shape[0],))
        ch = cfg.block_out_channels
        temb_dim = cfg.time_embedding_dim or 4 * ch[0]

        if cfg.center_input_sample:
            x = 2 * x - 1.0
        emb = timestep_embedding(t, ch[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = TimeEmbedding(temb_dim, name="time_embedding")(emb)

        h = Conv(ch[0], (3, 3), padding=((1, 1), (1, 1)), name="conv_in")(x)
        skips = [h]
        for i, kind in enumerate(cfg.down_block_types):
            block = DownBlock(cfg, ch[i], kind == "AttnDownBlock2D", i < len(ch) - 1, name=f"down_blocks_{i}")
            h, outs = block(h, emb)
            skips += outs
        h = MidBlock(cfg, name="mid_block")(h, emb)
        for i, kind in enumerate(cfg.up_block_types):
            n = cfg.layers_per_block + 1
            block_skips, skips = skips[-n:], skips[:-n]
            block = UpBlock(cfg, ch[len(ch) - 1 - i], kind == "AttnUpBlock2D", i < len(ch) - 1,
                            name=f"up_blocks_{i}")
            h = block(h, block_skips, emb)
        h = GroupNormAct(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out")(h)
        return Conv(cfg.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv_out")(h)


class TimeEmbedding(nn.Module):
    """linear_1, SiLU, linear_2."""
    dim: int

    @nn.compact
    def __call__(self, emb):
        return nn.Dense(self.dim, name="linear_2")(nn.silu(nn.Dense(self.dim, name="linear_1")(emb)))


def _resnet(cfg: DiffusersUNetConfig, channels: int, name: str, factor: float = 1.0) -> ResnetBlock:
    return ResnetBlock(channels, cfg.norm_num_groups, cfg.norm_eps, cfg.resnet_time_scale_shift == "scale_shift",
                       factor, name=name)


def _attention(cfg: DiffusersUNetConfig, channels: int, name: str, factor: float = 1.0, norm: bool = True) -> Attention:
    # no attention_head_dim: one head over all channels
    return Attention(cfg.attention_head_dim or channels, cfg.norm_num_groups, cfg.norm_eps, factor, norm, name=name)


class DownBlock(nn.Module):
    """DownBlock2D / AttnDownBlock2D: resnets (each followed by attention), then a stride-2 conv; returns the
    output and every intermediate state the up path takes as a skip."""
    cfg: DiffusersUNetConfig
    channels: int
    attend: bool
    downsample: bool

    @nn.compact
    def __call__(self, h, emb):
        outs = []
        for j in range(self.cfg.layers_per_block):
            h = _resnet(self.cfg, self.channels, f"resnets_{j}")(h, emb)
            if self.attend:
                h = _attention(self.cfg, self.channels, f"attentions_{j}")(h)
            outs.append(h)
        if self.downsample:
            # padding 0: one row and column of zeros at the bottom and right only
            pad = ((1, 1), (1, 1)) if self.cfg.downsample_padding == 1 else ((0, 1), (0, 1))
            h = DownsamplerConv(self.channels, pad, name="downsamplers_0")(h)
            outs.append(h)
        return h, outs


class DownsamplerConv(nn.Module):
    channels: int
    padding: tuple

    @nn.compact
    def __call__(self, h):
        return Conv(self.channels, (3, 3), strides=(2, 2), padding=self.padding, name="conv")(h)


class UpsamplerConv(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, h):
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)          # nearest-neighbour x2
        return Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), name="conv")(h)


class MidBlock(nn.Module):
    """UNetMidBlock2D: resnet, attention (unless add_attention is off), resnet at the lowest resolution."""
    cfg: DiffusersUNetConfig

    @nn.compact
    def __call__(self, h, emb):
        c, f = self.cfg.block_out_channels[-1], self.cfg.mid_block_scale_factor
        h = _resnet(self.cfg, c, "resnets_0", f)(h, emb)
        if self.cfg.add_attention:
            # UNetMidBlock2D normalises before its attention only with the default time conditioning
            h = _attention(self.cfg, c, "attentions_0", f, self.cfg.resnet_time_scale_shift == "default")(h)
        return _resnet(self.cfg, c, "resnets_1", f)(h, emb)


class UpBlock(nn.Module):
    """UpBlock2D / AttnUpBlock2D: per layer, the last skip concatenated, a resnet (and attention); then nearest
    x2 and a conv."""
    cfg: DiffusersUNetConfig
    channels: int
    attend: bool
    upsample: bool

    @nn.compact
    def __call__(self, h, skips, emb):
        for j in range(self.cfg.layers_per_block + 1):
            h = jnp.concatenate([h, skips[-1 - j]], axis=-1)
            h = _resnet(self.cfg, self.channels, f"resnets_{j}")(h, emb)
            if self.attend:
                h = _attention(self.cfg, self.channels, f"attentions_{j}")(h)
        if self.upsample:
            h = UpsamplerConv(self.channels, name="upsamplers_0")(h)
        return h


def init_params(config: DiffusersUNetConfig, key):
    s = config.sample_size
    x = jnp.zeros((1, s, s, config.in_channels), jnp.float32)
    return DiffusersUNet(config).init(key, x, jnp.zeros((1,), jnp.float32))["params"]


def param_shapes(config: DiffusersUNetConfig):
    """The params tree as jax.ShapeDtypeStructs, without computing anything."""
    return jax.eval_shape(lambda k: init_params(config, k), jax.random.PRNGKey(0))


def torch_shapes(config: DiffusersUNetConfig) -> dict:
    """{state_dict key: torch shape} of the model: conv kernels (O, I, kh, kw), linear (O, I)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(config))[0]:
        names = tuple(p.key for p in path)
        shape = leaf.shape
        if names[-1] == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else (shape[1], shape[0])
        out[torch_key(names)] = tuple(shape)
    return out
