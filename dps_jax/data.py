"""Image data: Fashion-MNIST from the Debian package's IDX files, or a folder of images (pillow).

Arrays are NHWC float32 in [-1, 1].
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

# Debian's dataset-fashion-mnist package; the environment variable DPS_JAX_FASHION_MNIST points elsewhere.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Ten held-out Fashion-MNIST test images (t10k) that ship inside the package.
SHIPPED_IMAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "test_images")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_dir() -> str:
    """Where Fashion-MNIST is read from when no root is given: $DPS_JAX_FASHION_MNIST, else Debian's folder."""
    return os.environ.get("DPS_JAX_FASHION_MNIST") or FASHION_MNIST_DIR


def _fashion_mnist_file(split: str, root: str, what: str) -> str:
    root = root or fashion_mnist_dir()
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    path = os.path.join(root, f"{prefix}-{what}-idx{3 if what == 'images' else 1}-ubyte.gz")
    if not os.path.exists(path):
        path = path[:-3]
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {root}: install it with `apt-get install dataset-fashion-mnist`")
    return path


def fashion_mnist_labels(split: str = "train", root: str = "") -> np.ndarray:
    """Fashion-MNIST class labels (N,) int32 in [0, 10), in the order of `fashion_mnist`'s images."""
    return read_idx(_fashion_mnist_file(split, root, "labels")).astype(np.int32)


def fashion_mnist(split: str = "train", root: str = "", image_size: int = 32) -> np.ndarray:
    """Fashion-MNIST images (N, S, S, 1) in [-1, 1], zero-padded (black) from 28 to `image_size`."""
    x = read_idx(_fashion_mnist_file(split, root, "images")).astype(np.float32) / 127.5 - 1.0
    pad = image_size - x.shape[1]
    if pad < 0 or pad % 2:
        raise ValueError(f"cannot pad 28 x 28 Fashion-MNIST to image_size {image_size}")
    x = np.pad(x, ((0, 0), (pad // 2, pad // 2), (pad // 2, pad // 2)), constant_values=-1.0)
    return x[..., None]


_WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def load_image(path: str, image_size: int | None = None, channels: int = 3, conversions: list | None = None
               ) -> np.ndarray:
    """One image file as (H, W, C) in [-1, 1]; centre-cropped to a square and resized if image_size.

    8-bit images of any mode (grey, RGB, RGBA, palette, ...) are converted with PIL: alpha is dropped,
    a palette is expanded, grey is repeated for an RGB model and RGB is made grey (ITU-R 601 luma) for a
    one-channel one. 16-bit grey images are scaled by 65535, not clipped to 8 bits. Each such change is
    appended to `conversions` in words, when a list is given (the main job reports them).
    """
    said = conversions if conversions is not None else []
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    if img.mode == "F":
        raise ValueError(f"image {path}: floating-point images are not supported; save it as 8 or 16 bits")
    wide = img.mode in _WIDE_MODES
    if wide:
        a = np.asarray(img, np.float64)
        if a.min() < 0 or a.max() > _WIDE_MODES[img.mode]:
            raise ValueError(f"image {path}: {img.mode} values in [{a.min():.0f}, {a.max():.0f}], "
                             f"expected 16-bit values in [0, 65535]")
        said.append(f"16-bit {img.mode} scaled by 1/65535" + (f", repeated to {channels} channels" if channels > 1 else ""))
        img = Image.fromarray((a / _WIDE_MODES[img.mode]).astype(np.float32), "F")
    else:
        target = "L" if channels == 1 else "RGB"
        if img.mode != target:
            how = {"L": "grey (ITU-R 601 luma)", "RGB": "RGB"}[target]
            said.append(f"{img.mode} -> {how}" + (", alpha dropped" if "A" in img.mode else ""))
        img = img.convert(target)
    if image_size is not None:
        w, h = img.size
        s = min(w, h)
        if (w, h) != (s, s):
            said.append(f"centre-cropped {w} x {h} -> {s} x {s}")
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if s != image_size:
            said.append(f"resized {s} x {s} -> {image_size} x {image_size} (bicubic)")
            img = img.resize((image_size, image_size), Image.BICUBIC)
    if wide:        # in [0, 1]; bicubic overshoot clipped as it is in 8 bits
        x = np.clip(np.asarray(img, np.float32), 0.0, 1.0)[..., None].repeat(channels, axis=-1) * 2.0 - 1.0
        return x
    x = np.asarray(img, np.float32) / 127.5 - 1.0
    return x[..., None] if x.ndim == 2 else x


def list_images(root: str):
    """The image files in a folder, sorted; a clear error if the folder is missing, has none, or one of
    them is not a regular file (a FIFO or a folder named like an image would hang or stop the run)."""
    if not os.path.isdir(root):
        raise ValueError(f"image folder not found: {root}")
    files = sorted(os.path.join(root, f) for f in os.listdir(root) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {root}")
    odd = [f for f in files if not os.path.isfile(f)]
    if odd:
        raise ValueError(f"{odd[0]} is not a regular file" + (f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""))
    return files


def output_names(files) -> list:
    """A distinct folder name per input file: its stem, or its whole name ('a_png', 'a_jpg') where stems
    collide or would clash with a run's own files (config.json, metrics.json, INCOMPLETE)."""
    reserved = {"config.json", "metrics.json", "INCOMPLETE"}
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    names = [os.path.basename(f).replace(".", "_") if stems.count(st) > 1 or st in reserved else st
             for f, st in zip(files, stems)]
    seen, out = set(), []
    for n in names:
        m, k = n, 1
        while m in seen:
            k += 1
            m = f"{n}-{k}"
        seen.add(m)
        out.append(m)
    return out


def image_folder(root: str, image_size: int, channels: int = 3) -> np.ndarray:
    """All images of a folder as (N, S, S, C) in [-1, 1]."""
    return np.stack([load_image(p, image_size, channels) for p in list_images(root)])
