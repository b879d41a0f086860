"""Levers for the DPS step's speed (benchmarks/RESULTS.md, "Levers tried"), side by side in one run.

    python -m benchmarks.levers --model ffhq256 --repeats 10 --out benchmarks/levers_ffhq256.json
    python -m benchmarks.levers --variants base,bfloat16 --repeats 10           # base and the variants named
    python -m benchmarks.levers --layout --repeats 10   # one 3 x 3 convolution, NHWC / HWIO against NCHW / OIHW

Variants of dps_jax's N = 1 step (the step of benchmarks/step_speed.py), compiled, then timed in turns:
  base             as shipped
  bfloat16         the UNet computing in bfloat16 (GroupNorm and softmax stay float32)
  attention_dpa    attention by jax.nn.dot_product_attention (implementation "xla")
  attention_none   every attention block replaced by the identity: a diagnostic of the blocks' share
  donate           x_t's buffer donated to the step
  xla_sched_memory, xla_sched_concurrency
                   XLA:CPU's memory- or concurrency-optimised instruction scheduler instead of its default
  xla_ynn_eltwise  YNNPACK given XLA's elementwise and reduction fusions too, not only the convolutions
  xla_xnn_graph    XLA:CPU's greedy extraction of XNNPACK subgraphs (mode GREEDY_SLINKY)
Each prints min and median seconds, the median over turns of its time over base's in the same turn,
compile seconds, XLA temporaries, and how far its x_{t-1} is from base's, relative to base's largest
change |x_{t-1} - x_t|.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import numpy as np

from benchmarks import step_speed

# Options of XLA:CPU for one compilation (jax's `compiler_options`), as variants.
XLA_OPTIONS = {
    "xla_sched_memory": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"},
    "xla_sched_concurrency": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"},
    # A list given here replaces the default set of YNNPACK fusion types (the XLA_FLAGS form "+eltwise,+reduce"
    # adds to it), so it names the defaults too; the tiny step compiles to the same program either way.
    "xla_ynn_eltwise": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"},
    "xla_xnn_graph": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY_SLINKY"},
}
VARIANTS = ("base", "bfloat16", "attention_dpa", "attention_none", "donate", *XLA_OPTIONS)


@contextlib.contextmanager
def _variant_model(variant):
    """The UNet as the variant has it while its step is traced: the attention swapped, then restored."""
    import flax.linen as nn
    import jax

    from dps_jax.models import unet

    saved = unet.attention, unet.AttentionBlock
    if variant == "attention_dpa":
        # q, k, v are already (N, T, heads, C), the layout jax.nn.dot_product_attention takes; its
        # default scale 1/sqrt(C) is the model's.
        unet.attention = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
    elif variant == "attention_none":
        class NoAttention(unet.AttentionBlock):
            @nn.compact
            def __call__(self, x):
                return x

        unet.AttentionBlock = NoAttention
    try:
        yield
    finally:
        unet.attention, unet.AttentionBlock = saved


def step_variants(model_name, repeats, variants=VARIANTS):
    """Compile every variant's step, then time them in turns (after one warm-up each) so that the shared
    machine's drift falls on all alike; a list of their figures."""
    size = step_speed.MODELS[model_name]["image_size"]
    x_t = np.asarray(step_speed.jax_inputs(1, size)[0])
    runs, rows = {}, {}
    for variant in variants:
        with _variant_model(variant):
            run, compile_s, _, _, temp_mib, _ = step_speed.jax_step_fn(
                model_name, 1, dtype="bfloat16" if variant == "bfloat16" else "float32", donate=variant == "donate",
                compiler_options=XLA_OPTIONS.get(variant))
        x_next = np.asarray(run()[0])
        runs[variant] = run
        base = rows["base"]["x_next"] if rows else x_next
        rows[variant] = {"variant": variant, "compile_s": compile_s, "xla_temp_mib": temp_mib, "times": [],
                         "x_next": x_next,
                         "rel_diff_from_base": float(np.abs(x_next - base).max() / np.abs(base - x_t).max())}
    for _ in range(repeats):
        for variant, run in runs.items():
            rows[variant]["times"].append(step_speed._timed(run))
    out = []
    for row in rows.values():
        del row["x_next"]
        # Time over base's time in the same turn: the machine's drift cancels in the pair.
        ratios = [t / b for t, b in zip(row["times"], rows["base"]["times"])]
        row.update(min_s=min(row["times"]), median_s=statistics.median(row["times"]),
                   median_time_over_base=statistics.median(ratios))
        out.append(row)
        print(f"{row['variant']:<22}{row['min_s']:9.3f}{row['median_s']:10.3f}{row['median_time_over_base']:9.3f}"
              f"{row['compile_s']:9.1f}{row['xla_temp_mib']:10.0f}  {row['rel_diff_from_base']:.1e}", flush=True)
    return out


def layout(repeats):
    """Forward and input-gradient milliseconds of one 3 x 3 convolution (batch 1) in both layouts, the two
    timed in turns."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    rows = []
    for hw, c in ((256, 128), (64, 256), (32, 512)):
        calls = {}
        for dn in (("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW")):
            x = jax.random.normal(jax.random.PRNGKey(0), (1, hw, hw, c) if dn[0] == "NHWC" else (1, c, hw, hw))
            k = 0.01 * jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, c) if dn[1] == "HWIO" else (c, c, 3, 3))

            def conv(x, k, dn=dn):
                return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)

            forward = jax.jit(conv)
            input_grad = jax.jit(lambda x, k, ct, conv=conv: jax.vjp(lambda x: conv(x, k), x)[1](ct)[0])
            ct = jnp.ones_like(forward(x, k))
            calls[(dn[0], "forward_ms")] = lambda f=forward, x=x, k=k: f(x, k)
            calls[(dn[0], "input_gradient_ms")] = lambda f=input_grad, x=x, k=k, ct=ct: f(x, k, ct)
        times = {key: [] for key in calls}
        for call in calls.values():
            jax.block_until_ready(call())
        for _ in range(repeats):
            for key, call in calls.items():
                times[key].append(step_speed._timed(lambda: jax.block_until_ready(call())))
        for name in ("NHWC", "NCHW"):
            row = {"size": hw, "channels": c, "layout": name,
                   **{kind: 1e3 * min(times[(name, kind)]) for kind in ("forward_ms", "input_gradient_ms")}}
            rows.append(row)
            print(f"{hw}^2 x {c} {name}: forward {row['forward_ms']:.1f} ms, "
                  f"input gradient {row['input_gradient_ms']:.1f} ms", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ffhq256", choices=sorted(step_speed.MODELS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layout", action="store_true", help="time one convolution in both layouts instead")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated, from " + ", ".join(VARIANTS) + "; base is always timed, first")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    variants = ["base"] + [v for v in args.variants.split(",") if v and v != "base"]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"--variants: unknown {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": step_speed.machine(), "repeats": args.repeats}
    if args.layout:
        result["layout"] = layout(args.repeats)
    else:
        print(f"DPS step, {args.model}, N = 1, {result['machine']}")
        print(f"{'variant':<22}{'min s':>9}{'median s':>10}{'/ base':>9}{'compile':>9}{'XLA MiB':>10}  vs base")
        result.update(model=args.model, variants=step_variants(args.model, args.repeats, variants))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
