"""How far a set of posterior samples is from an exact Gaussian-mixture posterior (`gmm.posterior`).

    report = calibration.compare(samples, exact, key)          # samples (N, D), exact: a GaussianMixture

- mean_error: RMS over pixels of (sample mean - exact mean); the exact mean is sum_k w_k mu_k.
- std_error: RMS over pixels of (sample std - exact std); the exact variance is the mixture's
  sum_k w_k (diag Sigma_k + mu_k^2) - mean^2.
- weight_error: total variation between the exact weights and the fractions of samples that the exact
  posterior assigns to each component (highest responsibility); 0 when modes are visited in proportion.
- sliced_wasserstein: SW_2 between the samples and as many exact draws, over `projections` random
  directions (the same directions for every call with the same key).
- max_sliced_wasserstein: the largest 1-D W_2 over random directions between two sets of any sizes (the
  estimator of MCGdiff's authors' benchmark: POT's `max_sliced_wasserstein_distance`, 100 directions).
- coverage (`coverage`, given the true x_0): the share of coordinates whose central credible interval from
  the samples holds the truth; over many draws of (x_0, y) a calibrated sampler covers `level` of them.

Every figure has a sampling floor: what N exact draws score against the exact posterior (`floor`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.analytic import gmm as gmm_lib


def moments(mix: gmm_lib.GaussianMixture):
    """Exact mean (D,) and per-pixel variance (D,) of a mixture, float64."""
    w = np.exp(np.asarray(mix.log_weights, np.float64))
    mu = np.asarray(mix.means, np.float64)
    diag = np.einsum("kdj,kj->kd", np.asarray(mix.eigvecs, np.float64) ** 2, np.asarray(mix.eigvals, np.float64))
    mean = w @ mu
    return mean, w @ (diag + mu ** 2) - mean ** 2


def float32(mix: gmm_lib.GaussianMixture) -> gmm_lib.GaussianMixture:
    return gmm_lib.GaussianMixture(*(np.asarray(a, np.float32) for a in mix))


@jax.jit
def responsibilities(mix: gmm_lib.GaussianMixture, x):
    """(N, K) posterior probabilities of the components at the points x (N, D) (eigenvalues floored at 1e-12)."""
    lam = jnp.maximum(mix.eigvals, 1e-12)

    def one(v):
        r = v[None, :] - mix.means
        coords = jnp.einsum("kdj,kd->kj", mix.eigvecs, r)
        log_p = mix.log_weights - 0.5 * jnp.sum(coords ** 2 / lam + jnp.log(lam), axis=-1)
        return jax.nn.softmax(log_p)
    return jax.vmap(one)(x)


def sliced_wasserstein(a, b, key, projections: int = 256) -> float:
    """SW_2 between two equally sized point sets (N, D), over random unit directions."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape:
        raise ValueError(f"sliced Wasserstein needs equally sized sets, got {a.shape} and {b.shape}")
    theta = jax.random.normal(key, (a.shape[1], projections))
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    pa, pb = jnp.sort(a @ theta, axis=0), jnp.sort(b @ theta, axis=0)
    return float(jnp.sqrt(jnp.mean((pa - pb) ** 2)))


def wasserstein_1d(u, v) -> np.ndarray:
    """W_2 between the empirical distributions of u (N, P) and v (M, P), column by column (P,): the L2
    distance of their quantile functions, exact for any N and M (float64)."""
    u = np.sort(np.asarray(u, np.float64), axis=0)
    v = np.sort(np.asarray(v, np.float64), axis=0)
    n, m = len(u), len(v)
    levels = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    lengths = np.diff(levels, prepend=0.0)
    mid = levels - lengths / 2                       # inside each piece, where both quantiles are constant
    iu = np.minimum((mid * n).astype(np.int64), n - 1)
    iv = np.minimum((mid * m).astype(np.int64), m - 1)
    return np.sqrt(np.einsum("k,kp->p", lengths, (u[iu] - v[iv]) ** 2))


def max_sliced_wasserstein(a, b, key, projections: int = 100) -> float:
    """max over `projections` random unit directions theta of W_2(a theta, b theta); a (N, D), b (M, D)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"max-sliced Wasserstein needs two point sets (N, D), (M, D); got {a.shape}, {b.shape}")
    theta = np.asarray(jax.random.normal(key, (a.shape[1], projections)), np.float64)
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    return float(wasserstein_1d(a @ theta, b @ theta).max())


def compare(samples, exact: gmm_lib.GaussianMixture, key, projections: int = 256) -> dict:
    """The four figures of the module docstring for samples (N, D) against the exact mixture."""
    x = np.asarray(samples, np.float64).reshape(len(samples), -1)
    if x.shape[1] != exact.dim:
        raise ValueError(f"samples have dimension {x.shape[1]}; the posterior has {exact.dim}")
    mean, var = moments(exact)
    k_exact, k_proj = jax.random.split(key)
    resp = np.asarray(responsibilities(float32(exact), np.asarray(x, np.float32)))
    fractions = np.bincount(resp.argmax(axis=1), minlength=resp.shape[1]) / len(x)
    weights = np.exp(np.asarray(exact.log_weights, np.float64))
    reference, _ = gmm_lib.sample(float32(exact), k_exact, len(x))
    finite = bool(np.all(np.isfinite(x)))
    return {
        "mean_error": float(np.sqrt(np.mean((x.mean(0) - mean) ** 2))),
        "std_error": float(np.sqrt(np.mean((x.std(0) - np.sqrt(np.maximum(var, 0))) ** 2))),
        "weight_error": float(0.5 * np.abs(fractions - weights).sum()),
        "sliced_wasserstein": sliced_wasserstein(x, reference, k_proj, projections) if finite else float("nan"),
    }


def floor(exact: gmm_lib.GaussianMixture, num: int, key, projections: int = 256) -> dict:
    """What `num` exact draws score: the sampling noise under every figure."""
    k_draw, k_cmp = jax.random.split(key)
    x, _ = gmm_lib.sample(float32(exact), k_draw, num)
    return compare(x, exact, k_cmp, projections)


def coverage(samples, truth, level: float = 0.9) -> float:
    """Share of the coordinates of truth (D,) inside the samples' (N, D) central `level` interval (their
    (1 - level) / 2 and (1 + level) / 2 quantiles)."""
    x = np.asarray(samples, np.float64).reshape(len(samples), -1)
    truth = np.asarray(truth, np.float64).reshape(-1)
    if x.shape[1] != truth.size:
        raise ValueError(f"samples have dimension {x.shape[1]}; the truth has {truth.size}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"credible level must be in (0, 1), got {level!r}")
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return float(np.mean((truth >= lo) & (truth <= hi)))
