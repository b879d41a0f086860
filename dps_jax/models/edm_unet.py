"""EDM's SongUNet (Karras et al. 2022, NVlabs/edm: its DDPM++ and NCSN++ networks) and DhariwalUNet (its ADM,
ImageNet 64) as pure JAX functions over a params dict keyed by the torch state_dict's own keys
("enc.64x64_conv.weight"), NHWC images.

    out = forward(params, config, x, noise_label)          # x (N, H, W, C), noise_label (N,) -> (N, H, W, C)

A functional port rather than Flax modules: the network's layer names ("64x64_block0", "8x8_aux_norm") are its
structure, and keeping them as keys makes the converter a layout change only (conv weights stay OIHW, linear
(out, in)). `param_shapes(config)` is the key table, built as EDM's constructor builds its layers; the
converter checks a pickle's tensors against it. `EDMApply` reads it as a dps_jax prior under the
preconditioning it was trained with (EDM, VP or VE; `dps_jax.prior`).

Implemented: SongUNet with positional and Fourier noise embeddings, the 'standard', 'skip' and 'residual' encoders, the
'standard' and 'skip' decoders (score_sde's progressive input / output pyramids), any symmetric resampling filter; DhariwalUNet; a class-conditional network reads one fixed
class (`class_label`; -1: the zero label EDM itself feeds when given none). Augmentation labels are not used
at sampling time. Proved against EDM's forward pass (tests/fixtures/edm_songunet_small.npz).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.models.config_json import JsonConfig

FORMAT = "dps_jax.edm_unet"
# EDM's preconditionings, and "DiscreteVP": a network fed the integer timestep of a linear DDPM table (score_sde's
# discrete DDPM++ / NCSN++), as dps_jax reads it.
PRECONDITIONINGS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve", "DiscreteVP": "discrete_vp"}


@dataclasses.dataclass(frozen=True)
class EDMUNetConfig(JsonConfig):
    """SongUNet's or DhariwalUNet's constructor arguments (EDM's names; `model_type` says which), plus the
    preconditioning it was trained under and the class a class-conditional network is read at."""
    KIND = "EDM UNet"
    WHAT = "SongUNet or DhariwalUNet arguments"
    img_resolution: int = 64
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 128
    channel_mult: Tuple[int, ...] = (1, 2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: Tuple[int, ...] = (16,)
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    encoder_type: str = "standard"
    decoder_type: str = "standard"
    resample_filter: Tuple[int, ...] = (1, 1)
    augment_dim: int = 0
    model_type: str = "SongUNet"
    label_dim: int = 0
    class_label: int = -1                # the class a class-conditional network is read at; -1: none (zeros)
    channels_per_head: int = 64          # DhariwalUNet's attention heads
    precond: str = "EDMPrecond"
    sigma_data: float = 0.5
    vp_timesteps: int = 1000             # VPPrecond's M; DiscreteVP: the steps of its linear table

    def __post_init__(self):
        for name in ("channel_mult", "attn_resolutions", "resample_filter"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        checks = [("embedding_type", self.embedding_type in ("positional", "fourier"), "'positional' or 'fourier'"),
                  ("encoder_type", self.encoder_type in ("standard", "skip", "residual"),
                   "'standard', 'skip' or 'residual'"),
                  ("decoder_type", self.decoder_type in ("standard", "skip"), "'standard' or 'skip'"),
                  ("precond", self.precond in PRECONDITIONINGS, f"one of {sorted(PRECONDITIONINGS)}"),
                  ("model_type", self.model_type in ("SongUNet", "DhariwalUNet"), "'SongUNet' or 'DhariwalUNet'"),
                  ("class_label", -1 <= self.class_label < max(self.label_dim, 0), f"-1 .. {self.label_dim - 1}"),
                  ("img_resolution", isinstance(self.img_resolution, int) and
                   self.img_resolution % 2 ** (len(self.channel_mult) - 1) == 0, "divisible by the downsampling"),
                  ("resample_filter", len(self.resample_filter) >= 1 and
                   tuple(self.resample_filter) == tuple(self.resample_filter)[::-1], "a symmetric filter")]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{self.KIND}: {name} {getattr(self, name)!r:.60} is not implemented; expected {want}")

    @property
    def image_size(self) -> int:
        return self.img_resolution

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def layers(self):
        """[(section, name, kind, options)] in EDM's constructor order: kind 'conv' (in, out, kernel, up, down,
        fused), 'block' (in, out, up, down, attention), 'norm' (channels)."""
        out, cout, caux = [], self.in_channels, self.in_channels
        song = self.model_type == "SongUNet"
        # DhariwalUNet's blocks attend with cout // channels_per_head heads: none (no attention) below one head
        block = lambda cin, cout, **kw: dict(
            cin=cin, cout=cout, up=kw.get("up", False), down=kw.get("down", False),
            attention=kw.get("attention", False) and (song or cout // self.channels_per_head > 0))
        for level, mult in enumerate(self.channel_mult):
            res = self.img_resolution >> level
            if level == 0:
                first = self.model_channels * (1 if song else mult)
                out.append(("enc", f"{res}x{res}_conv", "conv", dict(cin=cout, cout=first, kernel=3)))
                cout = first
            else:
                out.append(("enc", f"{res}x{res}_down", "block", block(cout, cout, down=True)))
                if self.encoder_type == "skip":       # the input, resampled to this level, added by a 1 x 1 conv
                    out.append(("enc", f"{res}x{res}_aux_down", "conv", dict(cin=caux, cout=caux, kernel=0, down=True)))
                    out.append(("enc", f"{res}x{res}_aux_skip", "conv", dict(cin=caux, cout=cout, kernel=1)))
                if self.encoder_type == "residual":
                    out.append(("enc", f"{res}x{res}_aux_residual", "conv",
                                dict(cin=caux, cout=cout, kernel=3, down=True, fused=True)))
                    caux = cout
            for idx in range(self.num_blocks):
                cin, cout = cout, self.model_channels * mult
                out.append(("enc", f"{res}x{res}_block{idx}", "block",
                            block(cin, cout, attention=res in self.attn_resolutions)))
        skips = [o["cout"] for s, n, k, o in out if "aux" not in n]
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            res = self.img_resolution >> level
            if level == len(self.channel_mult) - 1:
                out.append(("dec", f"{res}x{res}_in0", "block", block(cout, cout, attention=True)))
                out.append(("dec", f"{res}x{res}_in1", "block", block(cout, cout)))
            else:
                out.append(("dec", f"{res}x{res}_up", "block", block(cout, cout, up=True)))
            for idx in range(self.num_blocks + 1):
                cin, cout = cout + skips.pop(), self.model_channels * mult
                attend = res in self.attn_resolutions and (idx == self.num_blocks or not song)
                out.append(("dec", f"{res}x{res}_block{idx}", "block", block(cin, cout, attention=attend)))
            if level == 0 and not song:
                out.append(("", "out_norm", "norm", dict(cout=cout)))
                out.append(("", "out_conv", "conv", dict(cin=cout, cout=self.out_channels, kernel=3)))
            elif level == 0 or self.decoder_type == "skip":     # 'skip': an output image at every level, summed
                if level < len(self.channel_mult) - 1 and self.decoder_type == "skip":
                    out.append(("dec", f"{res}x{res}_aux_up", "conv",
                                dict(cin=self.out_channels, cout=self.out_channels, kernel=0, up=True)))
                out.append(("dec", f"{res}x{res}_aux_norm", "norm", dict(cout=cout)))
                out.append(("dec", f"{res}x{res}_aux_conv", "conv", dict(cin=cout, cout=self.out_channels, kernel=3)))
        return out


def _filter(config) -> np.ndarray:
    f = np.asarray(config.resample_filter, np.float32)
    return (np.outer(f, f) / f.sum() ** 2)[None, None]


def param_shapes(config: EDMUNetConfig) -> Dict[str, tuple]:
    """{torch key (without the 'model.' prefix): shape} of every parameter and buffer the network uses."""
    shapes = {}
    song = config.model_type == "SongUNet"
    noise = config.model_channels * (config.channel_mult_noise if song else 1)
    emb = config.model_channels * config.channel_mult_emb
    if config.embedding_type == "fourier" and song:
        shapes["map_noise.freqs"] = (noise // 2,)
    if config.augment_dim:
        shapes["map_augment.weight"] = (noise, config.augment_dim)
    if config.label_dim:
        shapes["map_label.weight"] = (emb if not song else noise, config.label_dim)
        if song:
            shapes["map_label.bias"] = (noise,)
    shapes.update({"map_layer0.weight": (emb, noise), "map_layer0.bias": (emb,),
                   "map_layer1.weight": (emb, emb), "map_layer1.bias": (emb,)})
    k = len(config.resample_filter)

    def conv(name, cin, cout, kernel, resample=False):
        if kernel:
            shapes[name + ".weight"] = (cout, cin, kernel, kernel)
            shapes[name + ".bias"] = (cout,)
        if resample:
            shapes[name + ".resample_filter"] = (1, 1, k, k)

    for section, name, kind, o in config.layers():
        p = f"{section}.{name}" if section else name
        if kind == "conv":
            conv(p, o["cin"], o["cout"], o["kernel"], o.get("down", False) or o.get("up", False))
        elif kind == "norm":
            shapes[p + ".weight"] = shapes[p + ".bias"] = (o["cout"],)
        else:
            cin, cout, resample = o["cin"], o["cout"], o["up"] or o["down"]
            shapes[p + ".norm0.weight"] = shapes[p + ".norm0.bias"] = (cin,)
            conv(p + ".conv0", cin, cout, 3, resample)
            affine = cout * (1 if song else 2)                     # DhariwalUNet: scale and shift
            shapes[p + ".affine.weight"], shapes[p + ".affine.bias"] = (affine, emb), (affine,)
            shapes[p + ".norm1.weight"] = shapes[p + ".norm1.bias"] = (cout,)
            conv(p + ".conv1", cout, cout, 3)
            if cout != cin or resample:       # SongUNet projects its resampled skips; DhariwalUNet only a width change
                conv(p + ".skip", cin, cout, 1 if song or cout != cin else 0, resample)
            if o["attention"]:
                shapes[p + ".norm2.weight"] = shapes[p + ".norm2.bias"] = (cout,)
                conv(p + ".qkv", cout, 3 * cout, 1)
                conv(p + ".proj", cout, cout, 1)
    return shapes


def _group_norm(p, name, x, eps):
    c = x.shape[-1]
    groups = min(32, c // 4)
    n, h, w, _ = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) / jnp.sqrt(var + eps)
    return g.reshape(n, h, w, c) * p[name + ".weight"] + p[name + ".bias"]


def _conv2d(x, w, stride=1, padding=0, groups=1, lhs_dilation=(1, 1)):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2, lhs_dilation=lhs_dilation,
                                        dimension_numbers=("NHWC", "OIHW", "NHWC"), feature_group_count=groups)


def _conv(p, name, x, up=False, down=False, fused=False):
    """EDM's Conv2d: an optional resampling by its FIR filter (transposed for up), then the convolution."""
    w, b, f = p.get(name + ".weight"), p.get(name + ".bias"), p.get(name + ".resample_filter")
    w_pad = w.shape[-1] // 2 if w is not None else 0
    f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
    if fused and down and w is not None:
        x = _conv2d(x, w, padding=w_pad + f_pad)
        x = _conv2d(x, jnp.tile(f, (x.shape[-1], 1, 1, 1)), stride=2, groups=x.shape[-1])
    else:
        c = x.shape[-1]
        if up:      # conv_transpose2d(stride 2, padding f_pad) = dilated input, padded k - 1 - f_pad, flipped kernel
            k = f.shape[-1]
            x = _conv2d(x, jnp.tile(4 * f[..., ::-1, ::-1], (c, 1, 1, 1)), padding=k - 1 - f_pad, groups=c,
                        lhs_dilation=(2, 2))
        if down:
            x = _conv2d(x, jnp.tile(f, (c, 1, 1, 1)), stride=2, padding=f_pad, groups=c)
        if w is not None:
            x = _conv2d(x, w, padding=w_pad)
    return x + b if b is not None else x


def _linear(p, name, x):
    y = x @ p[name + ".weight"].T
    return y + p[name + ".bias"] if name + ".bias" in p else y


def _block(p, name, x, emb, o, song: bool = True, channels_per_head: int = 64):
    """EDM's UNetBlock as SongUNet builds it (additive embedding, skip scale sqrt(1/2), one attention head, eps
    1e-6) or DhariwalUNet (scale-and-shift embedding, no skip scale, heads of `channels_per_head`, eps 1e-5)."""
    eps = 1e-6 if song else 1e-5
    skip_scale = np.sqrt(0.5) if song else 1.0
    orig = x
    x = _conv(p, name + ".conv0", jax.nn.silu(_group_norm(p, name + ".norm0", x, eps)), up=o["up"], down=o["down"])
    params = _linear(p, name + ".affine", emb)[:, None, None, :]
    if song:
        x = jax.nn.silu(_group_norm(p, name + ".norm1", x + params, eps))
    else:
        scale, shift = jnp.split(params, 2, axis=-1)
        x = jax.nn.silu(shift + _group_norm(p, name + ".norm1", x, eps) * (scale + 1))
    x = _conv(p, name + ".conv1", x)
    has_skip = name + ".skip.weight" in p or name + ".skip.resample_filter" in p
    skip = _conv(p, name + ".skip", orig, up=o["up"], down=o["down"]) if has_skip else orig
    x = (x + skip) * skip_scale
    if o["attention"]:
        n, h, w, c = x.shape
        heads = 1 if song else c // channels_per_head
        d = c // heads
        # channels in the order (head, channel, q / k / v), as EDM reshapes its qkv
        qkv = _conv(p, name + ".qkv", _group_norm(p, name + ".norm2", x, eps)).reshape(n, h * w, heads, d, 3)
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        weights = jax.nn.softmax(jnp.einsum("nqhc,nkhc->nhqk", q, k / np.sqrt(d)), axis=-1)
        a = jnp.einsum("nhqk,nkhc->nqhc", weights, v).reshape(n, h, w, c)
        x = (_conv(p, name + ".proj", a) + x) * skip_scale
    return x


def forward(params, config: EDMUNetConfig, x, noise_label):
    """F(x, noise_label) of a SongUNet or DhariwalUNet: x (N, H, W, C), noise_label (N,) -> (N, H, W, out_channels)."""
    p = params
    song = config.model_type == "SongUNet"
    half = config.model_channels * (config.channel_mult_noise if song else 1) // 2
    if config.embedding_type == "fourier" and song:
        freqs = 2 * np.pi * p["map_noise.freqs"]
    else:       # SongUNet's positional embedding ends at the last frequency (endpoint), DhariwalUNet's before
        freqs = (1 / 10000) ** (jnp.arange(half, dtype=jnp.float32) / (half - (1 if song else 0)))
    arg = noise_label[:, None] * freqs[None]
    # SongUNet swaps EDM's [cos, sin] to [sin, cos]; DhariwalUNet keeps it
    emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)] if song else [jnp.cos(arg), jnp.sin(arg)], axis=-1)
    label = None
    if config.label_dim:
        label = jnp.zeros((x.shape[0], config.label_dim), jnp.float32)
        if config.class_label >= 0:
            label = label.at[:, config.class_label].set(1.0)
    if song:
        if label is not None:
            emb = emb + _linear(p, "map_label", label * np.sqrt(config.label_dim))
        emb = jax.nn.silu(_linear(p, "map_layer1", jax.nn.silu(_linear(p, "map_layer0", emb))))
    else:
        emb = _linear(p, "map_layer1", jax.nn.silu(_linear(p, "map_layer0", emb)))
        if label is not None:
            emb = emb + label @ p["map_label.weight"].T
        emb = jax.nn.silu(emb)
    block = lambda key, x, o: _block(p, key, x, emb, o, song, config.channels_per_head)
    skips, aux = [], x
    layers = config.layers()
    for section, name, kind, o in layers:
        if section != "enc":
            continue
        key = f"enc.{name}"
        if "aux_down" in name:
            aux = _conv(p, key, aux, down=True)
        elif "aux_skip" in name:
            x = skips[-1] = x + _conv(p, key, aux)
        elif "aux_residual" in name:
            x = aux = skips[-1] = (x + _conv(p, key, aux, down=True, fused=True)) / np.sqrt(2)
        else:
            x = _conv(p, key, x) if kind == "conv" else block(key, x, o)
            skips.append(x)
    out = None
    for section, name, kind, o in layers:
        if section == "enc":
            continue
        key = f"{section}.{name}" if section else name
        if name == "out_norm":
            tmp = _group_norm(p, key, x, 1e-5)
        elif name == "out_conv":
            out = _conv(p, key, jax.nn.silu(tmp))
        elif "aux_up" in name:
            out = _conv(p, key, out, up=True)
        elif "aux_norm" in name:
            tmp = _group_norm(p, key, x, 1e-6)
        elif "aux_conv" in name:
            tmp = _conv(p, key, jax.nn.silu(tmp))
            out = tmp if out is None else out + tmp
        else:
            if x.shape[-1] != o["cin"]:
                x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = block(key, x, o)
    return out


@dataclasses.dataclass(frozen=True)
class EDMApply:
    """A SongUNet read as a dps_jax prior (`Prior.apply` for one image): EDMPrecond -> process 'edm' (fed
    c_in x and sigma; noise label log(sigma) / 4); VPPrecond -> 'vp' epsilon (fed x_s and (M - 1) s);
    VEPrecond -> 've' epsilon (fed x and sigma; its F is -epsilon, noise label log(sigma / 2)); DiscreteVP ->
    'discrete_vp' epsilon (fed x_t and t)."""
    config: EDMUNetConfig

    def __call__(self, params, x, cond):
        cond = jnp.asarray(cond, jnp.float32).reshape(1)
        kind = self.config.precond
        label = jnp.log(cond) / 4 if kind == "EDMPrecond" else jnp.log(0.5 * cond) if kind == "VEPrecond" else cond
        out = forward(params, self.config, x[None], label)[0]
        return -out if kind == "VEPrecond" else out


def prior_options(config: EDMUNetConfig) -> dict:
    """process / mean_type / sigma_data of the dps_jax prior that reads this network."""
    process = PRECONDITIONINGS[config.precond]
    options = {"process": process, "mean_type": "edm" if process == "edm" else "epsilon",
               "sigma_data": float(config.sigma_data)}
    if process == "discrete_vp":
        options["schedule"] = ("linear", int(config.vp_timesteps))
    return options
