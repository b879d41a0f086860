"""Map a blur-kernel-space-exploring KernelWizard state_dict (GOPRO_wVAE.pth) onto dps_jax's Flax
KernelWizard (`dps_jax/models/kernel_wizard.py`).

The torch module paths are positions in nn.Sequential lists, so the table is built from the config: the
feature trunk is [conv, lrelu, (conv, lrelu) x d, blocks], the extractor [pad, conv, norm, relu,
(conv, norm, relu) x L, blocks], the reconstruction trunk [blocks, (conv, shuffle, lrelu) x d, conv, lrelu,
conv], and adapter level i is `adapter.model` followed by i `.submodule`. Layouts: conv OIHW -> HWIO,
transposed conv (I, O, H, W) -> HWIO.
"""

from __future__ import annotations

from typing import Dict

import jax
import numpy as np

from checkpoints_convert.mapping import convert_mapped
from dps_jax.models.kernel_wizard import KernelWizardConfig, param_shapes

_LEAF = {"kernel": "weight", "bias": "bias"}
_EXTRACTOR_CONV = {"conv1": 1, "conv2": 5}      # positions in [pad, conv, norm, relu, pad, conv, norm]


def torch_module(config: KernelWizardConfig, module: str, inner: str = "") -> str:
    """The torch module path of the Flax module `module` (e.g. "feat_blocks_3") and its child `inner`."""
    d, L, B = config.feature_downsamples, config.adapter_levels, config.back_blocks
    kind, _, idx = module.rpartition("_")
    if not idx.isdigit():
        kind, idx = module, "0"
    i = int(idx)
    table = {
        "feat_in": lambda: "feature_extractor.0",
        "feat_down": lambda: f"feature_extractor.{2 + 2 * i}",
        "feat_blocks": lambda: f"feature_extractor.{2 + 2 * d + i}.{inner}",
        "ext_in": lambda: "kernel_extractor.model.1",
        "ext_down": lambda: f"kernel_extractor.model.{4 + 3 * i}",
        "ext_blocks": lambda: f"kernel_extractor.model.{4 + 3 * L + i}.conv_block.{_EXTRACTOR_CONV[inner]}",
        "adapt_down": lambda: "adapter.model" + ".submodule" * i + (".down.0" if i == 0 else ".down.1"),
        "adapt_up": lambda: "adapter.model" + ".submodule" * i + ".up.1",
        "recon_blocks": lambda: f"recon_trunk.{i}.{inner}",
        "recon_up": lambda: f"recon_trunk.{B + 3 * i}",
        "recon_tail": lambda: f"recon_trunk.{B + 3 * d}",
        "recon_out": lambda: f"recon_trunk.{B + 3 * d + 2}",
    }
    return table[kind]()


def torch_key(config: KernelWizardConfig, path) -> str:
    """The torch state_dict key of a Flax params path, e.g. ("recon_up_1", "kernel") -> "recon_trunk.23.weight"."""
    module, *inner, leaf = path
    return torch_module(config, module, *inner) + "." + _LEAF[leaf]


def _transposed(names) -> bool:
    return names[0].startswith("adapt_up")


def _torch_shape(names, flax_shape):
    if names[-1] != "kernel":
        return tuple(flax_shape)
    kh, kw, i, o = flax_shape
    return (i, o, kh, kw) if _transposed(names) else (o, i, kh, kw)


def _to_flax(names, w):
    if names[-1] != "kernel":
        return w
    return w.transpose(2, 3, 0, 1) if _transposed(names) else w.transpose(2, 3, 1, 0)


def convert_state_dict(state_dict: Dict[str, np.ndarray], config: KernelWizardConfig, dtype=np.float32,
                       consume: bool = False, allow_nonfinite: bool = False, drop_unexpected=()):
    """The Flax params tree of `config`'s KernelWizard from a torch state_dict (checks as `convert_mapped`)."""
    expected = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(config))[0]:
        names = tuple(p.key for p in path)
        expected[torch_key(config, names)] = (names, leaf.shape)
    return convert_mapped(state_dict, expected, lambda key, names, got: _torch_shape(names, expected[key][1]),
                          lambda key, names, w: _to_flax(names, w), dtype, consume, allow_nonfinite, drop_unexpected)


def torch_shapes(config: KernelWizardConfig) -> Dict[str, tuple]:
    """Every key of the torch state_dict of `config`'s KernelWizard, with its shape."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(config))[0]:
        names = tuple(p.key for p in path)
        out[torch_key(config, names)] = _torch_shape(names, leaf.shape)
    return out
