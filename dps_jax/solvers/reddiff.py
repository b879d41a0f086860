"""RED-diff, variational diffusion sampling (Mardani, Song, Kautz, Vahdat 2023).

RED-diff fits one image mu (a point-mass q(x_0)) by Adam, walking the diffusion steps from noisy to clean as
a schedule of regularisers. At the step with level ab = ab_t, with z ~ N(0, I),

    x_t  = sqrt(ab) mu + sqrt(1 - ab) z
    loss = lambda * sqrt(1 - ab) / sqrt(ab) * mean(sg(eps(x_t) - z) * mu)  +  mean((y - A(mu))^2) / 2

and mu takes one Adam step on the loss (betas 0.9, 0.99). The first term is the score-matching regulariser
(its weight 1 / SNR: the reference's "linear" denoiser weighting); the stop-gradient keeps the network out of
the gradient, so a step costs one network evaluation and no backpropagation through it. The means run over
the pixels of one image (and of y): each posterior sample is its own optimisation. mu starts at A^+ y.
The sample is mu as the last step's loss saw it (the reference returns that, not mu after its last update).

Defaults are the reference's `_configs/algo/reddiff.yaml` (NVlabs/RED-diff): lr 0.1, lambda 0.25; its steps
are the reference's `get_timesteps`, range(0, 1000, 1000 // steps) (`base.reference_stride`), unless
`respacing` names others.
The measurement term needs only A, so any differentiable operator works; the start A^+ y comes from the SVD where the operator has one (DDRM's 0.03 singular cutoff), from
the least-norm projection (`Operator.project`) for other linear operators; nonlinear ones are refused.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dps_jax import diffusion
from dps_jax.prior import denoise
from dps_jax.solvers import base, dps, proximal

@flax.struct.dataclass
class Options(base.TableOptions):
    lr: float = 0.1                                   # Adam's step size
    lam: float = 0.25                                 # lambda, the regulariser's weight (grad_term_weight)
    obs_weight: float = 1.0                           # the measurement term's weight
    cutoff: float = base.static_field(0.03)           # the start's SVD: 1-D singular values below it count as 0

    def check(self) -> None:
        base.TableOptions.check(self)
        for name in ("lr", "lam", "obs_weight"):
            base.check_finite_number(f"reddiff {name}", getattr(self, name))


def optimizer(options: Options):
    return optax.adam(options.lr, b1=0.9, b2=0.99, eps=1e-8)


def init(key, problem, prior, options, image_shape):
    mu = proximal.pseudo_inverse(problem, image_shape)
    return {"mu": mu, "x0": mu, "adam": optimizer(options).init(mu)}


def draw(key, state, problem, options):
    return {"x": jax.random.normal(key, state["mu"].shape, state["mu"].dtype)}


def update(state, c, noise, problem, prior, options: Options):
    mu, z = state["mu"], noise["x"]
    x_t = diffusion.q_sample(mu, c, z)
    den = denoise(prior.replace(clip_denoised=False, dynamic_threshold=False), x_t, c)
    residual = jax.lax.stop_gradient(den.eps - z)
    weight = options.lam * c.sqrt_one_minus_alphas_cumprod / c.sqrt_alphas_cumprod

    def loss(m):
        return weight * jnp.mean(residual * m) + options.obs_weight * jnp.mean((problem.y - problem.op(m)) ** 2) / 2

    grads = jax.grad(loss)(mu)
    updates, adam = optimizer(options).update(grads, state["adam"], mu)
    return ({"mu": optax.apply_updates(mu, updates), "x0": mu, "adam": adam},
            {"distance": dps.distance(problem, mu), "x0_hat": den.x0_hat})


def result(state):
    return state["x0"]


# Linear A: the start A^+ y through the SVD where the operator has one, its projection otherwise.
SOLVER = base.Solver("reddiff", Options, init=init, update=update, draw=draw, result=result,
                     grid=base.table_grid(base.reference_stride), needs=frozenset({"gaussian", "svd_or_cg"}))
