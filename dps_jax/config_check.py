"""Every number of every command's config checked in one place, before anything is built.

The main job, the evaluation command and the trainers call `check(cfg, overrides)` on the resolved config
(the evaluation also on each cell's task config). Each numeric field matches one rule of `RULES` by its
dotted key (first match wins; a comparison cell's `cells.<key>` is checked as `<key>`): an integer or a
finite real, inside a range. The ranges are what a run on a 24 GiB machine can serve and what the methods
mean (a DDIM eta in [0, 1], a drop fraction below 1); iteration counts are capped so that a typo cannot
start a loop of days. Fields that depend on each other (a solver's lower < upper, DAPS's sigma_min <
sigma_max, SDEdit's t_star within the schedule, the size of the arrays a run keeps) are checked after.
A field no rule names is refused: a new config field comes with its rule (tests/test_config_check.py).

A changed `operator.name` starts from that operator's own defaults: the task config's fields for its
operator are dropped, and a field the command line set that the new operator does not take is refused by
name.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import os
from typing import Iterable, NamedTuple, Optional

MAX_ITERATIONS = 100_000          # a reverse loop's steps or an iterative solver's iterations
MAX_TRAIN_STEPS = 10_000_000
MAX_TEXT = 4096                   # PATH_MAX: a path, a list of tasks or methods
GIB = 2.0 ** 30


class Rule(NamedTuple):
    kind: str                     # "int" or "real"
    low: float
    high: float
    above: bool = False           # True: low itself is excluded (a strictly positive step size)


def _int(low, high) -> Rule:
    return Rule("int", low, high)


def _real(low, high, above=False) -> Rule:
    return Rule("real", low, high, above)


RULES = (
    # the main job and the evaluation
    ("seed", _int(0, 2 ** 32 - 1)),                  # jax keys take 32 bits
    ("num_samples", _int(1, 4096)),
    ("pr_samples", _int(1, 64)),
    ("chunk_size", _int(0, 4096)),
    ("grid_image", _int(0, 1_000_000)),
    ("data.image_size", _int(8, 2048)),
    ("data.num_images", _int(0, 1_000_000)),
    ("data.first", _int(0, 1_000_000)),
    ("data.channels", _int(1, 4)),
    ("output.png_scale", _int(1, 16)),
    ("num_processes", _int(0, 4096)),
    ("process_id", _int(-1, 4095)),
    ("distributed_timeout", _int(1, 86_400)),
    ("diffusion.num_timesteps", _int(2, MAX_ITERATIONS)),
    ("sampler.steps", _int(0, MAX_ITERATIONS)),
    ("sampler.record_every", _int(0, MAX_ITERATIONS)),
    ("sampler.steps_per_call", _int(0, MAX_ITERATIONS)),
    ("noise.sigma", _real(0, 10)),
    ("noise.rate", _real(0, 1e6, above=True)),
    ("operator.scale_factor", _int(1, 64)),
    ("operator.kernel_size", _int(1, 1025)),
    ("operator.intensity", _real(0, 100)),               # a Gaussian's sigma or a motion blur's intensity
    ("operator.oversample", _real(0, 8)),
    ("operator.drop_fraction", _real(0, 1)),
    ("operator.margin", _int(0, 2048)),
    ("operator.kernel_scale", _real(0, 100)),
    # the solvers' options
    ("solver.*.steps", _int(0, MAX_ITERATIONS)),
    ("solver.*.*_steps", _int(0, MAX_ITERATIONS)),
    ("solver.*.cg_iterations", _int(1, 10_000)),
    ("solver.*.stages", _int(1, 1000)),
    ("solver.*.num_perturb", _int(1, 1000)),
    ("solver.*.particles", _int(1, 100_000)),
    ("solver.*.iterations", _int(1, 100_000)),
    ("solver.*.*_iters", _int(0, MAX_ITERATIONS)),
    ("solver.*.fit_samples", _int(2, 100_000_000)),
    ("solver.*.dip_*", _int(0, 4096)),                 # the DIPs' levels, widths, blocks
    ("solver.*.kdip_*", _int(0, 4096)),
    ("solver.*.decay", _real(0, 1)),
    ("solver.*.hl_alpha", _real(0, 2, above=True)),
    ("solver.sdedit.t_star", _int(1, MAX_ITERATIONS)),
    ("solver.*.eta", _real(0, 1)),
    ("solver.*.eta_b", _real(0, 1)),
    ("solver.*.cutoff", _real(0, 1)),
    ("solver.*.lr_min_ratio", _real(0, 1)),
    ("solver.*.beta", _real(0, 2)),
    ("solver.*.lower", _real(-1e6, 1e6)),
    ("solver.*.upper", _real(-1e6, 1e6)),
    ("solver.*.sigma_max", _real(0, 1e6, above=True)),
    ("solver.*.sigma_min", _real(0, 1e6, above=True)),
    ("solver.*.ode_sigma_min", _real(0, 1e6, above=True)),
    ("solver.*.lr", _real(0, 1e6, above=True)),
    ("solver.*.rho", _real(0, 1e6, above=True)),
    ("solver.*.tau", _real(0, 1e6, above=True)),
    ("solver.*", _real(0, 1e6)),                         # step sizes, weights, scales: finite, non-negative
    # the trainers
    ("batch_size", _int(1, 4096)),
    ("num_steps", _int(0, MAX_TRAIN_STEPS)),
    ("log_every", _int(1, MAX_TRAIN_STEPS)),
    ("eval_images", _int(0, 100_000)),
    ("checkpoint_minutes", _real(0, 10_000, above=True)),
    ("sigma_max", _real(0, 100, above=True)),
    ("kl_start", _int(0, MAX_TRAIN_STEPS)),
    ("kl_warmup", _int(0, MAX_TRAIN_STEPS)),
    ("kl_weight", _real(0, 1e6)),
    ("r1_gamma", _real(0, 1e6)),
    ("r1_every", _int(1, MAX_TRAIN_STEPS)),
    ("ema_kimg", _real(0, 1e6, above=True)),
    ("optim.lr", _real(0, 10, above=True)),
    ("optim.weight_decay", _real(0, 10)),
    ("optim.ema_decay", _real(0, 1)),
    ("optim.grad_clip", _real(0, 1e6, above=True)),
    ("optim.warmup_steps", _int(0, MAX_TRAIN_STEPS)),
    ("model.dropout", _real(0, 1)),
    ("model.image_size", _int(8, 1024)),
    ("model.num_heads*", _int(-1, 64)),
    ("model.num_head_channels", _int(-1, 4096)),
    ("model.num_classes", _int(1, 100_000)),
    ("model.lr_mlp", _real(0, 10, above=True)),
    ("model.*", _int(0, 4096)),                          # channel counts, block counts, levels
    ("blur.frames", _int(1, 256)),
    ("blur.*", _real(0, 100)),
)


class ConfigValueError(ValueError):
    """A config value that is the wrong type, not finite, or outside what the command can serve."""


def rule_for(key: str) -> Optional[Rule]:
    """The rule of the dotted `key` (a cell's `cells.<key>` as `<key>`), or None if no rule names it."""
    key = key[len("cells."):] if key.startswith("cells.") else key
    for pattern, rule in RULES:
        if fnmatch.fnmatchcase(key, pattern):
            return rule
    return None


def check_value(key: str, value, rule: Rule) -> None:
    """Raise ConfigValueError unless `value` fits `rule`."""
    shown = f"{value!r}"[:40]
    if rule.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigValueError(f"{key} must be an integer, got {shown}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigValueError(f"{key} must be a finite number, got {shown}")
    low_ok = value > rule.low if rule.above else value >= rule.low
    if not low_ok or value > rule.high:
        bracket = "(" if rule.above else "["
        raise ConfigValueError(f"{key} must lie in {bracket}{_number(rule.low)}, {_number(rule.high)}], got {shown}")


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e12 else f"{x:g}"


def flatten(cfg, prefix: str = "") -> dict:
    """{dotted key: value} of every leaf of a ConfigDict."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if hasattr(v, "items") and not isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def numeric_fields(cfg):
    """(dotted key, value) of every int or float leaf (None, an unset cell field, skipped)."""
    return [(k, v) for k, v in flatten(cfg).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def check(cfg, overrides: Iterable[str] = ()):
    """Check every number of `cfg` (see the module docstring); returns cfg, with the task config's operator
    fields dropped when the command line changed `operator.name`."""
    overrides = [o[len("config."):] if o.startswith("config.") else o for o in overrides]
    if "operator" in cfg and "operator.name" in overrides:
        cfg = reset_operator(cfg, overrides)
    for key, value in flatten(cfg).items():
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise ConfigValueError(f"{key} has {len(value)} characters; at most {MAX_TEXT} (a path or a list of names)")
    for key, value in numeric_fields(cfg):
        rule = rule_for(key)
        if rule is None:
            raise ConfigValueError(f"{key} = {value!r:.40}: no range is known for this field")
        check_value(key, value, rule)
    check_relations(cfg)
    return cfg


def reset_operator(cfg, overrides):
    """cfg with only `name` and the command line's fields in `operator`; a field the operator's `make` does
    not take is refused by name."""
    from dps_jax import operators

    name = cfg.operator.name
    spec = operators.spec(name)
    params = inspect.signature(spec.make).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [p for p in params if p not in ("image_shape", "key")]
    for field in list(cfg.operator.keys()):
        if field == "name":
            continue
        if f"operator.{field}" not in overrides:
            with cfg.unlocked():
                del cfg.operator[field]
        elif not takes_any and field not in accepted:
            raise ConfigValueError(f"operator.{field} is not an option of operator {name!r}; its options are "
                                   f"{', '.join(accepted) or 'none'}")
    return cfg


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, "get") or part not in node:
            return None
        node = node[part]
    return node


def check_relations(cfg) -> None:
    """The checks that take two fields or more (see the module docstring)."""
    for prefix in ("", "cells."):
        solver = _get(cfg, prefix + "solver")
        if solver is None:
            continue
        for name, section in solver.items():
            if not hasattr(section, "get"):
                continue
            lower, upper = section.get("lower"), section.get("upper")
            if lower is not None and upper is not None and not lower < upper:
                raise ConfigValueError(f"{prefix}solver.{name}.lower {lower} must be below its upper {upper}")
            lo, hi = section.get("sigma_min"), section.get("sigma_max")
            if lo is not None and hi is not None and not lo < hi:
                raise ConfigValueError(f"{prefix}solver.{name}.sigma_min {lo} must be below its sigma_max {hi}")
        t_star, num_t = _get(cfg, prefix + "solver.sdedit.t_star"), _get(cfg, prefix + "diffusion.num_timesteps")
        if t_star is not None and num_t is not None and t_star > num_t:
            raise ConfigValueError(f"{prefix}solver.sdedit.t_star {t_star} is beyond the schedule's "
                                   f"{num_t} timesteps (diffusion.num_timesteps)")
    check_memory(cfg)


def host_memory() -> Optional[int]:
    """Bytes of memory this machine has (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_bytes(cfg) -> Optional[dict]:
    """{what: bytes} of the largest arrays a run of `cfg` keeps, from its numbers alone (before any model
    loads): the samples with their snapshots, the phase-retrieval padding, the png of a sample row. None for
    a config that is not a task config."""
    size, samples = _get(cfg, "data.image_size"), _get(cfg, "num_samples")
    if size is None or samples is None:
        return None
    channels = 3
    image = size * size * channels * 4
    parts = {"samples and their 10 snapshots of x and x0_hat": samples * image * 21}
    oversample = _get(cfg, "operator.oversample")
    if oversample is not None and _get(cfg, "operator.name") == "phase_retrieval":
        padded = size * (1 + oversample)
        parts["the padded Fourier transforms"] = samples * padded * padded * channels * 8 * 4
    scale = _get(cfg, "output.png_scale") or 1
    parts["a row of the report png"] = (size * scale) ** 2 * channels * min(samples + 3, 11)
    return parts


def check_memory(cfg, available: Optional[int] = None) -> None:
    """Refuse a config whose arrays alone need more memory than the machine has, with the estimate."""
    parts = estimate_bytes(cfg)
    available = available if available is not None else host_memory()
    if not parts or available is None:
        return
    need = sum(parts.values())
    if need > available:
        biggest = max(parts, key=parts.get)
        raise ConfigValueError(
            f"data.image_size {_get(cfg, 'data.image_size')} with num_samples {_get(cfg, 'num_samples')} needs "
            f"about {need / GIB:.1f} GiB for its arrays alone ({biggest}: {parts[biggest] / GIB:.1f} GiB), "
            f"more than this machine's {available / GIB:.1f} GiB")
