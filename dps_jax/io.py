"""Files out: atomic writes (the one writer every file of the project goes through when a half-written one
would be read as whole), PNG files and grids (pillow). Images are (H, W, C) in [-1, 1], C = 1 or 3."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_writer(path: str):
    """A binary file object whose contents appear at `path` only when the block ends without an error (a
    temporary file in the same folder, then a rename); on an error the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)          # the mode a plain open() gives, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` so that no reader ever sees half of it (`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


def to_uint8(img) -> np.ndarray:
    img = np.asarray(img, np.float32)
    img = np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.round((np.clip(img, -1, 1) + 1) * 127.5).astype(np.uint8)


def save_png(path: str, img, scale: int = 1) -> None:
    """Write one (H, W, C) image in [-1, 1]; `scale` > 1 enlarges it (nearest) for viewing small images."""
    from PIL import Image

    a = to_uint8(img)
    a = a[..., 0] if a.shape[-1] == 1 else a
    im = Image.fromarray(a)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path)


def grid(images, columns: int | None = None, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """(N, H, W, C) -> one (rows * (H + pad) - pad, columns * (W + pad) - pad, C) image."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, c), fill, np.float32)
    for i, img in enumerate(images):
        r, q = divmod(i, columns)
        out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = img
    return out


def normalise(img) -> np.ndarray:
    """Rescale an array linearly to [-1, 1] (for std maps and other non-image quantities)."""
    img = np.asarray(img, np.float32)
    lo, hi = float(img.min()), float(img.max())
    return np.zeros_like(img) - 1.0 if hi <= lo else 2.0 * (img - lo) / (hi - lo) - 1.0
