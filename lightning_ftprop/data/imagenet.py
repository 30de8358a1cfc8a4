"""ImageNet (ILSVRC-2012) as an ImageFolder of pre-resized images, with the paper's preprocessing.

Layout (one sub-folder per class, the same classes in both splits)::

    data_dir/train/n01440764/*.JPEG ...
    data_dir/val/n01440764/*.JPEG ...

The paper pre-resized every image offline to 256x256. Training: random 224x224 crop + horizontal
flip; testing: centre 224x224 crop; then ImageNet mean/std normalisation. No scale augmentation
and no colour jitter. ``resize`` resizes on the fly instead (e.g. ``resize=256`` for raw images).
The ``val/`` folder is the test split; ``val_split`` holds out the last fraction of each *class* of
``train/`` (ImageFolder lists files class by class, so the reference code's "last 20% of the
training set" would hold out whole classes).
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from lightning_ftprop.data.base import ImageDataModule, last_fraction_split

__all__ = ["ImageNetDataModule", "check_image_folder", "IMAGENET_MEAN", "IMAGENET_STD"]

#: Per-channel mean and standard deviation of the ImageNet training images (pixel/255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_image_folder(data_dir: str, splits: Tuple[str, ...] = ("train", "val")) -> List[str]:
    """Check the ``data_dir/<split>/<class>/<image>`` layout and return the sorted class names.

    Raises:
        FileNotFoundError: ``data_dir`` or a split folder is missing (the message names the path).
        ValueError: ``data_dir`` is empty, a split has no class folders, or the splits disagree on
            the classes.

    Example:
        >>> import os, tempfile
        >>> root = tempfile.mkdtemp()
        >>> for split in ("train", "val"):
        ...     for name in ("n01443537", "n01440764"):
        ...         os.makedirs(os.path.join(root, split, name))
        >>> check_image_folder(root)
        ['n01440764', 'n01443537']
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"ImageNet data_dir {data_dir!r} does not exist; expected {os.path.join(data_dir, 'train')}/<class>/<images> and val/"
        )
    if not os.listdir(data_dir):
        raise ValueError(
            f"ImageNet data_dir {data_dir!r} is empty; expected sub-folders {', '.join(s + '/' for s in splits)} each with one folder per class"
        )
    classes = {}
    for split in splits:
        folder = os.path.join(data_dir, split)
        if not os.path.isdir(folder):
            present = sorted(os.listdir(data_dir))
            raise FileNotFoundError(
                f"ImageNet split folder {folder!r} not found; data_dir {data_dir!r} holds {present} but must hold "
                f"{', '.join(s + '/' for s in splits)} each with one sub-folder per class"
            )
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        if not names:
            raise ValueError(
                f"{folder!r} has no class folders; expected {folder}/<class>/<image files> (an ImageFolder layout), "
                f"found {sorted(os.listdir(folder))[:5]}"
            )
        classes[split] = names
    first = classes[splits[0]]
    for split in splits[1:]:
        if classes[split] != first:
            only_a = sorted(set(first) - set(classes[split]))[:5]
            only_b = sorted(set(classes[split]) - set(first))[:5]
            raise ValueError(
                f"class folders differ between {os.path.join(data_dir, splits[0])!r} and {os.path.join(data_dir, split)!r} "
                f"(only in {splits[0]}: {only_a}; only in {split}: {only_b}); labels would not match"
            )
    return first


def _image_folder(folder: str, transform) -> ImageFolder:
    try:
        return ImageFolder(folder, transform=transform)
    except FileNotFoundError as err:  # e.g. a class folder without image files
        raise ValueError(f"{folder!r} is not a usable ImageFolder: {err}") from err


class ImageNetDataModule(ImageDataModule):
    """ImageNet from ``data_dir/train`` and ``data_dir/val`` (ImageFolder layout).

    Args:
        data_dir: the folder holding ``train/`` and ``val/``.
        batch_size: per-device batch; see ``global_batch_size`` for the paper's global batch.
        num_workers: DataLoader worker processes per device.
        image_size: crop size (224 in the paper).
        resize: if set, resize the shorter side to this first (for images not resized offline).
        val_split: hold out the last fraction of every training class for validation; 0 validates
            on ``val/``.
        global_batch_size: if set, the batch over all devices, nodes and accumulation steps.
        pin_memory: pin host memory; ``None`` pins when CUDA is available.

    Example:
        >>> import os, tempfile
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> for split in ("train", "val"):
        ...     for name in ("n01440764", "n01443537"):
        ...         os.makedirs(os.path.join(root, split, name))
        ...         Image.new("RGB", (40, 30)).save(os.path.join(root, split, name, "0.jpeg"))
        >>> dm = ImageNetDataModule(root, batch_size=2, num_workers=0, image_size=24, resize=32)
        >>> dm.setup("fit")
        >>> next(iter(dm.train_dataloader()))[0].shape
        torch.Size([2, 3, 24, 24])
    """

    num_classes = 1000
    in_channels = 3

    def __init__(
        self,
        data_dir: str = "./data/imagenet",
        batch_size: int = 256,
        num_workers: int = 8,
        image_size: int = 224,
        resize: Optional[int] = None,
        val_split: float = 0.0,
        global_batch_size: Optional[int] = None,
        pin_memory: Optional[bool] = None,
    ):
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            val_split=val_split,
            global_batch_size=global_batch_size,
            pin_memory=pin_memory,
        )
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if resize is not None and (not isinstance(resize, int) or resize < image_size):
            raise ValueError(f"resize must be None or an integer >= image_size ({image_size}), got {resize!r}")
        self.data_dir = os.fspath(data_dir)
        self.image_size = image_size
        self.resize = resize

    def transforms(self, train: bool) -> v2.Compose:
        """Random crop + flip when ``train``, else centre crop; then a float tensor in [0, 1], normalised."""
        pipeline = [v2.Resize(self.resize)] if self.resize else []
        if train:
            pipeline += [v2.RandomCrop(self.image_size), v2.RandomHorizontalFlip()]
        else:
            pipeline += [v2.CenterCrop(self.image_size)]
        to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        return v2.Compose(pipeline + to_float + [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def build_datasets(self) -> Tuple[Dataset, Dataset, Dataset]:
        check_image_folder(self.data_dir)
        train_dir, val_dir = os.path.join(self.data_dir, "train"), os.path.join(self.data_dir, "val")
        return (
            _image_folder(train_dir, self.transforms(train=True)),
            _image_folder(train_dir, self.transforms(train=False)),
            _image_folder(val_dir, self.transforms(train=False)),
        )

    def split(self, train_plain: Dataset) -> Tuple[List[int], List[int]]:
        """The last ``val_split`` of every class, in file order."""
        by_class: dict = {}
        for index, label in enumerate(train_plain.targets):  # type: ignore[attr-defined]
            by_class.setdefault(label, []).append(index)
        train_idx: List[int] = []
        val_idx: List[int] = []
        for indices in by_class.values():
            keep, hold = last_fraction_split(len(indices), self.val_split)
            train_idx += [indices[i] for i in keep]
            val_idx += [indices[i] for i in hold]
        return train_idx, val_idx
