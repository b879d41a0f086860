"""The JAX side of the speed benchmark measures the step it claims to (no torch needed)."""

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import step_speed  # noqa: E402


def test_step_costs_one_forward_and_one_input_gradient():
    """The DPS step differentiates with respect to x_t only: about twice a forward pass's FLOPs (each
    convolution once forward, once for its input gradient). Parameter gradients would make it about three."""
    run, _, step_flops, parts, _, _ = step_speed.jax_step_fn("tiny", 1)
    pr = parts[0]
    model, params = pr.apply.module, pr.params
    x, _ = step_speed.jax_inputs(1, 32)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, jnp.full((1,), step_speed.STEP_INDEX)))
    forward_flops = step_speed._flops(forward.lower(params, x).compile())
    assert 1.8 < step_flops / forward_flops < 2.3, (step_flops, forward_flops)
    x_next, distance = run()
    assert x_next.shape == (1, 32, 32, 3) and bool(jnp.all(jnp.isfinite(x_next))) and float(distance[0]) > 0
