"""The solvers by name: one line per method."""

from __future__ import annotations

from typing import Dict

from dps_jax.solvers import (admm_tv, bks_generic, bks_stylegan, daps, ddrm, diffpir, dps, fienup, mcg, mcgdiff, pigdm, pnp_admm,
                             pnpdm, reddiff, score_sde, scoreald, sdedit, sitcom, tmpd, unconditional)
from dps_jax.solvers.base import Solver

REGISTRY: Dict[str, Solver] = {
    "ps": dps.SOLVER,                    # DPS (Chung et al. 2023)
    "ps+": dps.SOLVER_PLUS,              # DPS averaged over perturbed x0_hat (the official variant)
    "ps_unit": dps.SOLVER_UNIT,          # DPS with the gradient normalised to unit length (seed 003)
    "scoreald": scoreald.SOLVER,         # the DPS gradient with a linearly annealed step (seed 003)
    "sdedit": sdedit.SOLVER,             # noise a start image from y to t*, then the prior alone (Meng et al.)
    "mcg": mcg.SOLVER,                   # manifold constrained gradients (Chung et al. 2022)
    "projection": score_sde.SOLVER,      # Score-SDE / ILVR-style projection
    "vanilla": unconditional.SOLVER,     # the prior alone
    "ddrm": ddrm.SOLVER,                 # denoising diffusion restoration models (Kawar et al. 2022)
    "diffpir": diffpir.SOLVER,           # plug-and-play diffusion by half-quadratic splitting (Zhu et al. 2023)
    "pigdm": pigdm.SOLVER,               # pseudoinverse-guided diffusion (Song et al. 2023)
    "reddiff": reddiff.SOLVER,           # variational RED-diff (Mardani et al. 2023)
    "daps": daps.SOLVER,                 # decoupled annealing posterior sampling (Zhang et al. 2025)
    "sitcom": sitcom.SOLVER,             # step-wise triple-consistent sampling, Adam through the network (Alkhouri et al. 2025)
    "tmpd": tmpd.SOLVER,                 # Tweedie moment projected diffusion, a Kalman update of x0_hat (Boys et al. 2024)
    "mcgdiff": mcgdiff.SOLVER,           # Monte Carlo guided diffusion, a particle filter (Cardoso et al. 2024)
    "pnpdm": pnpdm.SOLVER,               # plug-and-play diffusion models, split Gibbs (Wu et al. 2024)
    "pnp_admm": pnp_admm.SOLVER,         # plug-and-play ADMM with a DnCNN denoiser (Chan et al. 2016)
    "admm_tv": admm_tv.SOLVER,           # total-variation regularised least squares by ADMM
    "er": fienup.ER,                     # error reduction (Fienup 1982), phase retrieval
    "hio": fienup.HIO,                   # hybrid input-output (Fienup 1982, 1987), phase retrieval
    "oss": fienup.OSS,                   # oversampling smoothness (Rodriguez et al. 2013), phase retrieval
    "bks_stylegan": bks_stylegan.SOLVER,  # blind deblurring, StyleGAN2 prior x blur-kernel space (Tran et al. 2021)
    "bks_generic": bks_generic.SOLVER,   # blind deblurring, two deep image priors x blur-kernel space (Tran et al. 2021)
}


def get(name: str) -> Solver:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r:.60}; expected one of {sorted(REGISTRY)}") from None


def register(solver: Solver) -> Solver:
    """Add a solver to the registry (its name must be new); returns it."""
    if solver.name in REGISTRY:
        raise ValueError(f"a solver named {solver.name!r} is already registered")
    REGISTRY[solver.name] = solver
    return solver


def config_key(name: str) -> str:
    """The config section of a solver's options: its name with '+' spelled out (`ps+` -> `solver.ps_plus`)."""
    return name.replace("+", "_plus")
