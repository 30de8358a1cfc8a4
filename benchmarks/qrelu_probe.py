"""Why does qReLU trail sign in our Fashion-MNIST runs, when the paper has it ahead on CIFAR-10?

Two measurements on convnet4 (28x28, one channel), with the paper's recipe (Adam, lr 2.5e-4, coupled weight
decay 5e-4, batch 64) unless a variant says otherwise:

1. At initialisation, per hidden layer on one batch of 256 training images: the standard deviation of the
   pre-activation ``z``, the root mean square of the unit's output ``h``, and the fraction of units whose SSTE
   window passes the gradient (``|z| <= 1`` for sign, ``0 <= z <= 1`` for qrelu).
2. Short training runs on the embedded subset (12k train / 2k test), test accuracy after every epoch, for
   variants that each change one thing about the qReLU:

       sign/sste                  the reference
       qrelu/sste                 levels {0, 1/3, 2/3, 1}
       qrelu/sste lr x4           the same at lr 1e-3: is it only slower?
       qrelu/sste x3              outputs 3*q in {0, 1, 2, 3}: the levels' scale (next layer's input magnitude)
       qrelu/sste centred         outputs 2*q - 1 in {-1, -1/3, 1/3, 1}: zero-centred like sign
       qrelu/sste per_threshold   one SSTE per threshold, (1/n) sum_k 1[|z - k/2| <= 1]

    python benchmarks/qrelu_probe.py --threads 1 --epochs 3 --seeds 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ftprop import convert
from lightning_ftprop.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_embedded_fashion_mnist
from lightning_ftprop.models import convnet4
from lightning_ftprop.nn import QReLU, Sign


class Affine(nn.Module):
    """``h = scale * unit(z) + shift``: the unit's levels moved, its thresholds and backward window unchanged."""

    def __init__(self, unit: nn.Module, scale: float, shift: float = 0.0):
        super().__init__()
        self.unit, self.scale, self.shift = unit, scale, shift

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.unit(z) * self.scale + self.shift


VARIANTS: Dict[str, Callable[[], nn.Module]] = {
    "sign/sste": lambda: Sign("sste"),
    "qrelu/sste": lambda: QReLU("sste"),
    "qrelu/sste lr x4": lambda: QReLU("sste"),
    "qrelu/sste x3": lambda: Affine(QReLU("sste"), 3.0),
    "qrelu/sste centred": lambda: Affine(QReLU("sste"), 2.0, -1.0),
    "qrelu/sste per_threshold": lambda: QReLU("sste", mode="per_threshold"),
}


def load() -> List[torch.Tensor]:
    data = load_embedded_fashion_mnist()
    out = []
    for split in ("train", "test"):
        x = torch.from_numpy(data[f"{split}_images"]).float().div(255).unsqueeze(1)
        out += [(x - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0], torch.from_numpy(data[f"{split}_labels"]).long()]
    return out


def build(variant: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = convnet4("relu", num_classes=10, in_channels=1)
    convert(model, VARIANTS[variant])
    return model


@torch.no_grad()
def init_statistics(variant: str, x: torch.Tensor) -> List[str]:
    model = build(variant, 0)
    rows, z_in = [], {}

    def hook(module, inputs, output):
        z = inputs[0]
        unit = module.unit if isinstance(module, Affine) else module
        window = (z.abs() <= 1) if isinstance(unit, Sign) else ((z >= 0) & (z <= 1))
        z_in[len(z_in)] = (z.std().item(), output.square().mean().sqrt().item(), window.float().mean().item())

    for module in model.modules():
        if isinstance(module, (Sign, QReLU, Affine)) and not any(
            module is m.unit for m in model.modules() if isinstance(m, Affine)
        ):
            module.register_forward_hook(hook)
    model(x)
    for layer, (z_std, h_rms, passing) in z_in.items():
        rows.append(f"| {variant} | {layer + 1} | {z_std:.3f} | {h_rms:.3f} | {100 * passing:.1f}% |")
    return rows


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum().item() for i in range(0, len(x), 500))
    model.train()
    return 100.0 * correct / len(x)


def train(variant: str, seed: int, data, epochs: int) -> List[float]:
    xtr, ytr, xte, yte = data
    model = build(variant, seed)
    lr = 1e-3 if "lr x4" in variant else 2.5e-4
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=generator)
        for i in range(0, len(xtr) - 63, 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        accs.append(accuracy(model, xte, yte))
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load()
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), embedded Fashion-MNIST {len(data[0])}/{len(data[2])}"
    )
    print("\n| variant | hidden layer | std(z) | rms(h) | SSTE window passes |\n|---|---|---|---|---|")
    for variant in args.variants:
        print("\n".join(init_statistics(variant, data[0][:256])), flush=True)
    print(f"\n| variant | test acc per epoch (mean over {args.seeds} seeds) | final: mean ± std | s/run |")
    print("|---|---|---|---|")
    for variant in args.variants:
        start = time.process_time()
        runs = [train(variant, seed, data, args.epochs) for seed in range(args.seeds)]
        per_epoch = [statistics.mean(r[e] for r in runs) for e in range(args.epochs)]
        finals = [r[-1] for r in runs]
        std = statistics.stdev(finals) if len(finals) > 1 else float("nan")
        seconds = (time.process_time() - start) / args.seeds
        print(
            f"| {variant} | {', '.join(f'{a:.2f}' for a in per_epoch)} | {statistics.mean(finals):.2f} ± {std:.2f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
