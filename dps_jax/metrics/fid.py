"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) of two image sets, on a feature network.

    net = fid.load_features("fid_inception.msgpack")   # pytorch-fid's Inception (2048-d), or "" for the
    f_a, f_b = net(images_a), net(images_b)             # shipped Fashion-MNIST classifier (FID-FMNIST)
    fid.frechet_distance(*fid.statistics(f_a), *fid.statistics(f_b))
    fid.kid(f_a, f_b)                                   # (mean, std) over subsets

The Frechet distance of N(mu1, S1) and N(mu2, S2) is |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1 S2)^(1/2),
in float64. tr (S1 S2)^(1/2) is the sum of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2),
which is symmetric positive semi-definite: two symmetric eigendecompositions, no general matrix square
root, no complex parts to discard, and singular covariances (fewer samples than features) are fine.

KID is the unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets of
`subset_size` (as torch-fidelity and clean-fid: 100 subsets of 1000, fewer when there are fewer samples).
"""

from __future__ import annotations

import os
from typing import Tuple

import jax
import numpy as np

from dps_jax.metrics.batched import map_batches


def statistics(features) -> Tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), float64, unbiased (as numpy.cov)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"statistics need features (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_eigenvalues_clean(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise (|w| below D eps max w) set to 0: the square root
    would turn 1e-16 into 1e-8, and a singular covariance has many such."""
    return np.where(w > len(w) * np.finfo(np.float64).eps * max(w.max(), 0.0), w, 0.0)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_psd_eigenvalues_clean(w))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet distance of two Gaussians (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"Frechet distance of means {mu1.shape}, {mu2.shape} and covariances {s1.shape}, "
                         f"{s2.shape}: expected (D,) and (D, D) for both")
    r = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh((r @ s2 @ r + (r @ s2 @ r).T) / 2)
    tr_covmean = np.sum(np.sqrt(_psd_eigenvalues_clean(eig)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid(features_a, features_b) -> float:
    """FID of two feature sets (N, D), (M, D)."""
    return frechet_distance(*statistics(features_a), *statistics(features_b))


def _mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]

    def k(x, y):
        g = x @ y.T / d + 1
        return g * g * g                 # not g ** 3: numpy's float power is ~10x slower

    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m, n = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


def kid(features_a, features_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> Tuple[float, float]:
    """KID of two feature sets: (mean, std) of the unbiased MMD^2 over `subsets` random subsets of
    min(subset_size, N, M) samples of each set, drawn without replacement (one subset holding all
    samples when both sets are that small)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs features (N, D) and (M, D), got {a.shape} and {b.shape}")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(a)} and {len(b)}")
    if size == len(a) == len(b):
        subsets = 1                  # every subset would be the whole of both sets
    rng = np.random.default_rng(seed)
    vals = [_mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
            for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


class FeatureNet:
    """A feature network with loaded weights: images (N, H, W, C) in [-1, 1] -> features (N, D) numpy,
    `batch` at a time (the last batch padded: one compiled shape per image size)."""

    def __init__(self, apply_fn, params, name: str, batch: int = 50):
        self.params, self.name, self.batch = jax.device_put(params), name, batch
        self._apply = jax.jit(apply_fn)

    def __call__(self, images) -> np.ndarray:
        x = np.asarray(images, np.float32)
        if x.ndim != 4:
            raise ValueError(f"{self.name} takes images (N, H, W, C), got shape {x.shape}")
        return map_batches(lambda a: self._apply(self.params, a), x, batch=self.batch).astype(np.float64)


def load_features(path: str = "", batch: int = 50) -> FeatureNet:
    """The feature network of a weight file: a converted FID Inception (FID), or "" / a classifier file
    made by `dps_jax.train.classifier` (FID-FMNIST: the shipped one for ""). Missing files are one clear error."""
    from dps_jax.models import checkpoint, classifier, inception

    path = os.path.expanduser(path or classifier.SHIPPED_CLASSIFIER)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID weights not found: {path} (import pytorch-fid's Inception with "
                                f"`python -m checkpoints_convert.metrics fid pt_inception-2015-12-05-6726825d.pth {path}`)")
    fmt = checkpoint.file_format(path)
    if fmt == inception.FORMAT:
        params, config = inception.load(path)
        module = inception.FIDInception(config)
        return FeatureNet(lambda p, x: module.apply({"params": p}, x), params, "FID Inception", batch)
    if fmt == classifier.FORMAT:
        params, config = classifier.load(path)
        module = classifier.Classifier(config)
        return FeatureNet(lambda p, x: module.apply({"params": p}, x, method=classifier.Classifier.features),
                          params, "Fashion-MNIST classifier", batch)
    raise checkpoint.CheckpointFormatError(f"{path}: format {fmt!r} is not a feature network (expected "
                                           f"{inception.FORMAT} or {classifier.FORMAT})")
