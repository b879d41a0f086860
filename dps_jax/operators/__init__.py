"""Forward operators A of the paper's inverse problems, as pure functions of one image.

An `Operator` is a pytree: its `name` is static (it picks the functions, so it is part of what jit
compiles) and its data arrays (mask, kernel, resize matrices) are arguments, so one compiled sampler serves
every measurement of the same shapes. Images are one (H, W, C) array in [-1, 1]; batch with `vmap`.

    op = operators.build("super_resolution", (256, 256, 3), scale_factor=4)
    y = op(x)                      # A(x), (64, 64, 3)
    x_p = op.project(x, y_noisy)   # replace the measured part of x by y_noisy (linear operators)
    sp = op.svd((256, 256, 3))     # A = U Sigma V^T (`spectral.Spectral`), for the operators that have one
    picture = op.display(y)        # an image-shaped picture of y, for figures (not A^T)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import flax.struct
import jax

from dps_jax.operators import blur, identity, inpainting, nonlinear_blur, phase_retrieval, super_resolution


class OperatorSpec(NamedTuple):
    make: Callable[..., Dict[str, Any]]            # (image_shape, **options) -> data (host side)
    forward: Callable                              # (x, data) -> A(x)
    project: Optional[Callable] = None             # (x, y, data) -> x with A(x) replaced by y
    display: Optional[Callable] = None             # (y, data) -> an image-shaped picture of y
    linear: bool = True
    random: bool = False                           # make() draws its data (mask, kernel) from a `key`
    # A nonlinear A whose y is an image like x: (x, y, data) -> x + y - A(x), the data-consistency step
    # the official code uses as the "projection" of such operators (MCG on nonlinear deblurring).
    correct: Optional[Callable] = None
    # (data, image_shape, cutoff) -> spectral.Spectral: A = U Sigma V^T, for spectral solvers (DDRM, PiGDM)
    svd: Optional[Callable] = None


REGISTRY: Dict[str, OperatorSpec] = {
    "super_resolution": OperatorSpec(super_resolution.make, super_resolution.forward,
                                     super_resolution.project, super_resolution.display,
                                     svd=super_resolution.svd),
    "inpainting": OperatorSpec(inpainting.make, inpainting.forward, inpainting.project,
                               inpainting.display, random=True, svd=inpainting.svd),
    "gaussian_blur": OperatorSpec(blur.make_gaussian, blur.forward, blur.project, blur.display,
                                  svd=blur.gaussian_svd),
    "motion_blur": OperatorSpec(blur.make_motion, blur.forward, blur.project, blur.display, random=True),
    "phase_retrieval": OperatorSpec(phase_retrieval.make, phase_retrieval.forward,
                                    phase_retrieval.project, phase_retrieval.display, linear=False),
    "nonlinear_blur": OperatorSpec(nonlinear_blur.make, nonlinear_blur.forward, display=nonlinear_blur.display,
                                   linear=False, random=True, correct=nonlinear_blur.correct),
    "identity": OperatorSpec(identity.make, identity.forward, identity.project, identity.display,
                             svd=identity.svd),
}


def spec(name: str) -> OperatorSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown operator {name!r}; expected one of {sorted(REGISTRY)}") from None


@flax.struct.dataclass
class Operator:
    """A forward model A with its data.

    `name` and `static` (Python numbers such as a padding, as sorted (key, value) pairs) are part of
    the compiled program; `arrays` (mask, kernel, matrices) are its arguments.
    """
    name: str = flax.struct.field(pytree_node=False)
    arrays: Dict[str, Any] = flax.struct.field(default_factory=dict)
    static: Tuple[Tuple[str, Any], ...] = flax.struct.field(pytree_node=False, default=())

    @property
    def data(self) -> Dict[str, Any]:
        """Everything the operator's functions take besides x or y, by name: static numbers and arrays."""
        return {**dict(self.static), **self.arrays}

    def __call__(self, x):
        """A(x) for one image x of shape (H, W, C)."""
        return spec(self.name).forward(x, self.data)

    def project(self, x, y):
        """x with its measured part replaced by y, so that A(project(x, y)) = y."""
        fn = spec(self.name).project
        if fn is None:
            raise ValueError(f"operator {self.name!r} has no projection; use the solver 'ps'")
        return fn(x, y, self.data)

    def correct(self, x, y):
        """x + y - A(x): the data-consistency step of a nonlinear A that maps images to images (see
        OperatorSpec.correct); a linear A's is its projection."""
        if self.linear:
            return self.project(x, y)
        fn = spec(self.name).correct
        if fn is None:
            raise ValueError(f"operator {self.name!r} has no data-consistency step; use the solver 'ps'")
        return fn(x, y, self.data)

    def svd(self, image_shape, cutoff: float = 0.0):
        """A = U Sigma V^T for images of shape (H, W, C) (`spectral.Spectral`), 1-D singular values below
        `cutoff` set to 0; a ValueError naming the operator if it has none."""
        s = spec(self.name)
        if s.svd is None:
            what = "no SVD (it is not linear)" if not s.linear else "no efficient SVD"
            raise ValueError(f"operator {self.name!r} has {what}, so spectral solvers such as DDRM cannot "
                             f"take it; use 'ps'")
        return s.svd(self.data, tuple(image_shape), cutoff)

    @property
    def has_svd(self) -> bool:
        return spec(self.name).svd is not None

    @property
    def has_projection(self) -> bool:
        return self.linear and spec(self.name).project is not None

    @property
    def has_correction(self) -> bool:
        return not self.linear and spec(self.name).correct is not None

    def display(self, y):
        """An image-shaped picture of a measurement y, for figures: the low-resolution image upsampled,
        the masked or blurred image, the log Fourier amplitude. Not the adjoint A^T."""
        return spec(self.name).display(y, self.data)

    def adjoint(self, y, x_like):
        """A^T y for a linear A: its transpose at the image shape of x_like (H, W, C)."""
        if not self.linear:
            raise ValueError(f"operator {self.name!r} is nonlinear: it has no adjoint")
        return jax.linear_transpose(self, x_like)(y)[0]

    @property
    def linear(self) -> bool:
        return spec(self.name).linear


def build(name: str, image_shape, key=None, **options) -> Operator:
    """Build the operator `name` for images of shape (H, W, C); options are checked and named in errors.

    `key` (a jax PRNG key) draws the random data of the operators that have some (an inpainting mask, a
    motion-blur kernel) unless it is given as an option (`mask=`, `kernel=`); other operators ignore it.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
    s = spec(name)
    if s.random:
        options["key"] = key
    data = s.make(tuple(int(d) for d in image_shape), **options)
    static = tuple(sorted((k, v) for k, v in data.items() if isinstance(v, (int, float, str))))
    arrays = {k: v for k, v in data.items() if not isinstance(v, (int, float, str))}
    return Operator(name=name, arrays=arrays, static=static)
