"""Solvers of inverse problems y = noise(A(x)), by name; one module per method.

    from dps_jax import solvers
    runner = solvers.build(prior, (32, 32, 1), solver="ps", options={"scale": 10.0, "steps": 50}, num_samples=4)
    out = runner(solvers.make_problem(op, y, (32, 32, 1)), jax.random.PRNGKey(0))

A new method is one module defining a `base.Solver` (its Options, init and update; draw, result, grid,
needs, check and network where it differs from the defaults) and one line in `registry.REGISTRY` (or a call
to `register` from your own code). docs/solvers.md has the details.
"""

from dps_jax.solvers.base import Grid, Problem, Solver, make_options, make_problem, prepare  # noqa: F401
from dps_jax.solvers.registry import REGISTRY, config_key, get, register  # noqa: F401
from dps_jax.solvers.runner import Runner, build  # noqa: F401
