"""The one loop: a solver's steps as one `jax.lax.scan`, for one sample.

`scan` runs a stretch of steps (the runner calls it on consecutive stretches to report progress between
compiled calls); `run` is a whole run from a key, the pure function to vmap or jit by hand. Neither knows
which solver runs: they call its `draw`, `update` and `result` (see `solvers.base`).

Records: the scalars of each step's record (e.g. the distance) come back for every step; snapshots, that
is `result(state)` as "x" and the record's images (e.g. "x0_hat"), are kept after the steps
j = 0, k, 2k, ... (k = record_every) in buffers carried through the loop, so a long run stores
ceil(T / k) images per sample, not T.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from dps_jax.solvers.base import Solver


def split_record(record: dict):
    """(scalars, images) of a step's record."""
    scalars = {k: v for k, v in record.items() if jnp.ndim(v) == 0}
    images = {k: v for k, v in record.items() if jnp.ndim(v) > 0}
    return scalars, images


def num_records(num_steps: int, record_every: int) -> int:
    return math.ceil(num_steps / record_every) if record_every else 0


def empty_records(solver: Solver, state, c, key, problem, prior, options, count: int):
    """Zeroed snapshot buffers {name: (count, ...)} for one sample (shapes from one abstract step)."""
    if not count:
        return {}

    def snapshot(state, c, key, problem, prior, options):
        noise = solver.draw(key, state, problem, options)
        new, record = solver.update(state, c, noise, problem, prior, options)
        return {"x": solver.result(new), **split_record(record)[1]}

    shapes = jax.eval_shape(snapshot, state, c, key, problem, prior, options)
    return {k: jnp.zeros((count,) + s.shape, s.dtype) for k, s in shapes.items()}


def scan(solver: Solver, state, xs, key, problem, prior, options, *, noise=None, records=None,
         first_step=0, record_every: int = 0):
    """len(xs) steps of `solver` from `state`, for one sample.

    xs: the steps' inputs stacked on a leading axis K (coefficient rows or iteration indices); key: the
    sample's step key (global step j draws with fold_in(key, j)), or None with `noise`: the K steps' noise
    as `draw` would give it, stacked (replaying a reference run). records: snapshot buffers from
    `empty_records`, updated after the global steps j = first_step + i with j % record_every == 0.
    Returns (state, records, scalars), scalars a dict of (K,) arrays.
    """
    records = records or {}
    num = jax.tree_util.tree_leaves(xs)[0].shape[0]

    def body(carry, inputs):
        state, records = carry
        c, j, supplied = inputs
        step_noise = supplied if noise is not None else solver.draw(jax.random.fold_in(key, j), state, problem,
                                                                    options)
        state, record = solver.update(state, c, step_noise, problem, prior, options)
        scalars, images = split_record(record)
        if records:
            snaps = {"x": solver.result(state), **images}
            take, slot = j % record_every == 0, j // record_every
            records = {k: r.at[slot].set(jnp.where(take, snaps[k], r[slot])) for k, r in records.items()}
        return (state, records), scalars

    steps = first_step + jnp.arange(num, dtype=jnp.int32)
    (state, records), scalars = jax.lax.scan(body, (state, records), (xs, steps, noise))
    return state, records, scalars


def init_one(solver: Solver, key, problem, prior, options, image_shape):
    """The initial state of one sample and its step key, both from the sample's key."""
    k_init, k_steps = jax.random.split(key)
    return solver.init(k_init, problem, prior, options, image_shape), k_steps


def run(solver: Solver, key, xs, problem, prior, options, image_shape, *, record_every: int = 0, noise=None):
    """A whole run for one sample from one key: init, then every step of `xs` in one scan.

    Sample i of a runner call equals run(..., keys[i], ...) (same key splitting). Returns {"sample": the
    result, each scalar of the record: (T,), and with record_every > 0 <snapshot>_record: (ceil(T / k), ...)}.
    """
    num_steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    state, step_key = init_one(solver, key, problem, prior, options, image_shape)
    c0 = jax.tree_util.tree_map(lambda a: a[0], xs)
    records = empty_records(solver, state, c0, step_key, problem, prior, options,
                            num_records(num_steps, record_every))
    state, records, scalars = scan(solver, state, xs, step_key, problem, prior, options, noise=noise,
                                   records=records, record_every=record_every)
    return {"sample": solver.result(state), **scalars, **{f"{k}_record": v for k, v in records.items()}}
