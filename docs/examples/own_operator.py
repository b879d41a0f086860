"""Your own forward model, three ways, with the prior that ships with dps_jax (32 x 32 Fashion-MNIST).

    python docs/examples/own_operator.py            # 8 posterior samples per problem; writes own_operator.png

1. compressed sensing: a random subset of Fourier coefficients, written with jnp (linear, declared so);
2. a linear operator given only as a function (a 2 x 2 box average), its adjoint derived;
3. a nonlinear sensor (a saturating response), as a plain function.
Each problem is about ten lines of user code: the operator, a measurement, the samples, their mean and std.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import api, data, io, operators


def main(steps: int = 100, num_samples: int = 8, out: str = "own_operator.png", prior=None):
    prior = prior or api.load_prior()                  # the shipped prior (a test passes a quicker one)
    x = data.load_image(data.list_images(data.SHIPPED_IMAGES)[0], 32, 1)      # a test image, (32, 32, 1)
    key = jax.random.PRNGKey(0)
    rows = []

    # 1. Compressed sensing: 30% of the 2-D Fourier coefficients (real and imaginary parts), declared linear.
    mask = jnp.asarray(np.random.default_rng(0).random((32, 32)) < 0.3, jnp.float32)

    def fourier(x, d):
        k = jnp.fft.fft2(x[..., 0], norm="ortho")
        return jnp.stack([k.real, k.imag], -1) * d["mask"][..., None]
    cs = operators.from_callables(fourier, (32, 32, 1), linear=True, data={"mask": mask}, name="fourier_cs")
    y = api.measure(cs, x, key, sigma=0.05)
    out1 = api.sample(prior, cs, y, solver="ddrm", options={"steps": min(steps, 20)}, sigma=0.05,
                      num_samples=num_samples)                                  # DDRM: through the dense SVD
    rows.append(out1["samples"])

    # 2. A linear operator as a function alone: 2 x 2 box averaging; A^T, A^+ and the projection are derived.
    box = operators.from_callables(lambda x: x.reshape(16, 2, 16, 2, 1).mean((1, 3)), (32, 32, 1), linear=True)
    y = api.measure(box, x, key, sigma=0.05)
    out2 = api.sample(prior, box, y, solver="ps", options={"steps": steps, "scale": 10.0}, num_samples=num_samples)
    rows.append(out2["samples"])

    # 3. A nonlinear sensor: a saturating response, as a plain function (DPS needs only its gradient).
    sensor = lambda x: jnp.tanh(2.0 * x)
    y = api.measure(sensor, x, key, sigma=0.05)
    out3 = api.sample(prior, sensor, y, solver="ps", options={"steps": steps, "scale": 10.0}, num_samples=num_samples)
    rows.append(out3["samples"])

    tiles = [np.concatenate([[x], s, [s.mean(0)], [io.normalise(s.std(0))]]) for s in rows]
    io.save_png(out, io.grid(np.concatenate(tiles), columns=num_samples + 3), scale=3)
    return {"compressed_sensing": out1, "box_average": out2, "saturating_sensor": out3}


if __name__ == "__main__":
    main(out=sys.argv[1] if len(sys.argv) > 1 else "own_operator.png")
