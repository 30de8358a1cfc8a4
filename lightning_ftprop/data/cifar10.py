"""CIFAR-10 as in the paper: per-channel normalisation, random 32x32 crop (4-pixel padding) + flip.

The files are the "python version" batches (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``;
pickled dicts with ``data``, an ``(N, 3072)`` uint8 array in CHW order, and ``labels``). With
``download=True`` and the batches missing, :meth:`CIFAR10DataModule.prepare_data` fetches and unpacks the archive
(``url``, md5-checked); without a network that is a :class:`~lightning_ftprop.data.base.DownloadError`
saying where to put the files. Reading is done here, so any copy of the batches works.
"""

from __future__ import annotations

import os
import pickle
from typing import List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_ftprop.data.base import ArrayImageDataset, ImageDataModule, download_archive

__all__ = ["CIFAR10DataModule", "read_cifar10", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_URL"]

#: Per-channel mean and standard deviation of the CIFAR-10 training images (pixel/255).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES: Tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES: Tuple[str, ...] = ("test_batch",)
#: The python-version archive of the CIFAR-10 authors, and its md5.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


def _read_batches(folder: str, names: Tuple[str, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
    images: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as handle:
                batch = pickle.load(handle, encoding="latin1")
            data = np.asarray(batch["data"], dtype=np.uint8)
            targets = np.asarray(batch["labels"] if "labels" in batch else batch["fine_labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path!r} is not a CIFAR-10 python batch (a pickled dict with 'data' and 'labels'): {err!r}"
            ) from err
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(targets) != len(data):
            raise ValueError(
                f"{path!r}: expected 'data' of shape (N, 3072) and N labels, got {data.shape} and {len(targets)} labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(targets)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def read_cifar10(data_dir: str, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images (N, 3, 32, 32), labels (N,))`` from ``data_dir/cifar-10-batches-py``.

    Raises:
        FileNotFoundError: naming the folder and the missing batch files.
        ValueError: if a batch file is not a CIFAR-10 python batch.

    Example:
        >>> import numpy as np, os, pickle, tempfile
        >>> folder = os.path.join(tempfile.mkdtemp(), "cifar-10-batches-py")
        >>> os.makedirs(folder)
        >>> batch = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [6, 9]}
        >>> with open(os.path.join(folder, "test_batch"), "wb") as handle:
        ...     pickle.dump(batch, handle)
        >>> images, labels = read_cifar10(os.path.dirname(folder), train=False)
        >>> images.shape, labels.tolist()
        (torch.Size([2, 3, 32, 32]), [6, 9])
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"CIFAR-10 data_dir {data_dir!r} does not exist; pass download=True (--data.download=true) to fetch "
            f"the dataset into it, or point data_dir at the folder that holds {CIFAR10_FOLDER}/"
        )
    folder = os.path.join(data_dir, CIFAR10_FOLDER)
    names = TRAIN_BATCHES if train else TEST_BATCHES
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found in {folder!r}: missing {', '.join(missing)}. Expected the python-version batches "
            f"{', '.join(TRAIN_BATCHES + TEST_BATCHES)}; pass download=True (--data.download=true) to fetch them"
        )
    return _read_batches(folder, names)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 with the paper's preprocessing.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-10-batches-py/``.
        download: fetch and unpack the archive into ``data_dir`` if the batches are missing.
        augment: random crop with 4-pixel padding + horizontal flip for training (the reference
            code's default; its ``--no-aug`` is ``augment=False``).
        url: where ``download`` fetches ``cifar-10-python.tar.gz`` from (a mirror, for example).
        **kwargs: ``batch_size``, ``num_workers``, ``val_split``, ``global_batch_size``,
            ``pin_memory``; see :class:`~lightning_ftprop.data.base.ImageDataModule`.

    Example:
        >>> import tempfile
        >>> dm = CIFAR10DataModule(data_dir=tempfile.mkdtemp(), batch_size=128, val_split=0.1)
        >>> try:  # without the batches (and without download=True) setup says where to put them
        ...     dm.setup("fit")
        ... except FileNotFoundError as err:
        ...     print("cifar-10-batches-py" in str(err))
        True
    """

    num_classes = 10
    in_channels = 3

    def __init__(
        self,
        data_dir: str = "./data/cifar10",
        download: bool = False,
        augment: bool = True,
        url: str = CIFAR10_URL,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.data_dir = os.fspath(data_dir)
        self.download = bool(download)
        self.augment = bool(augment)
        self.url = url

    def prepare_data(self) -> None:
        """With ``download=True`` and a batch file missing, fetch the archive and unpack it into ``data_dir``."""
        folder = os.path.join(self.data_dir, CIFAR10_FOLDER)
        if not self.download or all(os.path.isfile(os.path.join(folder, n)) for n in TRAIN_BATCHES + TEST_BATCHES):
            return
        expected = f"{CIFAR10_FOLDER}/ ({', '.join(TRAIN_BATCHES + TEST_BATCHES)})"
        md5 = CIFAR10_MD5 if self.url == CIFAR10_URL else None
        download_archive(self.url, self.data_dir, md5, "CIFAR-10", expected, extract=True)

    def build_datasets(self) -> Tuple[Dataset, Dataset, Dataset]:
        train_x, train_y = read_cifar10(self.data_dir, train=True)
        test_x, test_y = read_cifar10(self.data_dir, train=False)
        augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]) if self.augment else None
        return (
            ArrayImageDataset(train_x, train_y, CIFAR10_MEAN, CIFAR10_STD, augment),
            ArrayImageDataset(train_x, train_y, CIFAR10_MEAN, CIFAR10_STD),
            ArrayImageDataset(test_x, test_y, CIFAR10_MEAN, CIFAR10_STD),
        )
