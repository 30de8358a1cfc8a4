#!/usr/bin/env python
"""Build lightning_ftprop/data/fashion_mnist_subset.npz, the Fashion-MNIST subset shipped in the package.

    python scripts/build_embedded_dataset.py                      # from /usr/share/datasets/fashion-mnist
    python scripts/build_embedded_dataset.py --source DIR --train-per-class 1200 --test-per-class 200

The source is the full Fashion-MNIST as IDX files (Debian's ``dataset-fashion-mnist`` package, or
torchvision's ``FashionMNIST/raw`` folder). The subset is class-balanced and deterministic: for each
class a seeded generator picks ``--train-per-class`` training and ``--test-per-class`` test images;
then each split is put in a seeded random order, so any contiguous slice (such as the last 20%
used for validation) is close to balanced. Fashion-MNIST is (c) Zalando SE, MIT licence.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lightning_ftprop.data.fashion_mnist import (  # noqa: E402
    DEBIAN_DIR,
    EMBEDDED_PATH,
    FASHION_MNIST_CLASSES,
    read_fashion_mnist,
)


def balanced_subset(images: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator):
    """``per_class`` images of every class, chosen with ``rng``, returned in a random order."""
    picked = []
    for label in range(len(FASHION_MNIST_CLASSES)):
        pool = np.flatnonzero(labels == label)
        if len(pool) < per_class:
            raise ValueError(f"class {label} has only {len(pool)} images, fewer than per_class={per_class}")
        picked.append(np.sort(rng.choice(pool, size=per_class, replace=False)))
    order = rng.permutation(np.concatenate(picked))
    return images[order], labels[order].astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=DEBIAN_DIR, help="folder with the full set's IDX files")
    parser.add_argument("--output", default=EMBEDDED_PATH)
    parser.add_argument("--train-per-class", type=int, default=1200)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20180416)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    train_x, train_y = balanced_subset(*read_fashion_mnist(args.source, train=True), args.train_per_class, rng)
    test_x, test_y = balanced_subset(*read_fashion_mnist(args.source, train=False), args.test_per_class, rng)
    np.savez_compressed(
        args.output,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=np.array(FASHION_MNIST_CLASSES),
    )
    digest = hashlib.sha256(open(args.output, "rb").read()).hexdigest()[:16]
    print(
        f"wrote {args.output}: {len(train_x)} train + {len(test_x)} test images, "
        f"{os.path.getsize(args.output) / 2**20:.2f} MiB, sha256 {digest}..."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
