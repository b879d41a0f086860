"""Noise schedules, respacing, and the table of per-step coefficients.

Everything here is float64 numpy, computed once on the host; the reverse loop receives the table as
float32 arrays (the precision the official code uses inside its steps).

Notation (Ho et al. 2020): beta_t, alpha_t = 1 - beta_t, alphas_cumprod[t] = prod_{s<=t} alpha_s.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Union

import numpy as np

SCHEDULES = ("linear", "cosine", "linear_reversed")


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Betas of a named schedule, shape (num_timesteps,), float64.

    linear: Ho et al.'s 1e-4 .. 0.02 for 1000 steps, scaled by 1000 / num_timesteps so that the
    schedule keeps its shape for any step count. cosine: Nichol & Dhariwal's alpha_bar(t) =
    cos^2((t + 0.008) / 1.008 * pi / 2), betas capped at 0.999. linear_reversed: the schedule of MCGdiff's
    Gaussian-mixture benchmark, alphas_cumprod[0] = 1 then betas linspace(0.02, 1e-4, T - 1) (decreasing; the
    same total noise as linear, spent early); its beta_0 is 1e-6, not 0, as the tables divide by
    1 - alphas_cumprod, which must stay above 0 in float32.
    """
    _check_steps(num_timesteps, "num_timesteps")
    if name == "linear":
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "linear_reversed":
        scale = 1000.0 / num_timesteps
        return np.concatenate([[1e-6], np.linspace(scale * 0.02, scale * 1e-4, num_timesteps - 1)])
    if name == "cosine":
        return betas_for_alpha_bar(
            num_timesteps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ValueError(f"unknown beta schedule {name!r}; expected one of {SCHEDULES}")


def betas_for_alpha_bar(num_timesteps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """Betas discretising a continuous alpha_bar: [0, 1] -> (0, 1], shape (num_timesteps,)."""
    t1 = np.arange(num_timesteps) / num_timesteps
    t2 = (np.arange(num_timesteps) + 1) / num_timesteps
    ratio = np.array([alpha_bar(b) / alpha_bar(a) for a, b in zip(t1, t2)], dtype=np.float64)
    return np.minimum(1.0 - ratio, max_beta)


def _count(spec: str, prefix: str, original, low: int, num_timesteps: int) -> int:
    """N of a respacing "<prefix>N", checked to lie in [low, num_timesteps]."""
    try:
        n = int(spec[len(prefix):])
    except ValueError:
        raise ValueError(f"bad respacing {original!r}: expected '{prefix}N' with an integer N") from None
    if not low <= n <= num_timesteps:
        raise ValueError(f"respacing {original!r}: N must be in [{low}, {num_timesteps}]")
    return n


def quadratic_timesteps(num_timesteps: int, spec: str, original) -> np.ndarray:
    """The "quadN" respacing (see `space_timesteps`), ascending."""
    n = _count(spec, "quad", original, 2, num_timesteps)
    seq = np.sqrt(np.linspace(0, num_timesteps ** 2, n)).astype(np.int64)
    seq[-1] -= 1
    kept = num_timesteps - 1 - seq
    if len(np.unique(kept)) != n:
        raise ValueError(f"respacing {original!r}: quadratic spacing repeats a timestep; use fewer steps")
    return np.sort(kept)


def space_timesteps(num_timesteps: int, section_counts: Union[str, int, Sequence[int]]) -> np.ndarray:
    """The kept timesteps of a respaced process, sorted ascending (the `timestep_map`).

    `section_counts` splits [0, num_timesteps) into equal sections and keeps the given number of
    evenly spaced steps in each ("250", "10,20,30", [10, 20, 30]); "ddimN" keeps range(0, T, stride)
    with the integer stride that gives exactly N steps (the DDIM paper's striding); "strideN" keeps
    range(0, T, T // N), the grid of DDRM's runner and RED-diff's `get_timesteps`: N steps where N divides
    T, more where it does not (N = 15 of 1000: stride 66, 16 steps, the last at 990); "quadN" keeps
    T - 1 - floor(sqrt(k / (N - 1)) T) for k = 0 .. N - 2 and 0 (DiffPIR's quadratic spacing: large strides
    at high noise, fine ones near t = 0).
    """
    _check_steps(num_timesteps, "num_timesteps")
    spec = section_counts
    if isinstance(spec, str):
        spec = spec.strip()
        if spec.startswith("quad"):
            return quadratic_timesteps(num_timesteps, spec, section_counts)
        if spec.startswith("stride"):
            desired = _count(spec, "stride", section_counts, 1, num_timesteps)
            return np.arange(0, num_timesteps, num_timesteps // desired, dtype=np.int64)
        if spec.startswith("ddim"):
            desired = _count(spec, "ddim", section_counts, 1, num_timesteps)
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return np.arange(0, num_timesteps, stride, dtype=np.int64)
            raise ValueError(
                f"respacing {section_counts!r}: no integer stride gives exactly {desired} of "
                f"{num_timesteps} steps")
        try:
            spec = [int(s) for s in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"bad respacing {section_counts!r}: expected counts like '250' or '10,20,30', 'ddimN', 'strideN' "
                f"or 'quadN'") from None
    elif isinstance(spec, (int, np.integer)):
        spec = [int(spec)]
    spec = list(spec)
    if not spec or any(c < 1 for c in spec):
        raise ValueError(f"bad respacing {section_counts!r}: every section needs at least one step")

    size_per, extra = divmod(num_timesteps, len(spec))
    start, kept = 0, []
    for i, count in enumerate(spec):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"respacing {section_counts!r}: section {i} has {size} steps, cannot keep {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # Python's round (half to even) on the running float position, as the official code does.
        pos = 0.0
        for _ in range(count):
            kept.append(start + round(pos))
            pos += stride
        start += size
    return np.array(sorted(set(kept)), dtype=np.int64)


def respace_betas(betas: np.ndarray, timestep_map: np.ndarray) -> np.ndarray:
    """Betas of the process that only visits `timestep_map`, keeping alphas_cumprod at those steps.

    beta'_i = 1 - alphas_cumprod[t_i] / alphas_cumprod[t_{i-1}] (with alphas_cumprod[t_{-1}] = 1).
    """
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, np.float64))
    kept = alphas_cumprod[np.asarray(timestep_map)]
    prev = np.concatenate([[1.0], kept[:-1]])
    return 1.0 - kept / prev


class DiffusionTables(NamedTuple):
    """Per-step coefficients of a (possibly respaced) process; each array has shape (T,).

    Index i is the respaced step; `timestep_map[i]` is the original timestep the network expects.
    """
    timestep_map: np.ndarray
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    log_betas: np.ndarray
    fixed_large_log_variance: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])


def make_tables(betas: np.ndarray, timestep_map: np.ndarray | None = None) -> DiffusionTables:
    """All coefficients of q(x_t | x_0) and q(x_{t-1} | x_t, x_0) for `betas`, float64, shape (T,)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or not np.all((betas > 0) & (betas <= 1)):
        raise ValueError("betas must be a 1-D array with every value in (0, 1]")
    if timestep_map is None:
        timestep_map = np.arange(betas.shape[0], dtype=np.int64)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    # The posterior variance is 0 at t = 0; its log is clipped to the value at t = 1.
    post_log_var = np.log(np.append(post_var[1], post_var[1:])) if len(betas) > 1 else np.log(betas)
    return DiffusionTables(
        timestep_map=np.asarray(timestep_map, dtype=np.int64),
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        log_betas=np.log(betas),
        fixed_large_log_variance=np.log(np.append(post_var[1], betas[1:])) if len(betas) > 1 else np.log(betas),
    )


def build_tables(schedule: str = "linear", num_timesteps: int = 1000,
                 respacing: Union[str, int, Sequence[int], None] = None) -> DiffusionTables:
    """Schedule -> respacing -> coefficient table, in one call.

    `respacing` None or "" keeps all `num_timesteps` steps.
    """
    betas = get_named_beta_schedule(schedule, num_timesteps)
    if respacing is None or respacing == "":
        return make_tables(betas)
    timestep_map = space_timesteps(num_timesteps, respacing)
    return make_tables(respace_betas(betas, timestep_map), timestep_map)


def _check_steps(n, what):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")
