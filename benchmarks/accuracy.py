"""The paper's loss-function ablation on full Fashion-MNIST with the 28x28 convnet4.

Trains convnet4 (one input channel) with every method below for ``--seeds`` seeds and prints the mean and
standard deviation of the best and the final test accuracy. Evaluation on the full 10k test set runs
``--evals-per-epoch`` times per epoch; "best" is the maximum over those evaluations.

    methods: relu, saturated_relu; sign with ste, sste, soft_hinge, hinge, log_loss; qrelu with sste, soft_hinge

Data: the IDX files of Fashion-MNIST (Debian: ``apt-get install dataset-fashion-mnist`` puts them in
/usr/share/datasets/fashion-mnist), read by torchvision's FashionMNIST from an unpacked copy.

    python benchmarks/accuracy.py --epochs 1 --seeds 3 --threads 1 --methods relu sign/soft_hinge sign/soft_hinge/uint8
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from lightning_ftprop.models import convnet4
from lightning_ftprop.paper import FLOAT_BASELINES, THRESHOLD_METHODS
from lightning_ftprop.rules import available_rules

#: The paper's float baselines, sign with every rule (the ablation), and the paper's qReLU methods.
METHODS = (
    [(m.activation, m.rule) for m in FLOAT_BASELINES]
    + [("sign", rule) for rule in available_rules()]
    + [(m.activation, m.rule) for m in THRESHOLD_METHODS if m.activation == "qrelu"]
)
MEAN, STD = 0.2860, 0.3530


def load_fashion_mnist(idx_dir: Path, cache: Path):
    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        if not (raw / stem).exists():
            with gzip.open(idx_dir / f"{stem}.gz") as src, open(raw / stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
    out = []
    for train in (True, False):
        ds = torchvision.datasets.FashionMNIST(str(cache), train=train, download=False)
        x = (ds.data.float().div(255).sub(MEAN).div(STD)).unsqueeze(1)
        out += [x, ds.targets]
    return out


@torch.no_grad()
def accuracy(model, x, y, batch=1000):
    model.eval()
    correct = sum((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item() for i in range(0, len(x), batch))
    model.train()
    return 100.0 * correct / len(x)


def sd(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def train_one(activation, rule, saved, seed, data, args):
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    unit_kwargs = {} if saved == "exact" else {"keep": saved}
    model = convnet4(activation, rule or "soft_hinge", num_classes=10, in_channels=1, **unit_kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(xtr) // args.batch_size
    eval_at = {round(steps_per_epoch * k / args.evals_per_epoch) for k in range(1, args.evals_per_epoch + 1)}
    accs, start = [], time.perf_counter()
    for _ in range(args.epochs):
        perm = torch.randperm(len(xtr))
        for step in range(1, steps_per_epoch + 1):
            idx = perm[(step - 1) * args.batch_size : step * args.batch_size]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step in eval_at:
                accs.append(accuracy(model, xte, yte))
    return max(accs), accs[-1], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idx-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lightning_ftprop")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--evals-per-epoch", type=int, default=4)
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="e.g. relu sign/soft_hinge qrelu/sste sign/soft_hinge/uint8 (activation/rule/keep form)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 per process runs fastest here)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.idx_dir.is_dir():
        raise SystemExit(
            f"no Fashion-MNIST IDX files in {args.idx_dir}; install dataset-fashion-mnist or pass --idx-dir"
        )

    def parse(method: str):  # activation[/rule[/saved]]
        activation, rule, saved = (method.split("/") + [None, None])[:3]
        return activation, rule, saved or "exact"

    methods = (
        [parse("/".join(filter(None, m))) for m in METHODS] if not args.methods else [parse(m) for m in args.methods]
    )
    data = load_fashion_mnist(args.idx_dir, args.cache)
    print(
        f"# full Fashion-MNIST: {len(data[0])} train / {len(data[2])} test, convnet4 28x28, Adam lr {args.lr}, "
        f"wd {args.weight_decay}, batch {args.batch_size}, {args.epochs} epoch(s), {args.seeds} seeds, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    print(f"{'method':<22} {'best test acc':>16} {'final test acc':>16} {'time/run':>9}", flush=True)
    for activation, rule, saved in methods:
        runs = [train_one(activation, rule, saved, seed, data, args) for seed in range(args.seeds)]
        best, final, secs = zip(*runs)
        name = activation if rule is None else f"{activation}/{rule}" + ("" if saved == "exact" else f"/{saved}")
        print(
            f"{name:<22} {statistics.mean(best):7.2f} ± {sd(best):5.2f}  {statistics.mean(final):7.2f} ± {sd(final):5.2f}"
            f"  {statistics.mean(secs):8.0f}s   runs best={[round(b, 2) for b in best]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
