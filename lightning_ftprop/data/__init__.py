"""LightningDataModules for the paper's experiments, plus an embedded Fashion-MNIST subset.

    from lightning_ftprop.data import CIFAR10DataModule, EmbeddedFashionMNISTDataModule
    dm = EmbeddedFashionMNISTDataModule(batch_size=128)     # offline, ships with the package

Every module takes ``batch_size``, ``num_workers``, ``val_split`` (the reference code's held-out
last 20%; 0 validates on the test split) and ``global_batch_size`` by keyword; see :mod:`.base`. A
download that cannot happen (no network) raises :class:`DownloadError` with one line saying where
to put the files.
"""

from lightning_ftprop.data.base import ArrayImageDataset, DownloadError, ImageDataModule
from lightning_ftprop.data.cifar10 import CIFAR10DataModule, read_cifar10
from lightning_ftprop.data.fashion_mnist import (
    EMBEDDED_PATH,
    FASHION_MNIST_CLASSES,
    EmbeddedFashionMNISTDataModule,
    FashionMNISTDataModule,
    load_embedded_fashion_mnist,
    read_fashion_mnist,
)
from lightning_ftprop.data.idx import read_idx, write_idx
from lightning_ftprop.data.imagenet import ImageNetDataModule, check_image_folder

__all__ = [
    "ArrayImageDataset",
    "CIFAR10DataModule",
    "DownloadError",
    "EMBEDDED_PATH",
    "EmbeddedFashionMNISTDataModule",
    "FASHION_MNIST_CLASSES",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageNetDataModule",
    "check_image_folder",
    "load_embedded_fashion_mnist",
    "read_cifar10",
    "read_fashion_mnist",
    "read_idx",
    "write_idx",
]
