"""Write small datasets in the real on-disk formats the data modules read (shared by the kit's tests)."""

from __future__ import annotations

import os
import pickle
from typing import Dict, Sequence

import numpy as np
from PIL import Image

from lightning_ftprop.data.idx import write_idx


def write_cifar10(root: str, per_batch: int = 8, test_size: int = 10, seed: int = 0) -> Dict[str, np.ndarray]:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` as pickled dicts."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    arrays = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test_size)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(os.path.join(folder, name), "wb") as handle:
            pickle.dump(
                {
                    "batch_label": name,
                    "data": data,
                    "labels": labels,
                    "filenames": [f"{name}_{i}.png" for i in range(n)],
                },
                handle,
            )
        arrays[name] = data
        arrays[name + "_labels"] = np.array(labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}, handle)
    return arrays


def write_fashion_idx(
    folder: str, n_train: int = 40, n_test: int = 20, seed: int = 0, gz: bool = True
) -> Dict[str, np.ndarray]:
    """The four Fashion-MNIST IDX files (gzip by default), labels cycling through the 10 classes."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    suffix = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
        out[prefix + "_images"], out[prefix + "_labels"] = images, labels
    return out


def write_image_folder(
    root: str,
    classes: Sequence[str] = ("cat", "dog", "fox"),
    per_class: Dict[str, int] = None,
    size=(40, 48),
    seed: int = 0,
) -> None:
    """``root/{train,val}/<class>/<i>.JPEG`` with random RGB JPEGs of ``size`` (height, width)."""
    per_class = per_class or {"train": 5, "val": 2}
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for cls in classes:
            folder = os.path.join(root, split, cls)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{cls}_{i}.JPEG"), format="JPEG")
