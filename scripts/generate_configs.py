#!/usr/bin/env python
"""Write lightning_ftprop/configs/*.yaml: one LightningCLI config per cell of the paper's Table 1.

    python scripts/generate_configs.py

Hyper-parameters are the reference README's (digest section 3.2-3.5). Networks x methods:
convnet4, convnet8 (CIFAR-10) and alexnet_dorefa, resnet18 (ImageNet) x {relu, saturated_relu,
sign/sste, sign/soft_hinge, qrelu/sste, qrelu/soft_hinge}. The files are committed; rerun this script
after changing the table below.
"""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "lightning_ftprop", "configs")
SEED = 468412397

METHODS = [  # (activation, rule or None)
    ("relu", None),
    ("saturated_relu", None),
    ("sign", "sste"),
    ("sign", "soft_hinge"),
    ("qrelu", "sste"),
    ("qrelu", "soft_hinge"),
]

# name -> dataset, optimizer, lr, epochs, milestones, batch, weight decay by activation kind, qrelu steps, title
NETWORKS = {
    "convnet4": dict(
        dataset="cifar10",
        title="4-layer convnet, CIFAR-10",
        optimizer="adam",
        lr=2.5e-4,
        epochs=300,
        milestones=[200, 250],
        batch=64,
        wd={"full": 5e-4, "sign": 5e-4, "qrelu": 5e-4},
        steps=3,
    ),
    "convnet8": dict(
        dataset="cifar10",
        title="8-layer convnet (DoReFa SVHN net), CIFAR-10",
        optimizer="adam",
        lr=1e-3,
        epochs=300,
        milestones=[200, 250],
        batch=64,
        wd={"full": 5e-4, "sign": 5e-4, "qrelu": 5e-4},
        steps=3,
    ),
    "alexnet_dorefa": dict(
        dataset="imagenet",
        title="AlexNet (DoReFa variant), ImageNet",
        optimizer="adam",
        lr=1e-4,
        epochs=80,
        milestones=[56, 64],
        batch=128,
        wd={"full": 5e-4, "sign": 5e-6, "qrelu": 5e-5},
        steps=3,
    ),
    "resnet18": dict(
        dataset="imagenet",
        title="ResNet-18, ImageNet",
        optimizer="sgd",
        lr=0.1,
        epochs=90,
        milestones=[30, 60],
        batch=256,
        wd={"full": 1e-4, "sign": 5e-7, "qrelu": 1e-5},
        steps=5,
    ),
}

METHOD_TITLES = {
    ("relu", None): "ReLU baseline (full precision)",
    ("saturated_relu", None): "saturated ReLU baseline, min(max(z, 0), 1) (full precision)",
    ("sign", "sste"): "sign activation trained with SSTE (saturated straight-through estimator)",
    ("sign", "soft_hinge"): "sign activation trained with FTP-SH (feasible target propagation, soft hinge)",
    ("qrelu", "sste"): "quantized ReLU trained with SSTE",
    ("qrelu", "soft_hinge"): "quantized ReLU trained with FTP-SH (soft hinge)",
}


def yaml_float(x: float) -> str:
    """``repr(x)`` with a dot in the mantissa: YAML 1.1 (PyYAML) reads ``1e-05`` as a string."""
    text = repr(float(x))
    mantissa, _, exponent = text.partition("e")
    return text if not exponent or "." in mantissa else f"{mantissa}.0e{exponent}"


def config_name(arch: str, activation: str, rule) -> str:
    parts = [arch, NETWORKS[arch]["dataset"], activation] + ([rule] if rule else [])
    return "_".join(parts)


def render(arch: str, activation: str, rule) -> str:
    net = NETWORKS[arch]
    kind = activation if activation in ("sign", "qrelu") else "full"
    wd = net["wd"][kind]
    steps = net["steps"] if activation == "qrelu" else 3
    imagenet = net["dataset"] == "imagenet"
    name = config_name(arch, activation, rule)
    qrelu_note = ""
    if activation == "qrelu":
        qrelu_note = (
            f"# qReLU: {steps} thresholds, {steps + 1} levels"
            + (" (the README's --nonlin=staircase for ResNet-18)" if steps == 5 else " (2 bits; --nonlin=staircase3)")
            + "\n"
        )
    lines = [
        f"# Table 1 cell: {net['title']} -- {METHOD_TITLES[(activation, rule)]}.",
        f"# Reference README: {net['optimizer']} lr {net['lr']:g}, weight decay {wd:g}, batch {net['batch']}, "
        f"{net['epochs']} epochs, lr x0.1 at epochs {' and '.join(map(str, net['milestones']))}.",
        qrelu_note.rstrip("\n"),
        f"# Run:  lightning-ftprop fit --config {name}",
        "# Override anything on the command line, e.g. --data.data_dir=/path --trainer.devices=4.",
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
        "model:",
        f"  arch: {arch}",
        f"  activation: {activation}",
        f"  rule: {rule or 'soft_hinge'}" + ("  # unused by the full-precision baseline" if not rule else ""),
        f"  num_classes: {1000 if imagenet else 10}",
        "  in_channels: 3",
        f"  steps: {steps}",
        "  mode: single",
        f"  optimizer: {net['optimizer']}",
        f"  lr: {yaml_float(net['lr'])}",
        f"  weight_decay: {yaml_float(wd)}",
        "  momentum: 0.9",
        f"  milestones: {net['milestones']}",
        "  gamma: 0.1",
        "data:",
    ]
    if imagenet:
        lines += [
            "  class_path: lightning_ftprop.data.ImageNetDataModule",
            "  init_args:",
            "    data_dir: ./data/imagenet  # train/ and val/ folders of images pre-resized to 256x256",
            f"    global_batch_size: {net['batch']}  # the paper's batch; per device = global / (devices x nodes x accumulate)",
            "    num_workers: 8",
            "    image_size: 224",
            "    val_split: 0.0",
        ]
    else:
        lines += [
            "  class_path: lightning_ftprop.data.CIFAR10DataModule",
            "  init_args:",
            "    data_dir: ./data/cifar10",
            "    download: true",
            f"    batch_size: {net['batch']}",
            "    num_workers: 4",
            "    val_split: 0.0  # 0.2: hold out the last 20% of the training set, as the reference code without --no-val",
        ]
    return "\n".join(line for line in lines if line) + "\n"


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    for arch in NETWORKS:
        for activation, rule in METHODS:
            path = os.path.join(OUT, config_name(arch, activation, rule) + ".yaml")
            with open(path, "w") as handle:
                handle.write(render(arch, activation, rule))
    print(f"wrote {len(NETWORKS) * len(METHODS)} configs to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
