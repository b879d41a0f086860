"""Cut the small Fashion-MNIST sample the tests read (tests/fixtures/fashion_mnist/) from the full dataset.

    apt-get install dataset-fashion-mnist
    python -m tools.make_fmnist_sample --root /usr/share/datasets/fashion-mnist --out tests/fixtures/fashion_mnist

Writes the first `--test` test (t10k) and the first `--train` training images and labels as gzipped IDX files
named as the Debian package names them, so `dps_jax.data.fashion_mnist(split, root=OUT)` reads them as it
reads the full set. The sample's images are the full set's first ones, bit for bit.
"""

import argparse
import gzip
import os
import struct

import numpy as np

from dps_jax import data


def write_idx(path: str, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:          # mtime 0: the same bytes on every run
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=data.FASHION_MNIST_DIR)
    ap.add_argument("--out", default="tests/fixtures/fashion_mnist")
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--train", type=int, default=500)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for split, prefix, n in (("test", "t10k", args.test), ("train", "train", args.train)):
        images = data.read_idx(data._fashion_mnist_file(split, args.root, "images"))[:n]
        labels = data.read_idx(data._fashion_mnist_file(split, args.root, "labels"))[:n]
        write_idx(os.path.join(args.out, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(args.out, f"{prefix}-labels-idx1-ubyte.gz"), labels)
        print(f"{split}: {n} images")


if __name__ == "__main__":
    main()
