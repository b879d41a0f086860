"""PiGDM, pseudoinverse-guided diffusion (Song, Vahdat, Mardani, Kautz 2023), for linear A = U Sigma V^T.

The likelihood p(y | x_t) is approximated by N(y; A x0_hat, r_t^2 A A^T + sigma_y^2 I), r_t^2 = 1 - ab_t
(the paper's r_t^2 = sigma_t^2 / (1 + sigma_t^2) in the variance-preserving parameterisation). Its gradient
at x_t, through the network, is 1 / r_t^2 times the vector-Jacobian product

    g = (d x0_hat / d x_t)^T  A^T (A A^T + (sigma_y^2 / r_t^2) I)^{-1} (y - A x0_hat)

and one step from x_t (ab = ab_t, ab' = ab_{t-1}, the DDIM step with its eta) is

    x_{t-1} = sqrt(ab') x0_hat + c1 z + c2 eps + weight sqrt(ab' ab) g

g is taken as in the reference code (NVlabs/RED-diff, `algos/pgdm.py`, `awd: True`): without the
1 / r_t^2 factor, so that with sigma_y = 0 it is the pseudo-inverse residual A^+ y - A^+ A x0_hat the
reference uses; with sigma_y > 0 the paper's noisy form (scaled by the same r_t^2). x0_hat is not clipped.
The start is A^+ y noised to the first step: x_T = sqrt(ab_T) A^+ y + sqrt(1 - ab_T) z. Defaults are the
reference's: DDIM with eta 0, weight 1 (options of PiGDM's own: a run's other solvers do not set them); its
steps are the reference's `get_timesteps`, range(0, 1000, 1000 // steps) (`base.reference_stride`: 16 steps
for steps = 15), unless `respacing` names others.

On the inpainting operator with a noiseless y the step takes the branch of the reference's inpainting runs
(`in2_*`, which its README runs at sigma_y = 0): the x0 of the DDIM step is y on the observed pixels and x0_hat
elsewhere, and the guidance is zero on the observed pixels. The reference's code takes the branch whatever
sigma_y is; with a noisy y it writes the noise onto x0 at every step (at 1000 steps and sigma_y 0.05 the
samples diverge: docs/benchmarks.md), so by default a noisy y takes the plain step (`observed_branch`:
'noiseless'; 'always' is the reference's code as written, 'never' the plain step on every y).

A^+ and the regularised inverse come from the operator's SVD (`operators.spectral`, 1-D singular values
below `cutoff` treated as zero as in DDRM): super-resolution, Gaussian blur, inpainting. The Gaussian noise
std sigma_y is the problem's `sigma`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from dps_jax.operators import spectral
from dps_jax.prior import denoise
from dps_jax.solvers import base, dps


OBSERVED_BRANCH = ("noiseless", "always", "never")


@flax.struct.dataclass
class Options(base.DiffusionOptions):
    sampler: str = base.static_field("ddim")
    weight: float = 1.0                              # grad_term_weight of the reference
    cutoff: float = base.static_field(0.03)          # 1-D singular values below it count as zero
    observed_branch: str = base.static_field("noiseless")   # the in2 inpainting branch: noiseless / always / never

    def check(self) -> None:
        base.DiffusionOptions.check(self)
        base.check_finite_number("pigdm weight", self.weight)
        base.check_finite_number("pigdm cutoff", self.cutoff)
        if self.observed_branch not in OBSERVED_BRANCH:
            raise ValueError(f"pigdm observed_branch {self.observed_branch!r}: expected one of {OBSERVED_BRANCH}")


def init(key, problem, prior, options, image_shape):
    """The start noise; the first update turns it into x_T (it needs ab_T, the first step's level)."""
    return {"x": jax.random.normal(key, tuple(image_shape), jnp.float32), "started": jnp.asarray(False)}


def guidance_vector(sp: spectral.Spectral, y, ax0, sigma_y, alphas_cumprod):
    """A^T (A A^T + (sigma_y^2 / r_t^2) I)^{-1} (y - A x0_hat), r_t^2 = 1 - ab_t: (H, W, C)."""
    return spectral.regularised_pinv(sp, y - ax0, sigma_y ** 2 / (1.0 - alphas_cumprod))


def update(state, c, noise, problem, prior, options: Options):
    sp = problem.aux
    x_t = jnp.where(state["started"], state["x"],
                    c.sqrt_alphas_cumprod * spectral.regularised_pinv(sp, problem.y)
                    + c.sqrt_one_minus_alphas_cumprod * state["x"])
    prior = prior.replace(clip_denoised=False, dynamic_threshold=False)

    def x0_hat_of(x):
        den = denoise(prior, x, c)
        return den.x0_hat, den

    x0_hat, vjp, den = jax.vjp(x0_hat_of, x_t, has_aux=True)
    v = guidance_vector(sp, problem.y, spectral.apply(sp, x0_hat), problem.sigma, c.alphas_cumprod)
    (g,) = vjp(jax.lax.stop_gradient(v))
    if getattr(problem.op, "name", None) == "inpainting" and options.observed_branch != "never":
        # the reference's branch for the inpainting its README runs (`in2_*`, noiseless y): the step's x0 takes
        # y on the observed pixels, and the guidance acts on the others only
        m = jnp.broadcast_to(sp.singulars, x0_hat.shape)
        if options.observed_branch == "noiseless":
            m = m * (problem.sigma == 0)
        den = den._replace(x0_hat=x0_hat * (1.0 - m) + problem.y * m)
        g = g * (1.0 - m)
    x_prime = base.reverse_update(x_t, den, c, noise["x"], options)
    x_next = x_prime + options.weight * jnp.sqrt(c.alphas_cumprod_prev * c.alphas_cumprod) * g
    return {"x": x_next, "started": jnp.asarray(True)}, {"distance": dps.distance(problem, x0_hat),
                                                         "x0_hat": x0_hat}


SOLVER = base.Solver("pigdm", Options, init=init, update=update, grid=base.table_grid(base.reference_stride),
                     needs=frozenset({"svd", "sigma"}))
