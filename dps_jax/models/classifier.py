"""A small Fashion-MNIST classifier, the in-domain feature network of FID-FMNIST and KID-FMNIST (the way
MNIST-scale papers measure sample quality: ImageNet's Inception knows nothing of 32 x 32 clothes).

Three stages of 3 x 3 convolution, ReLU and 2 x 2 max pooling, a dense ReLU layer (the penultimate
`features`, what FID is computed on) and the logits. Images (N, S, S, C) in [-1, 1]. The shipped weights
(`dps_jax/assets/fmnist_classifier.msgpack`) are trained by `dps_jax.train.classifier`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.models.config_json import JsonConfig

FORMAT = "dps_jax.classifier"
SHIPPED_CLASSIFIER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                  "fmnist_classifier.msgpack")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(JsonConfig):
    KIND = "classifier"
    WHAT = "ClassifierConfig fields"
    in_channels: int = 1
    image_size: int = 32
    widths: Tuple[int, ...] = (32, 64, 128)      # one conv-relu-pool stage each
    features: int = 256                           # the penultimate width: FID's feature dimension
    classes: int = 10

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths) if isinstance(self.widths, (list, tuple))
                           else self.widths)
        ints = [("in_channels", 1, 4), ("image_size", 8, 1024), ("features", 1, 4096), ("classes", 2, 10000)]
        for name, lo, hi in ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"ClassifierConfig.{name} must be an integer in [{lo}, {hi}], got {v!r:.80}")
        if not isinstance(self.widths, tuple) or not 1 <= len(self.widths) <= 6 or any(
                not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 4096 for w in self.widths):
            raise ValueError(f"ClassifierConfig.widths must be 1 to 6 integers in [1, 4096], got {self.widths!r:.80}")
        if self.image_size % 2 ** len(self.widths):
            raise ValueError(f"ClassifierConfig.image_size {self.image_size} must be divisible by "
                             f"2^{len(self.widths)} (one pooling per stage)")


class Classifier(nn.Module):
    config: ClassifierConfig

    def setup(self):
        self.convs = [nn.Conv(w, (3, 3)) for w in self.config.widths]
        self.hidden = nn.Dense(self.config.features)
        self.logits = nn.Dense(self.config.classes)

    def features(self, x):
        """Penultimate features (N, features) of images (N, S, S, C) in [-1, 1]."""
        c = self.config
        if x.shape[1:] != (c.image_size, c.image_size, c.in_channels):
            raise ValueError(f"the classifier takes images of shape {(c.image_size, c.image_size, c.in_channels)}, "
                             f"got {x.shape[1:]}")
        for conv in self.convs:
            x = nn.max_pool(nn.relu(conv(x)), (2, 2), (2, 2))
        return nn.relu(self.hidden(x.reshape(x.shape[0], -1)))

    def __call__(self, x):
        """Logits (N, classes)."""
        return self.logits(self.features(x))


def param_shapes(config: ClassifierConfig):
    x = jnp.zeros((1, config.image_size, config.image_size, config.in_channels))
    return jax.eval_shape(lambda: Classifier(config).init(jax.random.PRNGKey(0), x))["params"]


def init_params(key, config: ClassifierConfig):
    """He-normal kernels, zero biases (drawn with numpy from the key: no Flax init compile)."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def leaf(path, shape):
        if path[-1].key == "bias":
            return np.zeros(shape.shape, np.float32)
        fan_in = int(np.prod(shape.shape[:-1]))
        return (rng.standard_normal(shape.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, param_shapes(config))


def load(path: str = ""):
    """(params, config) of a classifier file ("" = the shipped one), checked against its config."""
    from dps_jax.models.checkpoint import read_checkpoint

    params, config, _ = read_checkpoint(path or SHIPPED_CLASSIFIER, FORMAT, ClassifierConfig.from_json, param_shapes)
    return params, config
