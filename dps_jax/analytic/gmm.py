"""A Gaussian mixture prior whose every quantity is closed form: the analytic test bed for posterior sampling.

    p(x_0) = sum_k w_k N(x_0; mu_k, Sigma_k)                     x_0 flattened to D numbers

Under the forward process x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps (ab = alphas_cumprod_t) the marginal is the
mixture of N(sqrt(ab) mu_k, C_k), C_k = ab Sigma_k + (1 - ab) I, so the exact noise prediction is

    eps*(x_t) = -sqrt(1 - ab) grad log p_t(x_t) = sqrt(1 - ab) sum_k r_k(x_t) C_k^{-1} (x_t - sqrt(ab) mu_k)

with r_k the component responsibilities. Each Sigma_k is stored by its eigendecomposition U_k diag(lam_k)
U_k^T, so C_k^{-1} and log det C_k cost one (D, D) product per component at any step. `as_prior` makes this a
`prior.Prior` the solvers cannot tell from a network (x0_hat not clipped: the exact E[x_0 | x_t] is not).

For a linear A (M, D) and y = A x_0 + sigma n, n ~ N(0, I), the posterior is again a mixture (`posterior`):
component k has covariance (Sigma_k^{-1} + A^T A / sigma^2)^{-1}, mean Sigma'_k (Sigma_k^{-1} mu_k +
A^T y / sigma^2) and weight proportional to w_k N(y; A mu_k, A Sigma_k A^T + sigma^2 I): computed in float64.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import prior as prior_lib
from dps_jax import schedule


class GaussianMixture(NamedTuple):
    """K components in D dimensions (a pytree of arrays)."""
    log_weights: jnp.ndarray       # (K,), normalised: logsumexp = 0
    means: jnp.ndarray             # (K, D)
    eigvecs: jnp.ndarray           # (K, D, D), columns are the eigenvectors of Sigma_k
    eigvals: jnp.ndarray           # (K, D), >= 0

    @property
    def dim(self) -> int:
        return int(self.means.shape[-1])

    def covariances(self) -> np.ndarray:
        """(K, D, D) float64 Sigma_k."""
        u, lam = np.asarray(self.eigvecs, np.float64), np.asarray(self.eigvals, np.float64)
        return np.einsum("kij,kj,klj->kil", u, lam, u)


def make(weights, means, covariances, dtype=np.float32) -> GaussianMixture:
    """A mixture from weights (K,) (any positive scale), means (K, D) and symmetric PSD covariances (K, D, D).

    Raises a ValueError naming the first bad input (shapes, a non-positive weight, an indefinite covariance).
    """
    w = np.asarray(weights, np.float64)
    mu = np.asarray(means, np.float64)
    cov = np.asarray(covariances, np.float64)
    if w.ndim != 1 or mu.ndim != 2 or cov.ndim != 3 or not (len(w) == len(mu) == len(cov)) \
            or cov.shape[1:] != (mu.shape[1], mu.shape[1]):
        raise ValueError(f"mixture needs weights (K,), means (K, D), covariances (K, D, D); got "
                         f"{w.shape}, {mu.shape}, {cov.shape}")
    if not (np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ValueError(f"mixture weights must be finite and positive, got {w}")
    if not np.allclose(cov, np.swapaxes(cov, 1, 2), atol=1e-8 * max(1.0, np.abs(cov).max())):
        raise ValueError("mixture covariances must be symmetric")
    return _from_log_weights(np.log(w), mu, cov, dtype)


def _from_log_weights(log_w, mu, cov, dtype) -> GaussianMixture:
    """The mixture from unnormalised log weights (no underflow for far-apart components)."""
    lam, u = np.linalg.eigh(cov)
    if lam.min() < -1e-8 * max(1.0, lam.max()):
        raise ValueError(f"mixture covariance has a negative eigenvalue {lam.min():.3g}")
    lam = np.maximum(lam, 0.0)
    top = log_w.max()
    log_w = log_w - (top + np.log(np.exp(log_w - top).sum()))
    # numpy arrays: float64 stays float64 for the exact posterior (jax converts them when it computes)
    return GaussianMixture(*(np.asarray(a, dtype) for a in (log_w, mu, u, lam)))


def log_marginals(gmm: GaussianMixture, x_t, alphas_cumprod):
    """(log w_k + log N(x_t; sqrt(ab) mu_k, C_k))_k (K,) and the whitened residuals C_k^{-1}(x_t - sqrt(ab) mu_k)
    (K, D), for one flattened x_t (D,)."""
    ab = alphas_cumprod
    var = ab * gmm.eigvals + (1.0 - ab)                                    # (K, D) eigenvalues of C_k
    r = x_t[None, :] - jnp.sqrt(ab) * gmm.means                            # (K, D)
    coords = jnp.einsum("kdj,kd->kj", gmm.eigvecs, r)                      # U_k^T r
    log_p = gmm.log_weights - 0.5 * (jnp.sum(coords ** 2 / var + jnp.log(var), axis=-1)
                                     + gmm.dim * jnp.log(2 * jnp.pi))
    whitened = jnp.einsum("kdj,kj->kd", gmm.eigvecs, coords / var)          # C_k^{-1} r
    return log_p, whitened


def exact_eps(gmm: GaussianMixture, x_t, alphas_cumprod):
    """eps*(x_t) for one flattened x_t (D,): the noise prediction of a perfectly trained network."""
    log_p, whitened = log_marginals(gmm, x_t, alphas_cumprod)
    resp = jax.nn.softmax(log_p)
    return jnp.sqrt(1.0 - alphas_cumprod) * jnp.einsum("k,kd->d", resp, whitened)


def exact_x0_hat(gmm: GaussianMixture, x_t, alphas_cumprod):
    """Tweedie's E[x_0 | x_t] for one flattened x_t (D,)."""
    eps = exact_eps(gmm, x_t, alphas_cumprod)
    return (x_t - jnp.sqrt(1.0 - alphas_cumprod) * eps) / jnp.sqrt(alphas_cumprod)


@dataclasses.dataclass(frozen=True)
class MixtureEps:
    """The `apply` of a mixture prior: (params, x (H, W, C), t) -> eps*(x) (H, W, C). params holds the mixture
    and the alphas_cumprod table the timestep indexes."""

    def __call__(self, params, x, t):
        ab = params["alphas_cumprod"][t]
        return exact_eps(params["gmm"], x.reshape(-1), ab).reshape(x.shape)

    def x0_at_sigma(self, params, x, sigma):
        """E[x_0 | x_0 + sigma n = x] (`prior.x0_at_sigma`): the VP view x / sqrt(1 + sigma^2) at
        alphas_cumprod 1 / (1 + sigma^2), exactly."""
        return denoiser(params["gmm"], x, sigma)


def denoiser(gmm: GaussianMixture, x, sigma):
    """E[x_0 | x_0 + sigma n = x] for one image x (H, W, C) of the mixture's dimension: the exact D(x; sigma)
    (`analytic.networks` writes it as the network of any process and parametrisation)."""
    ab = 1 / (1 + sigma ** 2)
    return exact_x0_hat(gmm, x.reshape(-1) * jnp.sqrt(ab), ab).reshape(x.shape)


def as_prior(gmm: GaussianMixture, image_shape: Tuple[int, int, int], beta_schedule: str = "linear",
             num_timesteps: int = 1000, var_type: str = "fixed_small") -> prior_lib.Prior:
    """The mixture as a diffusion prior over images of `image_shape` (H W C = D), on the given schedule."""
    if int(np.prod(image_shape)) != gmm.dim:
        raise ValueError(f"image shape {tuple(image_shape)} has {int(np.prod(image_shape))} pixels; the mixture "
                         f"has dimension {gmm.dim}")
    table = schedule.build_tables(beta_schedule, num_timesteps, num_timesteps).alphas_cumprod
    params = {"gmm": gmm, "alphas_cumprod": jnp.asarray(table, jnp.float32)}
    h, w, c = image_shape
    return prior_lib.Prior(params=params, apply=MixtureEps(), var_type=var_type, clip_denoised=False,
                           image_size=h if h == w else None, channels=c)


def sample(gmm: GaussianMixture, key, num: int):
    """num draws of x_0 (num, D) and their components (num,)."""
    k_comp, k_x = jax.random.split(key)
    comp = jax.random.categorical(k_comp, gmm.log_weights, shape=(num,))
    z = jax.random.normal(k_x, (num, gmm.dim), gmm.means.dtype)
    x = gmm.means[comp] + jnp.einsum("ndj,nj->nd", gmm.eigvecs[comp], jnp.sqrt(gmm.eigvals[comp]) * z)
    return x, comp


def posterior(gmm: GaussianMixture, a, y, sigma: float) -> GaussianMixture:
    """The exact p(x_0 | y) for y = a x_0 + sigma n: a (M, D), y (M,), sigma > 0. Float64 throughout."""
    if not sigma > 0:
        raise ValueError(f"the exact posterior needs measurement noise sigma > 0, got {sigma!r}")
    a = np.asarray(a, np.float64)
    y = np.asarray(y, np.float64).reshape(-1)
    if a.ndim != 2 or a.shape != (y.size, gmm.dim):
        raise ValueError(f"operator matrix has shape {a.shape}; expected ({y.size}, {gmm.dim})")
    mu = np.asarray(gmm.means, np.float64)
    covs = gmm.covariances()
    log_w = np.asarray(gmm.log_weights, np.float64).copy()
    post_means, post_covs = [], []
    for k in range(len(mu)):
        s = covs[k]
        s_at = s @ a.T
        marg = a @ s_at + sigma ** 2 * np.eye(len(y))                      # cov of y under component k
        chol = np.linalg.cholesky(marg)
        resid = np.linalg.solve(chol, y - a @ mu[k])
        log_w[k] += -0.5 * (resid @ resid) - np.log(np.diag(chol)).sum() - 0.5 * len(y) * np.log(2 * np.pi)
        gain = np.linalg.solve(marg, s_at.T).T                             # Sigma A^T (A Sigma A^T + s^2 I)^-1
        post_means.append(mu[k] + gain @ (y - a @ mu[k]))
        cov = s - gain @ s_at.T
        post_covs.append(0.5 * (cov + cov.T))
    return _from_log_weights(log_w, np.stack(post_means), np.stack(post_covs), np.float64)


def operator_matrix(op, image_shape) -> np.ndarray:
    """The (M, D) matrix of a linear operator on images of `image_shape` (its Jacobian at 0)."""
    d = int(np.prod(image_shape))
    f = lambda v: op(v.reshape(image_shape)).reshape(-1)
    return np.asarray(jax.jacfwd(f)(jnp.zeros((d,), jnp.float32)), np.float64)
