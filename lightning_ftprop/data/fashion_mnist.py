"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT licence): the full set from IDX files, and a
class-balanced subset embedded in this package so that examples run offline.

Full set: :class:`FashionMNISTDataModule` reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
from ``data_dir`` or from ``data_dir/FashionMNIST/raw`` (torchvision's layout). Debian's
``dataset-fashion-mnist`` package installs them in ``/usr/share/datasets/fashion-mnist``, the default.
``download=True`` fetches the four ``.gz`` files (md5-checked) into ``data_dir/FashionMNIST/raw``;
without a network that is a :class:`~lightning_ftprop.data.base.DownloadError` saying where to put them.

Embedded subset: :class:`EmbeddedFashionMNISTDataModule` loads ``fashion_mnist_subset.npz``
(built by ``scripts/build_embedded_dataset.py``). Normalisation in both: mean 0.2860, std 0.3530
of pixel / 255, the full training set's statistics. No augmentation.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_ftprop.data.base import ArrayImageDataset, ImageDataModule, download_archive
from lightning_ftprop.data.idx import read_idx

__all__ = [
    "FashionMNISTDataModule",
    "EmbeddedFashionMNISTDataModule",
    "read_fashion_mnist",
    "load_embedded_fashion_mnist",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "EMBEDDED_PATH",
    "FASHION_MNIST_URL",
]

#: Mean and standard deviation of the Fashion-MNIST training images (pixel/255).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
#: The ten class names, in label order.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
#: The class-balanced subset shipped with the package (12,000 training and 2,000 test images).
EMBEDDED_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_subset.npz")
_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: Where ``download=True`` fetches ``<name>.gz`` from (the authors' mirror), and the files' md5s.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}


def _find(folder: str, name: str) -> Optional[str]:
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_fashion_mnist(data_dir: str, train: bool) -> Tuple[np.ndarray, np.ndarray]:
    """``(uint8 images (N, 28, 28), uint8 labels (N,))`` from the IDX files under ``data_dir``.

    Looks in ``data_dir`` and then in ``data_dir/FashionMNIST/raw``.

    Raises:
        FileNotFoundError: naming ``data_dir`` and the expected file names.
        ValueError: if a file is not a valid IDX file or images and labels disagree.

    Example:
        >>> import numpy as np, os, tempfile
        >>> from lightning_ftprop.data.idx import write_idx
        >>> folder = tempfile.mkdtemp()
        >>> write_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz"), np.zeros((3, 28, 28), dtype=np.uint8))
        >>> write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"), np.array([0, 9, 5], dtype=np.uint8))
        >>> images, labels = read_fashion_mnist(folder, train=False)
        >>> images.shape, labels.tolist()
        ((3, 28, 28), [0, 9, 5])
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"Fashion-MNIST data_dir {data_dir!r} does not exist; install Debian's dataset-fashion-mnist "
            f"(files in {DEBIAN_DIR}), point data_dir at a folder with the IDX files, or pass download=True"
        )
    image_name, label_name = _FILES[train]
    for folder in (data_dir, os.path.join(data_dir, "FashionMNIST", "raw")):
        image_path, label_path = _find(folder, image_name), _find(folder, label_name)
        if image_path and label_path:
            break
    else:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {data_dir!r} (nor in its FashionMNIST/raw/): expected "
            f"{image_name}[.gz] and {label_name}[.gz]; pass download=True to fetch them"
        )
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{image_path!r} and {label_path!r} do not form an image set: images {images.dtype} {images.shape}, "
            f"labels {labels.dtype} {labels.shape}; expected uint8 (N, H, W) images and N labels"
        )
    return images, labels


def load_embedded_fashion_mnist(path: str = EMBEDDED_PATH) -> Dict[str, np.ndarray]:
    """The embedded subset: a dict with uint8 ``train_images (N, 28, 28)``, ``train_labels``,
    ``test_images`` and ``test_labels``.

    Example:
        >>> data = load_embedded_fashion_mnist()
        >>> data["train_images"].shape, data["test_images"].shape
        ((12000, 28, 28), (2000, 28, 28))
        >>> FASHION_MNIST_CLASSES[data["train_labels"][0]] in FASHION_MNIST_CLASSES
        True
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"embedded Fashion-MNIST subset not found at {path!r}; rebuild it with scripts/build_embedded_dataset.py"
        )
    with np.load(path) as archive:
        data = {key: archive[key] for key in archive.files}
    expected = {"train_images", "train_labels", "test_images", "test_labels"}
    if not expected <= set(data):
        raise ValueError(f"{path!r} lacks arrays {sorted(expected - set(data))}; it holds {sorted(data)}")
    return data


def _dataset(images: np.ndarray, labels: np.ndarray) -> ArrayImageDataset:
    return ArrayImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
    )


class FashionMNISTDataModule(ImageDataModule):
    """The full Fashion-MNIST (60k train, 10k test, 28x28 grey) from local IDX files.

    Args:
        data_dir: folder with the IDX files (or with ``FashionMNIST/raw/`` holding them).
        download: fetch the files into ``data_dir/FashionMNIST/raw`` if they are missing.
        url: the folder URL ``download`` fetches ``<file>.gz`` from (a mirror, for example).
        **kwargs: ``batch_size``, ``num_workers``, ``val_split``, ``global_batch_size``,
            ``pin_memory``; see :class:`~lightning_ftprop.data.base.ImageDataModule`.

    Example:
        >>> import os, tempfile
        >>> dm = FashionMNISTDataModule(data_dir=tempfile.mkdtemp(), batch_size=128)
        >>> try:  # without the IDX files (and without download=True) setup says what is missing
        ...     dm.setup("fit")
        ... except FileNotFoundError as err:
        ...     print("train-images-idx3-ubyte" in str(err))
        True
    """

    num_classes = 10
    in_channels = 1

    def __init__(self, data_dir: str = DEBIAN_DIR, download: bool = False, url: str = FASHION_MNIST_URL, **kwargs):
        super().__init__(**kwargs)
        self.data_dir = os.fspath(data_dir)
        self.download = bool(download)
        self.url = url

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            read_fashion_mnist(self.data_dir, train=True)
            read_fashion_mnist(self.data_dir, train=False)
        except FileNotFoundError:
            raw = os.path.join(self.data_dir, "FashionMNIST", "raw")
            for name in (*_FILES[True], *_FILES[False]):
                md5 = _MD5[name] if self.url == FASHION_MNIST_URL else None
                expected = ", ".join(f"{n}.gz" for n in _MD5)
                url = self.url.rstrip("/") + f"/{name}.gz"
                download_archive(url, raw, md5, "Fashion-MNIST", expected, extract=False)

    def build_datasets(self) -> Tuple[Dataset, Dataset, Dataset]:
        train = _dataset(*read_fashion_mnist(self.data_dir, train=True))
        test = _dataset(*read_fashion_mnist(self.data_dir, train=False))
        return train, train, test


class EmbeddedFashionMNISTDataModule(ImageDataModule):
    """The Fashion-MNIST subset shipped in the package (class-balanced; see the README for sizes).

    Args:
        path: the ``.npz`` file; the packaged subset by default.
        **kwargs: ``batch_size``, ``num_workers``, ``val_split``, ``global_batch_size``,
            ``pin_memory``; see :class:`~lightning_ftprop.data.base.ImageDataModule`.

    Example:
        >>> dm = EmbeddedFashionMNISTDataModule(batch_size=64)
        >>> dm.setup("fit")
        >>> images, labels = next(iter(dm.train_dataloader()))
        >>> images.shape, labels.shape
        (torch.Size([64, 1, 28, 28]), torch.Size([64]))
    """

    num_classes = 10
    in_channels = 1

    def __init__(self, path: str = EMBEDDED_PATH, **kwargs):
        super().__init__(**kwargs)
        self.path = os.fspath(path)

    def build_datasets(self) -> Tuple[Dataset, Dataset, Dataset]:
        data = load_embedded_fashion_mnist(self.path)
        train = _dataset(data["train_images"], data["train_labels"])
        return train, train, _dataset(data["test_images"], data["test_labels"])
