#!/usr/bin/env python
"""Write lightning_ftprop/configs/*.yaml: one LightningCLI config per cell of the paper's Table 1, plus
an offline Fashion-MNIST set.

    python scripts/generate_configs.py

Networks, methods and hyper-parameters come from :mod:`lightning_ftprop.paper` (the reference README's,
digest sections 3.2-3.5): convnet4, convnet8 (CIFAR-10) and alexnet_dorefa, resnet18 (ImageNet) x the paper's
six methods. ``convnet4_fashion_mnist_*`` runs the same
six methods on the Fashion-MNIST subset shipped in the package, offline, with the demo's settings.
Threshold units are spelt as ``model.ftprop``: the keys of ``FTPropCallback``. The files are
committed (tests/test_configs.py checks that they equal this script's output); rerun this script after
changing lightning_ftprop/paper.py.
"""

from __future__ import annotations

import os
from typing import Dict

from lightning_ftprop.demo import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR
from lightning_ftprop.paper import METHODS, RECIPES, Recipe, method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "lightning_ftprop", "configs")
SEED = 468412397


def _paper_network(recipe: Recipe) -> Dict:
    full, sign, qrelu = recipe.weight_decay
    return dict(
        dataset=recipe.dataset,
        title=recipe.title,
        optimizer=recipe.optimizer,
        lr=recipe.lr,
        epochs=recipe.epochs,
        milestones=list(recipe.milestones),
        batch=recipe.batch_size,
        wd={"full": full, "sign": sign, "qrelu": qrelu},
        thresholds=recipe.qrelu_thresholds,
    )


# name -> dataset, optimizer, lr, epochs, milestones, batch, weight decay by activation kind, qrelu thresholds, title:
# the paper's four networks (lightning_ftprop.paper.RECIPES), then the offline set with the demo's settings.
NETWORKS = {name: _paper_network(recipe) for name, recipe in RECIPES.items()}
NETWORKS["convnet4_fashion_mnist"] = dict(
    arch="convnet4",
    dataset="fashion_mnist",
    title="4-layer convnet, the embedded Fashion-MNIST subset (offline; the demo's settings)",
    optimizer="adam",
    lr=DEFAULT_LR,
    epochs=DEFAULT_EPOCHS,
    milestones=[],
    batch=DEFAULT_BATCH_SIZE,
    wd={"full": 0.0, "sign": 0.0, "qrelu": 0.0},
    thresholds=3,
)


def yaml_float(x: float) -> str:
    """``repr(x)`` with a dot in the mantissa: YAML 1.1 (PyYAML) reads ``1e-05`` as a string."""
    text = repr(float(x))
    mantissa, _, exponent = text.partition("e")
    return text if not exponent or "." in mantissa else f"{mantissa}.0e{exponent}"


def config_name(key: str, activation: str, rule) -> str:
    net = NETWORKS[key]
    parts = [net.get("arch", key), net["dataset"], activation] + ([rule] if rule else [])
    return "_".join(parts)


def schedule(net: Dict) -> str:
    if not net["milestones"]:
        return f"{net['epochs']} epochs, constant lr"
    return f"{net['epochs']} epochs, lr x0.1 at epochs {' and '.join(map(str, net['milestones']))}"


def data_lines(dataset: str, batch: int) -> list:
    if dataset == "imagenet":
        return [
            "  class_path: lightning_ftprop.data.ImageNetDataModule",
            "  init_args:",
            "    data_dir: ./data/imagenet  # train/ and val/ folders of images pre-resized to 256x256",
            f"    global_batch_size: {batch}  # the paper's batch; per device = global / (devices x nodes x accumulate)",
            "    num_workers: 8",
            "    image_size: 224",
            "    val_split: 0.0",
        ]
    if dataset == "fashion_mnist":
        return [
            "  class_path: lightning_ftprop.data.EmbeddedFashionMNISTDataModule",
            "  init_args:",
            f"    batch_size: {batch}",
            "    num_workers: 0",
            "    val_split: 0.0  # validate on the test split",
        ]
    return [
        "  class_path: lightning_ftprop.data.CIFAR10DataModule",
        "  init_args:",
        "    data_dir: ./data/cifar10",
        "    download: true",
        f"    batch_size: {batch}",
        "    num_workers: 4",
        "    val_split: 0.0  # 0.2: hold out the last 20% of the training set, as the reference code without --no-val",
    ]


def model_lines(net: Dict, arch: str, activation: str, rule, thresholds: int, wd: float) -> list:
    lines = ["model:", f"  arch: {arch}"]
    if rule is None:
        lines += [f"  activation: {activation}  # full precision: no threshold units"]
    else:
        lines += [
            "  ftprop:  # the threshold units, with the keys of lightning_ftprop.FTPropCallback",
            f"    activation: {activation}",
            f"    rule: {rule}",
        ]
        if activation == "qrelu":
            lines += [f"    unit_kwargs: {{thresholds: {thresholds}, mode: single}}"]
    lines += [
        f"  num_classes: {1000 if net['dataset'] == 'imagenet' else 10}",
        f"  in_channels: {1 if net['dataset'] == 'fashion_mnist' else 3}",
        f"  optimizer: {net['optimizer']}",
        f"  lr: {yaml_float(net['lr'])}",
        f"  weight_decay: {yaml_float(wd)}",
        "  momentum: 0.9",
        f"  milestones: {net['milestones']}",
        "  gamma: 0.1",
    ]
    return lines


def render(key: str, activation: str, rule) -> str:
    net = NETWORKS[key]
    arch = net.get("arch", key)
    kind = activation if activation in ("sign", "qrelu") else "full"
    wd = net["wd"][kind]
    thresholds = net["thresholds"]
    imagenet = net["dataset"] == "imagenet"
    name = config_name(key, activation, rule)
    title = method(activation if rule is None else f"{activation}/{rule}").title
    qrelu_note = ""
    if activation == "qrelu":
        qrelu_note = (
            f"# qReLU: {thresholds} thresholds, {thresholds + 1} levels"
            + (
                " (the README's --nonlin=staircase for ResNet-18)"
                if thresholds == 5
                else " (2 bits; --nonlin=staircase3)"
            )
            + "\n"
        )
    lines = [
        f"# {'Table 1 cell' if 'arch' not in net else 'Offline run'}: {net['title']} -- {title}.",
        f"# {'Reference README' if 'arch' not in net else 'Settings'}: {net['optimizer']} lr {net['lr']:g}, "
        f"weight decay {wd:g}, batch {net['batch']}, {schedule(net)}.",
        qrelu_note.rstrip("\n"),
        f"# Run:  lightning-ftprop fit --config {name}",
        "# Override anything on the command line, e.g. "
        + (
            "--trainer.max_epochs=1 --model.ftprop.rule=sste."
            if "arch" in net
            else "--data.data_dir=/path --trainer.devices=4."
        ),
        f"seed_everything: {SEED}",
        "trainer:",
        "  accelerator: auto",
    ]
    if imagenet:
        lines += [
            "  devices: auto",
            "  num_nodes: 1",
            "  strategy: ddp",
            "  sync_batchnorm: false  # true: BatchNorm statistics over the global batch (SyncBatchNorm)",
        ]
    else:
        lines += ["  devices: 1"]
    lines += [
        f"  max_epochs: {net['epochs']}",
        "  callbacks:",
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
        "      init_args:",
        "        monitor: val/acc  # with val_split 0 this is the test accuracy, as in the paper",
        "        mode: max",
        "        save_last: true",
        "    - class_path: lightning.pytorch.callbacks.LearningRateMonitor",
        "      init_args:",
        "        logging_interval: epoch",
    ]
    if net["dataset"] == "fashion_mnist":
        lines += [
            "  logger:",
            "    class_path: lightning.pytorch.loggers.CSVLogger  # offline: metrics.csv under save_dir",
            "    init_args:",
            "      save_dir: lightning_logs",
            f"      name: {name}",
        ]
    lines += model_lines(net, arch, activation, rule, thresholds, wd)
    lines += ["data:", *data_lines(net["dataset"], net["batch"])]
    return "\n".join(line for line in lines if line) + "\n"


def configs() -> Dict[str, str]:
    """``{file name: YAML text}`` of every config this script writes."""
    return {
        config_name(key, activation, rule) + ".yaml": render(key, activation, rule)
        for key in NETWORKS
        for activation, rule in ((m.activation, m.rule) for m in METHODS)
    }


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    written = configs()
    for name, text in written.items():
        with open(os.path.join(OUT, name), "w") as handle:
            handle.write(text)
    print(f"wrote {len(written)} configs to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
