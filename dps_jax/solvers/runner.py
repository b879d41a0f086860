"""The builder behind both the CLI and the API: a solver, a prior and a schedule become a Runner that
draws N posterior samples of one measurement per call.

    runner = build(prior, (256, 256, 3), solver="ps", options={"scale": 0.3, "steps": 1000},
                   num_samples=16, chunk_size=4)
    runner.compile(problem)                       # optional, ahead of time; returns the seconds it took
    out = runner(problem, key, progress=fn)       # {"samples": (N, H, W, C), "distance": (N, T), ...}

- Samples: N keys split from `key`. Sample i does not depend on N, on the chunk size or on the devices,
  and equals `loop.run` from keys[i].
- chunk_size K: samples are drawn K at a time (0: `auto_chunk_size`); one compiled program serves every
  chunk and every measurement of the same shapes. A chunk is rounded up to a multiple of the device count.
- devices: each chunk is sharded along its sample axis over the devices (default: all local devices);
  the prior, the problem and the options are replicated.
- steps_per_call: the loop's `lax.scan` runs this many steps per compiled call, and
  `progress(done, total, scalars)` is called between calls with the last step's scalars (the distance).
  0 picks about 20 calls per run. The next call is dispatched before the last one's progress is read,
  so the device does not wait for the host.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dps_jax.solvers import loop
from dps_jax.solvers.base import KINDS, Grid, Problem, Schedule, Solver, check_int, make_options, prepare
from dps_jax.solvers.registry import get

PROGRESS_UPDATES = 20
# Every compiled call has a fixed cost besides its steps (on XLA:CPU about 2 s for the FFHQ 256 step,
# benchmarks/progress_overhead.py); at least this many steps per call keeps it to a few percent.
MIN_STEPS_PER_CALL = 10
# Above this many pixels per image, XLA:CPU draws samples faster one at a time than vmapped: one sample's
# activations stay in the cache between layers, several do not. FFHQ-layout UNet, per sample at N = 4
# against N = 1: 0.73x at 32 x 32, 0.86x at 64, 1.04x at 128, 1.09x at 256 (benchmarks/cost_scaling.py;
# 1.22x in benchmarks/step_speed.py, whose single step has no per-call cost for four samples to share).
CPU_VMAP_MAX_PIXELS = 64 * 64


def auto_steps_per_call(num_steps: int, updates: int = PROGRESS_UPDATES, least: int = MIN_STEPS_PER_CALL) -> int:
    """Steps per compiled call: the largest divisor of num_steps up to max(least, num_steps // updates),
    so long runs report progress about `updates` times and no call is shorter than `least` steps when
    a divisor allows it (1000 -> 50, 100 -> 10, 50 -> 10, 7 -> 7; a prime such as 37 has only 1)."""
    limit = max(least, num_steps // updates)
    return max(d for d in range(1, min(limit, num_steps) + 1) if num_steps % d == 0)


def auto_chunk_size(num_samples: int, image_shape: Sequence[int], platform: str) -> int:
    """Samples per compiled call when the user sets none: all of them, except on a CPU for images larger
    than CPU_VMAP_MAX_PIXELS, where one at a time is faster per sample."""
    if platform == "cpu" and image_shape[0] * image_shape[1] > CPU_VMAP_MAX_PIXELS:
        return 1
    return num_samples


def build(prior, image_shape: Sequence[int], *, solver="ps", options: Optional[dict] = None,
          schedule: str = "linear", num_timesteps: int = 1000, num_samples: int = 1, chunk_size: int = 0,
          record_every: int = 0, snapshots: int = 0, steps_per_call: int = 0, devices=None,
          network=None) -> "Runner":
    """Check everything about a run and return its Runner (see the module docstring).

    solver: a registered name or a `base.Solver`; options: its options by name (defaults: the reference's;
    `steps` is the step count of every solver); schedule / num_timesteps: the prior's diffusion process
    the solver's grid is cut from (`schedule.build_tables`), unused by iterative solvers.
    record_every: keep snapshots (x, x0_hat) every k steps; or snapshots: about this many, evenly spaced.
    network: the own network of a solver that brings one (PnP-ADMM's denoiser: an (H, W, C) -> (H, W, C)
    pytree callable), in place of the one its options name.
    """
    spec = get(solver) if isinstance(solver, str) else solver
    if spec.kind not in KINDS:
        raise ValueError(f"solver {spec.name!r} has kind {spec.kind!r}; expected one of {KINDS}")
    opts = make_options(spec, **dict(options or {}))
    image_shape = tuple(int(s) for s in image_shape)
    if spec.kind == "diffusion":
        if prior is None:
            raise ValueError(f"solver {spec.name!r} needs a diffusion prior")
        prior.check()
        prior.check_image_shape(image_shape)
        if prior.schedule is not None and tuple(prior.schedule) != (schedule, num_timesteps):
            raise ValueError(f"the prior was trained on the {prior.schedule[0]} schedule of {prior.schedule[1]} "
                             f"steps; the run asks for {schedule} with {num_timesteps} (set the config's "
                             f"diffusion schedule to match)")
        model = prior
    elif spec.network is not None:      # an iterative solver gets its own network in the model's place
        model = network if network is not None else spec.network(opts)
    else:
        model = None
    grid = spec.step_grid(opts, Schedule(schedule, num_timesteps))
    if check_int("snapshots", snapshots, 0) and not record_every:
        record_every = max(1, int(jax.tree_util.tree_leaves(grid.xs)[0].shape[0]) // snapshots)
    return Runner(spec, opts, model, image_shape, grid, num_samples=num_samples, chunk_size=chunk_size,
                  record_every=record_every, steps_per_call=steps_per_call, devices=devices)


class Runner:
    """Draws posterior samples of one measurement per call: runner(problem, key, progress=None) -> dict.

    Returns numpy arrays: samples (N, H, W, C), each per-step scalar of the solver's record (N, T), and
    with record_every > 0 each snapshot as <name>_record (N, ceil(T / record_every), ...).
    """

    def __init__(self, solver: Solver, options, model, image_shape, grid: Grid, *, num_samples: int = 1,
                 chunk_size: int = 0, record_every: int = 0, steps_per_call: int = 0, devices=None):
        self.solver, self.options, self.image_shape = solver, options, tuple(image_shape)
        self.evaluations = int(grid.evaluations)        # network evaluations per sample
        self.num_samples = check_int("num_samples", num_samples, 1)
        chunk_size = check_int("chunk_size", chunk_size, 0)
        self.record_every = check_int("record_every", record_every, 0)
        self.xs = jax.tree_util.tree_map(np.asarray, grid.xs)
        self.num_steps = int(jax.tree_util.tree_leaves(self.xs)[0].shape[0])
        steps_per_call = check_int("steps_per_call", steps_per_call, 0) or auto_steps_per_call(self.num_steps)
        if self.num_steps % steps_per_call:
            raise ValueError(f"steps_per_call {steps_per_call} does not divide the {self.num_steps} steps")
        self.steps_per_call = steps_per_call

        self.devices = list(devices or jax.local_devices())
        n_dev = len(self.devices)
        chunk_size = chunk_size or auto_chunk_size(self.num_samples, self.image_shape, self.devices[0].platform)
        self.chunk = math.ceil(chunk_size / n_dev) * n_dev
        mesh = Mesh(np.array(self.devices), ("samples",))
        self.batched = NamedSharding(mesh, PartitionSpec("samples"))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.model = None if model is None else jax.device_put(model, self.replicated)

        b, r = self.batched, self.replicated
        self._init = jax.jit(self._init_chunk, in_shardings=(b, r, r, r), out_shardings=b)
        self._advance = jax.jit(self._advance_chunk, in_shardings=(b, r, r, r, r, r), out_shardings=b,
                                donate_argnums=0)
        self._result = jax.jit(jax.vmap(solver.result), in_shardings=b, out_shardings=b)
        # Many problems at once (`call_many`): the same programs with a problem per sample.
        self._init_many = jax.jit(jax.vmap(self._init_one, in_axes=(0, 0, None, None)), in_shardings=(b, b, r, r),
                                  out_shardings=b)
        self._advance_many = jax.jit(self._advance_chunk_many, in_shardings=(b, r, r, b, r, r), out_shardings=b,
                                     donate_argnums=0)
        self._compiled = {}
        self._record_shapes = {}

    # ---- the two compiled programs -------------------------------------------------------------

    def _init_one(self, key, problem, prior, options):
        """One sample: the initial state, empty snapshot buffers and the key the step keys come from."""
        state, step_key = loop.init_one(self.solver, key, problem, prior, options, self.image_shape)
        records = {k: jnp.zeros(s.shape, s.dtype) for k, s in self._record_shapes.items()}
        return state, records, step_key

    def _init_chunk(self, keys, problem, prior, options):
        return jax.vmap(lambda key: self._init_one(key, problem, prior, options))(keys)

    def _snapshot_shapes(self, problem):
        """The snapshot buffers of one sample as ShapeDtypeStructs; traces one step when snapshots are kept
        (once per compile: the init program then holds no trace of the step)."""
        count = loop.num_records(self.num_steps, self.record_every)
        if not count:
            return {}

        def one(key):
            state, step_key = loop.init_one(self.solver, key, problem, self.model, self.options, self.image_shape)
            c0 = jax.tree_util.tree_map(lambda a: a[0], self.xs)
            return loop.empty_records(self.solver, state, c0, step_key, problem, self.model, self.options, count)
        return jax.eval_shape(one, jax.random.PRNGKey(0))

    def _advance_chunk(self, carry, xs, first_step, problem, prior, options):
        """steps_per_call steps of every sample of a chunk, from global step `first_step`."""
        def one(state, records, step_key):
            state, records, scalars = loop.scan(self.solver, state, xs, step_key, problem, prior, options,
                                                records=records, first_step=first_step,
                                                record_every=self.record_every)
            return (state, records, step_key), scalars
        return jax.vmap(one)(*carry)

    def _advance_chunk_many(self, carry, xs, first_step, problems, prior, options):
        """As _advance_chunk, each sample with its own problem (a leading axis on every array of `problems`)."""
        def one(state, records, step_key, problem):
            state, records, scalars = loop.scan(self.solver, state, xs, step_key, problem, prior, options,
                                                records=records, first_step=first_step,
                                                record_every=self.record_every)
            return (state, records, step_key), scalars
        return jax.vmap(one)(*carry, problems)

    # ---- compile and run -----------------------------------------------------------------------

    def _signature(self, problem):
        leaves, tree = jax.tree_util.tree_flatten(problem)
        return tree, tuple((np.shape(l), str(getattr(l, "dtype", type(l).__name__))) for l in leaves)

    def prepare(self, problem: Problem) -> Problem:
        """The problem checked against what the solver needs, with the operator's SVD attached where the
        solver uses one (`base.prepare`)."""
        return prepare(self.solver, problem, self.options, self.image_shape)

    def compile(self, problem: Problem) -> float:
        """Compile both programs for this problem's shapes ahead of time; returns the seconds it took."""
        problem = self.prepare(problem)
        sig = self._signature(problem)
        if sig in self._compiled:
            return 0.0
        t0 = time.perf_counter()
        self._record_shapes = self._snapshot_shapes(problem)
        key = jax.random.PRNGKey(0)
        keys = jax.ShapeDtypeStruct((self.chunk,) + key.shape, key.dtype)
        init = self._init.lower(keys, problem, self.model, self.options).compile()
        carry = jax.eval_shape(self._init_chunk, keys, problem, self.model, self.options)
        k = self.steps_per_call
        xs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((k,) + a.shape[1:], a.dtype), self.xs)
        advance = self._advance.lower(carry, xs, np.int32(0), problem, self.model, self.options).compile()
        self._compiled[sig] = (init, advance)
        return time.perf_counter() - t0

    def memory_bytes(self, problem: Problem) -> Tuple[int, int]:
        """(device bytes of one compiled call on a chunk, host bytes of the N samples' outputs), from XLA's
        memory analysis of the compiled programs and the output shapes; compiles if needed."""
        problem = self.prepare(problem)
        self.compile(problem)
        device = 0
        for program in self._compiled[self._signature(problem)]:
            m = program.memory_analysis()
            if m is not None:
                device = max(device, m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                             - m.alias_size_in_bytes)
        per_sample = 4 * (int(np.prod(self.image_shape)) + self.num_steps * 4)   # float32 sample, <= 4 scalars/step
        per_sample += sum(int(np.prod(r.shape)) * r.dtype.itemsize for r in self._record_shapes.values())
        return device, per_sample * self.num_samples

    def call_many(self, problems, key, progress: Optional[Callable] = None) -> dict:
        """N samples of each of B problems of the same shapes in one compiled program, vmapped over
        (problem, sample) pairs and chunked as __call__ chunks samples. Problem i's samples come from
        fold_in(key, i), so they equal `self(problems[i], jax.random.fold_in(key, i))`. Returns the outputs of
        __call__ with a leading axis B."""
        problems = [self.prepare(p) for p in problems]
        tree = jax.tree_util.tree_structure(problems[0])
        if any(jax.tree_util.tree_structure(p) != tree or self._signature(p) != self._signature(problems[0])
               for p in problems):
            raise ValueError("the problems of one call differ in their operator, noise model or array shapes; "
                             "solve them in separate calls")
        stacked = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(v) for v in a]), *problems)
        sig = ("many",) + self._signature(problems[0])
        b_count, s_count = len(problems), self.num_samples
        if sig not in self._compiled:
            self._record_shapes = self._snapshot_shapes(problems[0])
            spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((self.chunk,) + a.shape[1:], a.dtype), stacked)
            k0 = jax.random.PRNGKey(0)
            keys_spec = jax.ShapeDtypeStruct((self.chunk,) + k0.shape, k0.dtype)
            init = self._init_many.lower(keys_spec, spec, self.model, self.options).compile()
            carry = jax.eval_shape(jax.vmap(self._init_one, in_axes=(0, 0, None, None)), keys_spec, spec, self.model,
                                   self.options)
            k = self.steps_per_call
            xs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((k,) + a.shape[1:], a.dtype), self.xs)
            advance = self._advance_many.lower(carry, xs, np.int32(0), spec, self.model, self.options).compile()
            self._compiled[sig] = (init, advance)
        init, advance = self._compiled[sig]
        keys = np.concatenate([np.asarray(jax.random.split(jax.random.fold_in(key, i), s_count))
                               for i in range(b_count)])
        owner = np.repeat(np.arange(b_count), s_count)            # item j is a sample of problem owner[j]
        total_items, k = len(keys), self.steps_per_call
        n_chunks = math.ceil(total_items / self.chunk)
        chunks = []
        for ci in range(n_chunks):
            idx = np.arange(ci * self.chunk, (ci + 1) * self.chunk)
            idx = np.minimum(idx, total_items - 1)                # pad with the last item; dropped below
            part = jax.device_put(jax.tree_util.tree_map(lambda a: a[owner[idx]], stacked), self.batched)
            carry = init(keys[idx], part, self.model, self.options)
            scalars = []
            for s in range(0, self.num_steps, k):
                xs = jax.tree_util.tree_map(lambda a: a[s:s + k], self.xs)
                carry, sc = advance(carry, xs, np.int32(s), part, self.model, self.options)
                if progress is not None:
                    progress(ci * self.num_steps + s + k, n_chunks * self.num_steps, {n: v[:, -1] for n, v in sc.items()})
                scalars.append(sc)
            state, records, _ = carry
            keep = min(self.chunk, total_items - ci * self.chunk)
            out = {"samples": self._result(state),
                   **{n: jnp.concatenate([sc[n] for sc in scalars], axis=1) for n in scalars[0]},
                   **{f"{n}_record": v for n, v in records.items()}}
            chunks.append({n: np.asarray(v)[:keep] for n, v in out.items()})
        flat = {n: np.concatenate([c[n] for c in chunks]) for n in chunks[0]}
        return {n: v.reshape((b_count, s_count) + v.shape[1:]) for n, v in flat.items()}

    def __call__(self, problem: Problem, key, progress: Optional[Callable] = None, options=None) -> dict:
        """Samples of one problem. `options` (from `base.make_options`) replaces the runner's with new
        values of its float options (a step size sweep) and reuses the compiled programs."""
        if options is not None:
            if jax.tree_util.tree_structure(options) != jax.tree_util.tree_structure(self.options):
                raise ValueError(f"options {options} differ from the runner's {self.options} in more than "
                                 f"their float values; build a new runner")
            self.options = options
        problem = self.prepare(problem)
        self.compile(problem)
        init, advance = self._compiled[self._signature(problem)]
        problem = jax.device_put(problem, self.replicated)
        keys = np.asarray(jax.random.split(key, self.num_samples))
        n_chunks = math.ceil(self.num_samples / self.chunk)
        total, k = self.num_steps * n_chunks, self.steps_per_call
        chunks = []
        for ci in range(n_chunks):
            ks = keys[ci * self.chunk:(ci + 1) * self.chunk]
            if len(ks) < self.chunk:      # pad to the compiled size; the extra samples are dropped
                extra = np.asarray(jax.random.split(jax.random.fold_in(key, self.num_samples), self.chunk - len(ks)))
                ks = np.concatenate([ks, extra])
            carry = init(ks, problem, self.model, self.options)
            scalars, pending = [], None
            for s in range(0, self.num_steps, k):
                xs = jax.tree_util.tree_map(lambda a: a[s:s + k], self.xs)
                carry, sc = advance(carry, xs, np.int32(s), problem, self.model, self.options)
                if progress is not None and pending is not None:
                    progress(*pending)
                pending = (ci * self.num_steps + s + k, total, {n: v[:, -1] for n, v in sc.items()})
                scalars.append(sc)
            if progress is not None:
                progress(*pending)
            state, records, _ = carry
            keep = min(self.chunk, self.num_samples - ci * self.chunk)
            out = {"samples": self._result(state),
                   **{n: jnp.concatenate([sc[n] for sc in scalars], axis=1) for n in scalars[0]},
                   **{f"{n}_record": v for n, v in records.items()}}
            chunks.append({n: np.asarray(v)[:keep] for n, v in out.items()})
        return {n: np.concatenate([c[n] for c in chunks]) for n in chunks[0]}
