"""Forward operators A, as pure functions of one image: the paper's, and your own.

An `Operator` is a pytree: its functions (an `OperatorSpec`) and static numbers are part of what jit
compiles, its data arrays (mask, kernel, resize matrices) are arguments, so one compiled sampler serves every
measurement of the same shapes. Images are one (H, W, C) array in [-1, 1]; batch with `vmap`.

    op = operators.build("super_resolution", (256, 256, 3), scale_factor=4)     # a built-in A, by name
    op = operators.from_callables(lambda x: fft_subsample(x), (64, 64, 1), linear=True)    # your own A
    y = op(x)                      # A(x), (64, 64, 3)
    op.adjoint(y, x)               # A^T y (linear A): the operator's own, or jax.linear_transpose of A
    x_p = op.project(x, y_noisy)   # x moved onto {A x = y} (linear A): the operator's own, or conjugate gradients
    sp = op.svd((256, 256, 3))     # A = U Sigma V^T (`spectral`): the operator's own, or dense for small images
    picture = op.display(y)        # an image-shaped picture of y, for figures (not A^T)

Built-in and user operators are the same thing: an OperatorSpec with its data; `REGISTRY` only names the
built-in specs for `build`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax.operators import (blur, identity, inpainting, nonlinear_blur, phase_retrieval, spectral,
                               super_resolution)
from dps_jax.operators import linear as linear_lib

# A linear A without an SVD of its own gets a dense one up to this many image entries (D): its matrix takes D
# applications of A, numpy's SVD O(D^3) float64 operations (about 4 s for D = 4096 on 2 CPU cores) and
# 2 D^2 x 4 bytes in float32 (128 MiB at D = 4096).
DENSE_SVD_MAX = 4096


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
    # (y, data) -> A^T y; None: jax.linear_transpose of forward (linear A)
    adjoint: Optional[Callable] = None


REGISTRY: Dict[str, OperatorSpec] = {
    "super_resolution": OperatorSpec(super_resolution.make, super_resolution.forward,
                                     super_resolution.project, super_resolution.display,
                                     svd=super_resolution.svd),
    "inpainting": OperatorSpec(inpainting.make, inpainting.forward, inpainting.project,
                               inpainting.display, random=True, svd=inpainting.svd),
    # the blurs' adjoint and projection are derived (jax.linear_transpose, conjugate gradients on A A^T)
    "gaussian_blur": OperatorSpec(blur.make_gaussian, blur.forward, display=blur.display,
                                  svd=blur.gaussian_svd),
    "motion_blur": OperatorSpec(blur.make_motion, blur.forward, display=blur.display, random=True),
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

    `name`, `spec` (its functions) and `static` (Python numbers such as a padding, as sorted (key, value)
    pairs) are part of the compiled program; `arrays` (mask, kernel, matrices) are its arguments. A linear
    A gets what it does not supply derived from its forward function: the adjoint (jax.linear_transpose),
    the projection onto {x : A x = y} (conjugate gradients on A A^T) and, for small user operators, a dense
    SVD.
    """
    name: str = flax.struct.field(pytree_node=False)
    arrays: Dict[str, Any] = flax.struct.field(default_factory=dict)
    static: Tuple[Tuple[str, Any], ...] = flax.struct.field(pytree_node=False, default=())
    spec: Optional[OperatorSpec] = flax.struct.field(pytree_node=False, default=None)

    @property
    def functions(self) -> OperatorSpec:
        return self.spec if self.spec is not None else spec(self.name)

    @property
    def image_shape(self) -> Optional[Tuple[int, int, int]]:
        """The (H, W, C) the operator was built for (None for one made by hand)."""
        return dict(self.static).get("image_shape")

    @property
    def data(self) -> Dict[str, Any]:
        """Everything the operator's functions take besides x or y, by name: static numbers and arrays."""
        return {**dict(self.static), **self.arrays}

    def __call__(self, x):
        """A(x) for one image x of shape (H, W, C)."""
        return self.functions.forward(x, self.data)

    @property
    def linear(self) -> bool:
        return self.functions.linear

    def adjoint(self, y, x_like):
        """A^T y for a linear A, at the image shape of x_like (H, W, C)."""
        if not self.linear:
            raise ValueError(f"operator {self.name!r} is nonlinear: it has no adjoint")
        if self.functions.adjoint is not None:
            return self.functions.adjoint(y, self.data)
        return jax.linear_transpose(self, x_like)(y)[0]

    def project(self, x, y):
        """x with its measured part replaced by y, so that A(project(x, y)) = y: the operator's own
        projection, or for a linear A without one x + A^T (A A^T)^-1 (y - A x) by conjugate gradients."""
        fn = self.functions.project
        if fn is not None:
            return fn(x, y, self.data)
        if not self.linear:
            raise ValueError(f"operator {self.name!r} has no projection; use the solver 'ps'")
        static = dict(self.static)
        return linear_lib.cg_projection(self, lambda r: self.adjoint(r, x), x, y,
                                        int(static.get("cg_iterations", linear_lib.CG_ITERATIONS)),
                                        float(static.get("cg_tol", linear_lib.CG_TOL)))

    def correct(self, x, y):
        """x + y - A(x): the data-consistency step of a nonlinear A that maps images to images (see
        OperatorSpec.correct); a linear A's is its projection."""
        if self.linear:
            return self.project(x, y)
        fn = self.functions.correct
        if fn is None:
            raise ValueError(f"operator {self.name!r} has no data-consistency step; use the solver 'ps'")
        return fn(x, y, self.data)

    def svd(self, image_shape, cutoff: float = 0.0):
        """A = U Sigma V^T for images of shape (H, W, C) (`spectral`), 1-D singular values below `cutoff`
        set to 0: the operator's own; for a user's linear operator without one, a dense SVD from its
        matrix when the image has at most DENSE_SVD_MAX entries; else a ValueError saying what to supply."""
        s = self.functions
        if s.svd is not None:
            return s.svd(self.data, tuple(image_shape), cutoff)
        if not s.linear:
            raise ValueError(f"operator {self.name!r} has no SVD (it is not linear), so spectral solvers such as "
                             f"DDRM cannot take it; use 'ps'")
        if s.make is not None:           # a built-in A whose SVD is not cheap (motion blur's full-rank kernel)
            raise ValueError(f"operator {self.name!r} has no efficient SVD, so spectral solvers such as DDRM "
                             f"cannot take it; use 'ps'")
        d = math.prod(image_shape)
        if d > DENSE_SVD_MAX:
            raise ValueError(f"operator {self.name!r} has no SVD, and images of {d} entries are too many for a "
                             f"dense one (at most {DENSE_SVD_MAX}): give from_callables(..., svd=(U, s, V)), or use "
                             f"a solver that needs no SVD (ps, daps, diffpir, reddiff)")
        return spectral.dense_of(lambda x: self(x), tuple(image_shape), cutoff)

    @property
    def has_svd(self) -> bool:
        s = self.functions
        return s.svd is not None or (s.linear and s.make is None)

    @property
    def has_projection(self) -> bool:
        return self.linear

    @property
    def has_correction(self) -> bool:
        return not self.linear and self.functions.correct is not None

    def display(self, y):
        """An image-shaped picture of a measurement y, for figures: the low-resolution image upsampled,
        the masked or blurred image, the log Fourier amplitude; y itself for a user's operator."""
        fn = self.functions.display
        return y if fn is None else fn(y, self.data)


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
    image_shape = tuple(int(d) for d in image_shape)
    data = s.make(image_shape, **options)
    static = tuple(sorted([(k, v) for k, v in data.items() if isinstance(v, (int, float, str))]
                          + [("image_shape", image_shape)]))
    arrays = {k: v for k, v in data.items() if not isinstance(v, (int, float, str))}
    return Operator(name=name, arrays=arrays, static=static, spec=s)


def from_callables(forward: Callable, image_shape, *, linear: bool = False, adjoint: Optional[Callable] = None,
                   data: Optional[Dict[str, Any]] = None, svd=None, display: Optional[Callable] = None,
                   name: str = "custom", cg_iterations: int = linear_lib.CG_ITERATIONS,
                   cg_tol: float = linear_lib.CG_TOL) -> Operator:
    """Your own A from JAX functions of one image x (H, W, C) in [-1, 1]; it jits, vmaps and shards as the
    built-in operators do, and every solver whose math allows it takes it.

    forward   x -> A(x); or (x, data) -> A(x) when `data` is given: a dict of arrays (a mask, a matrix) that
              are the operator's arguments, so new data reuse the compiled sampler
    linear    declare A linear: its adjoint, its projection onto {A x = y} (conjugate gradients) and, for
              images of at most DENSE_SVD_MAX entries, a dense SVD are derived, so every linear-A solver runs
    adjoint   y -> A^T y (or (y, data) -> ...); default jax.linear_transpose of forward
    svd       A = U Sigma V^T for DDRM and PiGDM on images too large for a dense SVD: (U, s, V) arrays over the
              flattened image (V: (D, D)) and measurement (U: (M, M)); or functions, a dict {"vt", "v", "ut",
              "u", "singulars"} (`spectral.functional`: a fast transform, singular values in the image's shape)
    display   y -> an image-shaped picture of y for figures (default: y)
    cg_iterations, cg_tol  the derived projection's conjugate gradients: at most this many steps, stopping at
              this relative residual (MCG and Score-SDE record how far their projection lands,
              `projection_residual`)

    Checked once, here: forward takes a float32 image of `image_shape` and returns real floats; a linear A
    passes the adjoint's dot test <A x, y> = <x, A^T y> on random x, y. Each failure is a ValueError that
    names it.
    """
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
    keys = tuple(sorted(data)) if data is not None else None
    pick = (lambda d: {k: d[k] for k in keys}) if keys is not None else None
    fwd = (lambda x, d: forward(x, pick(d))) if pick else (lambda x, d: forward(x))
    adj = None
    if adjoint is not None:
        adj = (lambda y, d: adjoint(y, pick(d))) if pick else (lambda y, d: adjoint(y))
    shown = None if display is None else (lambda y, d: display(y))
    svd_fn = None
    if svd is not None:
        if not linear:
            raise ValueError("an SVD is given for an operator not declared linear: set linear=True")
        if isinstance(svd, dict):
            missing = {"vt", "v", "ut", "u", "singulars"} - set(svd)
            if missing:
                raise ValueError(f"an SVD given as functions needs {sorted(missing)} too (vt, v, ut, u, singulars)")
            svd_fn = lambda d, shape, cutoff: spectral.functional(svd["vt"], svd["v"], svd["ut"], svd["u"],
                                                                  svd["singulars"], shape, svd.get("observed"), cutoff)
        else:
            u, sv, v = svd
            svd_fn = lambda d, shape, cutoff: spectral.dense(u, sv, v, shape, y_shape, cutoff)
    functions = OperatorSpec(make=None, forward=fwd, display=shown, linear=bool(linear), svd=svd_fn, adjoint=adj)
    arrays = {k: jnp.asarray(v) for k, v in (data or {}).items()}
    op = Operator(name=name, arrays=arrays, spec=functions,
                  static=(("cg_iterations", int(cg_iterations)), ("cg_tol", float(cg_tol)),
                          ("image_shape", image_shape)))
    y_shape = _check_forward(op, image_shape)
    if svd is not None:
        sp = svd_fn(None, image_shape, 0.0)                          # the factors' shapes, refused at once
        x = jax.random.normal(jax.random.PRNGKey(1), image_shape, jnp.float32)
        if not np.allclose(spectral.apply(sp, x), op(x), atol=1e-3 * (1 + float(jnp.abs(op(x)).max()))):
            raise ValueError(f"operator {name!r}: the SVD given does not reproduce forward (U Sigma V^T x != A x "
                             f"for a random x)")
    if linear:
        _dot_test(op, image_shape, y_shape)
    return op


def _check_forward(op: Operator, image_shape) -> Tuple[int, ...]:
    """The shape of A(x) for a float32 image, or a ValueError saying what the forward function does wrong."""
    try:
        out = jax.eval_shape(op, jax.ShapeDtypeStruct(image_shape, jnp.float32))
    except Exception as e:             # whatever the user's function raises, named in one line
        raise ValueError(f"operator {op.name!r}: forward does not take an image of shape {image_shape} (float32): "
                         f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from None
    if not hasattr(out, "dtype"):
        raise ValueError(f"operator {op.name!r}: forward returns {type(out).__name__}, expected one array")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"operator {op.name!r}: forward returns {out.dtype} values; y must be real floats (for a "
                         f"complex A, stack the real and imaginary parts, e.g. jnp.stack([z.real, z.imag], -1))")
    if out.dtype != jnp.float32:
        raise ValueError(f"operator {op.name!r}: forward changes the image's dtype, float32 -> {out.dtype}; "
                         f"return float32")
    return tuple(out.shape)


def _dot_test(op: Operator, image_shape, y_shape, tol: float = 1e-3) -> None:
    """<A x, y> = <x, A^T y> for random x and y, to `tol` of ||A x|| ||y||; a ValueError when A is not linear
    or the adjoint is not its transpose."""
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, image_shape, jnp.float32)
    y = jax.random.normal(ky, y_shape, jnp.float32)
    try:
        ax, aty = op(x), op.adjoint(y, x)
    except Exception as e:
        raise ValueError(f"operator {op.name!r} is declared linear but its forward is not (jax.linear_transpose: "
                         f"{(str(e).splitlines() or [''])[0][:160]}); leave linear=False for a nonlinear A") from None
    if tuple(aty.shape) != tuple(image_shape):
        raise ValueError(f"operator {op.name!r}: the adjoint returns shape {tuple(aty.shape)}, expected the image's "
                         f"{tuple(image_shape)}")
    lhs, rhs = float(jnp.vdot(ax, y)), float(jnp.vdot(x, aty))
    scale = max(float(jnp.linalg.norm(ax) * jnp.linalg.norm(y)), float(jnp.linalg.norm(x) * jnp.linalg.norm(aty)),
                1e-30)
    if abs(lhs - rhs) > tol * scale or not np.isfinite(lhs - rhs):
        raise ValueError(f"operator {op.name!r}: the adjoint is not the transpose of forward: <A x, y> = {lhs:.6g}, "
                         f"<x, A^T y> = {rhs:.6g} for random x, y (a difference of {abs(lhs - rhs) / scale:.2g} of "
                         f"||A x|| ||y||); fix the adjoint, or leave it out to derive it")
