"""Plumbing shared by the data modules: batch sizes, loaders and the reference code's validation split.

Validation split (``val_split``), as in the reference code:

* ``val_split=0`` (its ``--no-val --plot-test``): train on the whole training set; the validation
  loader serves the **test** split, so ``val/acc`` is the test accuracy after every epoch, which is
  what the paper reports (best test top-1 over all epochs).
* ``val_split=0.2``: the **last** 20% of the training set, in file order and without shuffling,
  becomes the validation set (evaluated without augmentation); the test loader serves the test split.

Batch size: ``batch_size`` is per device. ``global_batch_size``, when set, replaces it with
``global_batch_size / (world_size * accumulate_grad_batches)``, read from the attached Trainer at
``setup``, so a config can state the paper's batch independently of the number of GPUs and nodes.

Resume in the middle of an epoch: the loaders are torchdata's ``StatefulDataLoader`` (a drop-in
``DataLoader`` with ``state_dict``/``load_state_dict``). Lightning saves their state in every
checkpoint and restores it on resume, so a run resumed from a mid-epoch checkpoint (a preempted
SLURM job, ``ModelCheckpoint(every_n_train_steps=...)``) continues with the next batch of the
interrupted epoch, in the same order, instead of starting the epoch over (see docs/distributed.md).

Subclasses take their own arguments and pass the ones above on as ``**kwargs``
(``super().__init__(**kwargs)``), so every data module accepts them by keyword with the same defaults.

Offline: :func:`download_archive` fetches a dataset archive; when the fetch fails (no network, as on
many cluster compute nodes) it raises :class:`DownloadError` with one line that names the URL, the
folder the files belong in and the command that fetches them on a machine with a network.
"""

from __future__ import annotations

import os
import urllib.error
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset, RandomSampler, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

__all__ = ["ArrayImageDataset", "DownloadError", "ImageDataModule", "download_archive", "last_fraction_split"]


class DownloadError(ConnectionError):
    """A data module needed a download and could not get it; the one-line message says what to do instead.

    Example:
        >>> try:
        ...     raise DownloadError("CIFAR-10 needs cifar-10-batches-py/ in ./data; copy it there")
        ... except DownloadError as err:
        ...     print(err)
        CIFAR-10 needs cifar-10-batches-py/ in ./data; copy it there
    """


def download_archive(url: str, folder: str, md5: Optional[str], dataset: str, expected: str, extract: bool) -> None:
    """Fetch ``url`` into ``folder`` (and unpack it when ``extract``); checks ``md5`` when given.

    Raises:
        DownloadError: the fetch failed (no network, host unreachable, time-out); the message names
            ``url``, where ``expected`` must go, and how to fetch it elsewhere. No urllib traceback
            is attached (``from None``).

    Example:
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> try:  # nothing listens on this port: the error says what to do instead
        ...     download_archive("http://127.0.0.1:9/x.tar.gz", folder, None, "X", "x/", extract=True)
        ... except DownloadError as err:
        ...     print("X" in str(err) and "127.0.0.1:9" in str(err))
        True
    """
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    try:
        if extract:
            download_and_extract_archive(url, folder, md5=md5)
        else:
            download_url(url, folder, md5=md5)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        name = url.rsplit("/", 1)[-1]
        fetch = f"curl -LO {url}" + (f" && tar -xzf {name}" if extract else "")
        raise DownloadError(
            f"{dataset}: could not download {url} ({reason}); put {expected} in {os.path.abspath(folder)} "
            f"(on a machine with network: {fetch}, then copy {'what it unpacks' if extract else name} there) "
            "and run again with download=False (--data.download=false)"
        ) from None


class ArrayImageDataset(Dataset):
    """Images held in memory as a ``uint8`` tensor of shape ``(N, C, H, W)``, with integer labels.

    ``__getitem__`` returns ``((augment(x) / 255 - mean) / std, label)`` as a float tensor and an int.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        labels: integer tensor ``(N,)``.
        mean, std: per-channel normalisation of pixel / 255.
        augment: optional transform applied to the ``uint8`` image before normalisation.

    Example:
        >>> import torch
        >>> images = torch.full((2, 1, 2, 2), 255, dtype=torch.uint8)
        >>> data = ArrayImageDataset(images, torch.tensor([3, 7]), mean=(0.5,), std=(0.5,))
        >>> x, label = data[1]
        >>> x.shape, x.max().item(), label
        (torch.Size([1, 2, 2]), 1.0, 7)
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Optional[Callable[[Tensor], Tensor]] = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values (one per channel), got {list(mean)} and {list(std)}")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        return (image.float().div_(255) - self.mean) / self.std, int(self.labels[index])


def last_fraction_split(n: int, fraction: float) -> Tuple[List[int], List[int]]:
    """Indices ``(first 1-fraction, last fraction)`` of ``range(n)``, in order (no shuffling).

    Example:
        >>> last_fraction_split(10, 0.2)
        ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    """
    n_val = int(n * fraction)
    return list(range(n - n_val)), list(range(n - n_val, n))


class ImageDataModule(LightningDataModule):
    """Base of the data modules: subclasses implement :meth:`build_datasets`.

    Args:
        batch_size: samples per device per step.
        num_workers: DataLoader worker processes.
        val_split: fraction of the training set held out for validation (see the module docstring);
            0 validates on the test split.
        global_batch_size: if set, the batch summed over devices, nodes and accumulation steps;
            ``batch_size`` is then derived from it at ``setup``.
        pin_memory: pin host memory; ``None`` pins when CUDA is available.

    Example:
        >>> import torch
        >>> class Tiny(ImageDataModule):
        ...     def build_datasets(self):
        ...         images, labels = torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10) % 2
        ...         data = ArrayImageDataset(images, labels, mean=(0.0,), std=(1.0,))
        ...         return data, data, data  # train (augmented), train (plain), test
        >>> dm = Tiny(batch_size=4, val_split=0.2)
        >>> dm.setup("fit")
        >>> len(dm.train_dataloader().dataset), len(dm.val_dataloader().dataset)
        (8, 2)
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        val_split: float = 0.0,
        global_batch_size: Optional[int] = None,
        pin_memory: Optional[bool] = None,
    ):
        super().__init__()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if global_batch_size is not None and (not isinstance(global_batch_size, int) or global_batch_size < 1):
            raise ValueError(f"global_batch_size must be a positive integer or None, got {global_batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if not 0.0 <= float(val_split) < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split!r}")
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.num_workers = num_workers
        self.val_split = float(val_split)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    # --- to implement ---------------------------------------------------------------------------

    def build_datasets(self) -> Tuple[Dataset, Dataset, Dataset]:
        """Return ``(train with augmentation, train without augmentation, test)``.

        Both train datasets must list the same samples in the same order. Raise a clear error
        naming the path when the data is missing or laid out wrongly.
        """
        raise NotImplementedError

    def split(self, train_plain: Dataset) -> Tuple[List[int], List[int]]:
        """``(train indices, validation indices)``; the default holds out the last ``val_split``."""
        return last_fraction_split(len(train_plain), self.val_split)

    # --- Lightning hooks ------------------------------------------------------------------------

    def per_device_batch_size(self) -> int:
        """``batch_size``, or ``global_batch_size / (world_size * accumulate_grad_batches)``."""
        if self.global_batch_size is None:
            return self.batch_size
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        share = world * accumulate
        if self.global_batch_size % share:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not divisible by world_size ({world}) x "
                f"accumulate_grad_batches ({accumulate}) = {share}; choose a global batch that is a multiple of {share}"
            )
        return self.global_batch_size // share

    def setup(self, stage: Optional[str] = None) -> None:
        if self.global_batch_size is not None:
            self.batch_size = self.per_device_batch_size()
        if self.test_set is not None:
            return
        train_aug, train_plain, test = self.build_datasets()
        if len(train_aug) != len(train_plain):
            raise RuntimeError("build_datasets returned train datasets of different lengths")
        if self.val_split > 0:
            train_idx, val_idx = self.split(train_plain)
            if not train_idx or not val_idx:
                raise ValueError(
                    f"val_split={self.val_split} leaves an empty train or validation set for {len(train_plain)} training samples"
                )
            self.train_set, self.val_set = Subset(train_aug, train_idx), Subset(train_plain, val_idx)
        else:
            self.train_set, self.val_set = train_aug, test
        self.test_set = test

    def _loader(self, dataset: Optional[Dataset], shuffle: bool) -> StatefulDataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders are requested")
        sampler = None
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if shuffle and world_size > 1:
            # Lightning replaces torch's RandomSampler by a DistributedSampler (seeded, reshuffled by epoch,
            # which the stateful loader can fast-forward). StatefulDataLoader's own shuffling sampler is no
            # torch RandomSampler, so Lightning would wrap it instead, and the wrapped permutation, drawn
            # from the global RNG, would change on resume.
            sampler, shuffle = RandomSampler(dataset), False
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.test_set, shuffle=False)
