"""Data modules on data written in the real on-disk formats; the embedded subset; bad input."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from disk_formats import write_cifar10, write_fashion_idx, write_image_folder

from lightning_ftprop.data import (
    EMBEDDED_PATH,
    CIFAR10DataModule,
    DownloadError,
    EmbeddedFashionMNISTDataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
    load_embedded_fashion_mnist,
    read_fashion_mnist,
    read_idx,
    write_idx,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- IDX ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_keeps_values_shape_and_dtype(tmp_path, suffix):
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 7
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.int32 and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_reader_names_the_file_on_a_bad_magic_number(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an IDX file") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_idx_reader_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"declares shape \(4, 28, 28\)"):
        read_idx(path)


# --- CIFAR-10 -------------------------------------------------------------------------------------


def test_cifar10_reads_python_batches_in_order_and_normalises(tmp_path):
    arrays = write_cifar10(str(tmp_path), per_batch=8, test_size=10)
    dm = CIFAR10DataModule(str(tmp_path), augment=False, batch_size=16, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 40 and len(dm.test_set) == 10
    assert dm.val_set is dm.test_set  # val_split=0: validation runs on the test split
    x, y = dm.train_set[9]  # second image of data_batch_2
    raw = torch.from_numpy(arrays["data_batch_2"][1].reshape(3, 32, 32)).float() / 255
    expected = (raw - torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)) / torch.tensor(
        [0.2470, 0.2435, 0.2616]
    ).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)
    assert y == arrays["data_batch_2_labels"][1]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.long


def test_cifar10_augmentation_crops_and_flips_but_keeps_shape(tmp_path):
    write_cifar10(str(tmp_path), per_batch=4, test_size=4)
    dm = CIFAR10DataModule(str(tmp_path), augment=True, num_workers=0)
    dm.setup("fit")
    torch.manual_seed(0)
    views = torch.stack([dm.train_set[0][0] for _ in range(8)])
    assert views.shape == (8, 3, 32, 32)
    assert not all(torch.equal(views[0], v) for v in views[1:])  # random crops/flips differ
    assert torch.equal(dm.test_set[0][0], dm.test_set[0][0])  # the test split is not augmented


def test_cifar10_val_split_holds_out_the_last_20_percent_without_shuffling(tmp_path):
    write_cifar10(str(tmp_path), per_batch=10, test_size=4)
    dm = CIFAR10DataModule(str(tmp_path), val_split=0.2, num_workers=0)
    dm.setup("fit")
    assert list(dm.train_set.indices) == list(range(40))
    assert list(dm.val_set.indices) == list(range(40, 50))
    assert dm.val_set is not dm.test_set and len(dm.test_set) == 4
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])  # validation is evaluated without augmentation


def test_cifar10_missing_data_dir_error_names_the_path_and_download_flag(tmp_path):
    missing = tmp_path / "nowhere"
    dm = CIFAR10DataModule(str(missing))
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        dm.setup("fit")
    assert str(missing) in str(err.value)


def test_cifar10_error_lists_missing_batches(tmp_path):
    write_cifar10(str(tmp_path), per_batch=2, test_size=2)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        CIFAR10DataModule(str(tmp_path)).setup("fit")


def test_cifar10_rejects_a_batch_with_the_wrong_layout(tmp_path):
    write_cifar10(str(tmp_path), per_batch=2, test_size=2)
    import pickle

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": np.zeros((2, 784), np.uint8), "labels": [0, 1]}, handle)
    with pytest.raises(ValueError, match=r"test_batch.*\(N, 3072\)"):
        CIFAR10DataModule(str(tmp_path)).setup("fit")


# --- Fashion-MNIST --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat_gz", "torchvision_raw"])
def test_fashion_mnist_reads_idx_files_in_both_layouts(tmp_path, layout):
    folder = tmp_path if layout == "flat_gz" else tmp_path / "FashionMNIST" / "raw"
    arrays = write_fashion_idx(str(folder), n_train=30, n_test=20, gz=layout == "flat_gz")
    dm = FashionMNISTDataModule(str(tmp_path), batch_size=8)
    dm.setup("fit")
    assert len(dm.train_set) == 30 and len(dm.test_set) == 20
    x, y = dm.test_set[3]
    expected = (torch.from_numpy(arrays["t10k_images"][3]).float() / 255 - 0.2860) / 0.3530
    assert x.shape == (1, 28, 28) and torch.allclose(x[0], expected, atol=1e-6)
    assert y == 3


def test_fashion_mnist_missing_files_error_names_dir_and_expected_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as err:
        FashionMNISTDataModule(str(tmp_path / "empty")).setup("fit")
    assert str(tmp_path / "empty") in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_fashion_mnist(str(tmp_path / "absent"), train=True)


def test_fashion_mnist_rejects_images_and_labels_of_different_lengths(tmp_path):
    write_fashion_idx(str(tmp_path), n_train=10, n_test=10)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match="do not form an image set"):
        FashionMNISTDataModule(str(tmp_path)).setup("fit")


# --- embedded subset ------------------------------------------------------------------------------


def test_embedded_subset_is_small_balanced_uint8_fashion_mnist():
    assert os.path.getsize(EMBEDDED_PATH) <= 8 * 10**6
    data = load_embedded_fashion_mnist()
    assert data["train_images"].shape == (12000, 28, 28) and data["test_images"].shape == (2000, 28, 28)
    assert data["train_images"].dtype == np.uint8
    assert np.bincount(data["train_labels"]).tolist() == [1200] * 10
    assert np.bincount(data["test_labels"]).tolist() == [200] * 10
    # The last 20% (the validation split) is close to balanced because the order is shuffled.
    assert np.bincount(data["train_labels"][-2400:], minlength=10).min() > 180
    assert abs(data["train_images"].mean() / 255 - 0.2860) < 0.01


def test_embedded_data_module_batches_and_split():
    dm = EmbeddedFashionMNISTDataModule(batch_size=64, val_split=0.2)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9600, 2400, 2000)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 28, 28) and labels.max() < 10


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_embedded_subset_images_come_from_the_full_test_set():
    full, _ = read_fashion_mnist("/usr/share/datasets/fashion-mnist", train=False)
    known = {image.tobytes() for image in full}
    subset = load_embedded_fashion_mnist()["test_images"]
    assert all(image.tobytes() in known for image in subset)


def test_build_script_is_deterministic_and_class_balanced(tmp_path):
    write_fashion_idx(str(tmp_path / "full"), n_train=60, n_test=30)
    spec = importlib.util.spec_from_file_location(
        "build_embedded_dataset", os.path.join(ROOT, "scripts", "build_embedded_dataset.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    outputs = []
    for name in ("a.npz", "b.npz"):
        out = tmp_path / name
        script.main(
            [
                "--source",
                str(tmp_path / "full"),
                "--output",
                str(out),
                "--train-per-class",
                "4",
                "--test-per-class",
                "2",
            ]
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    data = load_embedded_fashion_mnist(str(tmp_path / "a.npz"))
    assert np.bincount(data["train_labels"]).tolist() == [4] * 10
    assert np.bincount(data["test_labels"]).tolist() == [2] * 10


# --- ImageNet (ImageFolder) -----------------------------------------------------------------------


def test_imagenet_random_crop_for_training_and_centre_crop_for_testing(tmp_path):
    write_image_folder(str(tmp_path), per_class={"train": 3, "val": 2}, size=(40, 48))
    dm = ImageNetDataModule(str(tmp_path), batch_size=4, num_workers=0, image_size=32)
    dm.setup("fit")
    assert dm.train_set.classes == ["cat", "dog", "fox"] and len(dm.train_set) == 9 and len(dm.test_set) == 6
    torch.manual_seed(0)
    crops = torch.stack([dm.train_set[0][0] for _ in range(6)])
    assert crops.shape == (6, 3, 32, 32) and not all(torch.equal(crops[0], c) for c in crops[1:])
    assert torch.equal(dm.test_set[0][0], dm.test_set[0][0])
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and set(labels.tolist()) <= {0, 1, 2}


def test_imagenet_val_split_holds_out_the_last_files_of_every_class(tmp_path):
    write_image_folder(str(tmp_path), per_class={"train": 5, "val": 1}, size=(36, 36))
    dm = ImageNetDataModule(str(tmp_path), num_workers=0, image_size=32, val_split=0.2)
    dm.setup("fit")
    val_files = [dm.val_set.dataset.samples[i][0] for i in dm.val_set.indices]
    assert sorted(os.path.basename(f) for f in val_files) == ["cat_4.JPEG", "dog_4.JPEG", "fox_4.JPEG"]
    assert len(dm.train_set) == 12


def test_imagenet_missing_data_dir_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        ImageNetDataModule(str(tmp_path / "imagenet")).setup("fit")
    assert str(tmp_path / "imagenet") in str(err.value)


def test_imagenet_empty_data_dir_is_reported(tmp_path):
    with pytest.raises(ValueError, match="is empty") as err:
        ImageNetDataModule(str(tmp_path)).setup("fit")
    assert str(tmp_path) in str(err.value)


def test_imagenet_wrong_layout_missing_val_folder(tmp_path):
    write_image_folder(str(tmp_path), per_class={"train": 1}, size=(8, 8))
    with pytest.raises(FileNotFoundError, match="split folder") as err:
        ImageNetDataModule(str(tmp_path)).setup("fit")
    assert str(tmp_path / "val") in str(err.value)


def test_imagenet_wrong_layout_images_without_class_folders(tmp_path):
    write_image_folder(str(tmp_path / "flat"), per_class={"train": 1, "val": 1}, size=(8, 8))
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    for split in ("train", "val"):
        os.rename(tmp_path / "flat" / split / "cat" / "cat_0.JPEG", tmp_path / split / "cat_0.JPEG")
    with pytest.raises(ValueError, match="has no class folders") as err:
        ImageNetDataModule(str(tmp_path)).setup("fit")
    assert str(tmp_path / "train") in str(err.value)


def test_imagenet_rejects_different_classes_in_train_and_val(tmp_path):
    write_image_folder(str(tmp_path), classes=("cat", "dog"), per_class={"train": 1}, size=(8, 8))
    write_image_folder(str(tmp_path), classes=("cat", "emu"), per_class={"val": 1}, size=(8, 8))
    with pytest.raises(ValueError, match=r"class folders differ.*only in train: \['dog'\].*only in val: \['emu'\]"):
        ImageNetDataModule(str(tmp_path)).setup("fit")


def test_imagenet_class_folder_without_images_is_reported(tmp_path):
    write_image_folder(str(tmp_path), per_class={"train": 1, "val": 1}, size=(8, 8))
    (tmp_path / "train" / "dog" / "dog_0.JPEG").rename(tmp_path / "train" / "dog" / "notes.txt")
    with pytest.raises(ValueError, match="not a usable ImageFolder"):
        ImageNetDataModule(str(tmp_path)).setup("fit")


# --- batch sizes and arguments --------------------------------------------------------------------


def test_global_batch_size_is_divided_by_devices_and_accumulation(tmp_path):
    import lightning.pytorch as pl

    write_image_folder(str(tmp_path), per_class={"train": 2, "val": 1}, size=(8, 8))
    dm = ImageNetDataModule(str(tmp_path), global_batch_size=12, image_size=8, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, accumulate_grad_batches=3, logger=False)
    dm.trainer = trainer
    dm.setup("fit")
    assert dm.batch_size == 4
    dm.global_batch_size = 10
    with pytest.raises(ValueError, match="global_batch_size=10 is not divisible"):
        dm.setup("fit")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_split": 1.0}, "val_split"),
        ({"num_workers": -1}, "num_workers"),
        ({"global_batch_size": 0}, "global_batch_size"),
    ],
)
def test_data_module_arguments_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CIFAR10DataModule(**kwargs)


# --- offline --------------------------------------------------------------------------------------


def _closed_port() -> int:
    """A local TCP port with nothing listening: connecting to it is refused at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cifar10_download_without_network_is_one_line_naming_url_folder_and_fix(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz"
    dm = CIFAR10DataModule(str(tmp_path / "cifar"), download=True, url=url)
    with pytest.raises(DownloadError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "\n" not in message and message.startswith("CIFAR-10: could not download " + url)
    assert str(tmp_path / "cifar") in message and "data_batch_1" in message
    assert f"curl -LO {url}" in message and "download=False" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no urllib traceback attached


def test_fashion_mnist_download_without_network_names_the_files(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/"
    with pytest.raises(DownloadError, match=r"^Fashion-MNIST: could not download .*train-images-idx3-ubyte\.gz"):
        FashionMNISTDataModule(str(tmp_path), download=True, url=url).prepare_data()


def test_cifar10_download_is_skipped_when_the_batches_are_there(tmp_path):
    write_cifar10(str(tmp_path), per_batch=2, test_size=2)
    url = f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz"
    CIFAR10DataModule(str(tmp_path), download=True, url=url).prepare_data()  # no fetch, so no error
