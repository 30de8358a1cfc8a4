"""``lightning-ftprop demo``: FTPROP against its baselines on the embedded Fashion-MNIST, offline.

Trains the paper's 4-layer convnet (28x28 grey input) five times -- ReLU, sign with SSTE, sign with
FTP-SH (``soft_hinge``), 2-bit qReLU with SSTE and qReLU with FTP-SH -- and evaluates the test split
after every epoch. It prints a table (method, best and final test accuracy, time) and writes under
``--output-dir`` (default ``./ftprop-demo``):

* ``results.csv``: one row per method;
* ``test_accuracy.csv``: test accuracy per method and epoch;
* ``test_accuracy.png``: the same as a plot;
* ``logs/``: Lightning's CSV logs (and ``wandb/`` with ``--wandb``).

``--fast`` (1 epoch, 5 batches of each split) checks the pipeline in seconds.
"""

from __future__ import annotations

import argparse
import csv
import netrc
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from lightning_ftprop.paper import FLOAT_BASELINES, THRESHOLD_METHODS

__all__ = ["METHODS", "DemoResult", "run_demo", "format_table", "write_results", "plot_accuracy", "main"]

#: label -> (activation, rule): the paper's ReLU baseline and its four threshold methods
#: (:mod:`lightning_ftprop.paper`); the baseline has no rule.
METHODS: Dict[str, Tuple[str, Optional[str]]] = {
    m.name: (m.activation, m.rule) for m in (FLOAT_BASELINES[0], *THRESHOLD_METHODS)
}

DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 1e-3


@dataclass
class DemoResult:
    """One trained method: test accuracy after each epoch and the wall time of its training.

    Example:
        >>> result = DemoResult("sign/sste", test_acc=[0.80, 0.86, 0.85], seconds=12.0)
        >>> result.best, result.best_epoch, result.final
        (0.86, 2, 0.85)
    """

    method: str
    test_acc: List[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best(self) -> float:
        return max(self.test_acc) if self.test_acc else float("nan")

    @property
    def final(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")

    @property
    def best_epoch(self) -> int:
        return self.test_acc.index(self.best) + 1 if self.test_acc else 0


def _wandb_has_credentials() -> bool:
    """An API key in ``WANDB_API_KEY`` or in ``~/.netrc`` (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def _wandb_offline() -> bool:
    """Offline unless W&B credentials exist; an explicit ``WANDB_MODE`` always wins."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("online", "offline", "dryrun", "disabled"):
        return mode in ("offline", "dryrun")
    return not _wandb_has_credentials()


def _wandb_logger(output_dir: str, method: str, config: dict):
    from lightning.pytorch.loggers import WandbLogger

    offline = _wandb_offline()
    return WandbLogger(
        project="lightning-ftprop-demo",
        name=method.replace("/", "-"),
        save_dir=output_dir,
        offline=offline,
        config=config,
        reinit="finish_previous",
    )


def _train_one(method: str, args: argparse.Namespace) -> DemoResult:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from lightning_ftprop.data import EmbeddedFashionMNISTDataModule
    from lightning_ftprop.module import ImageClassifier
    from lightning_ftprop.progress import progress_bar_for_output

    class EpochTestAccuracy(pl.Callback):
        def __init__(self, result: DemoResult):
            self.result = result

        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if not trainer.sanity_checking:
                self.result.test_acc.append(float(trainer.callback_metrics["val/acc"]))

    activation, rule = METHODS[method]
    pl.seed_everything(args.seed, verbose=False)
    result = DemoResult(method)
    loggers: list = [CSVLogger(args.output_dir, name="logs", version=method.replace("/", "-"))]
    if args.wandb:
        config = {
            "method": method,
            "activation": activation,
            "rule": rule,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
        }
        loggers.append(_wandb_logger(args.output_dir, method, config))
    model = ImageClassifier(
        "convnet4",
        activation=activation,
        rule=rule,
        num_classes=10,
        in_channels=1,
        optimizer="adam",
        lr=args.lr,
        weight_decay=args.weight_decay,
    )
    data = EmbeddedFashionMNISTDataModule(batch_size=args.batch_size)  # val_split=0: validate on the test split
    limit = args.limit_batches
    bar = None if args.no_progress else progress_bar_for_output()  # off a terminal: one line per epoch
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=[EpochTestAccuracy(result)] + ([bar] if bar else []),
        enable_checkpointing=False,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=limit,
        limit_val_batches=limit,
        log_every_n_steps=10,
    )
    print(f"\n=== {method}: convnet4, activation={activation}" + (f", rule={rule}" if activation != "relu" else ""))
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    result.seconds = time.perf_counter() - start
    if args.wandb:
        import wandb

        wandb.finish()
    return result


def format_table(results: Sequence[DemoResult]) -> str:
    """The results as a fixed-width text table.

    Example:
        >>> print(format_table([DemoResult("sign/sste", [0.5, 0.75, 0.7], 12.0)]))
        method             best test acc (epoch) final test acc  time (s)
        -----------------------------------------------------------------
        sign/sste                 75.00%       2         70.00%      12.0
    """
    header = f"{'method':<18} {'best test acc':>13} {'(epoch)':>7} {'final test acc':>14} {'time (s)':>9}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.method:<18} {100 * r.best:>12.2f}% {r.best_epoch:>7d} {100 * r.final:>13.2f}% {r.seconds:>9.1f}"
        )
    return "\n".join(lines)


def write_results(results: Sequence[DemoResult], output_dir: str) -> Tuple[str, str]:
    """Write ``results.csv`` and ``test_accuracy.csv``; return their paths.

    Example:
        >>> import csv, os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> table, curves = write_results([DemoResult("relu", [0.8, 0.9], 3.0)], folder)
        >>> with open(table) as handle:
        ...     print(handle.read().strip())
        method,best_test_acc,best_epoch,final_test_acc,epochs,seconds
        relu,0.9000,2,0.9000,2,3.0
    """
    table = os.path.join(output_dir, "results.csv")
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "best_test_acc", "best_epoch", "final_test_acc", "epochs", "seconds"])
        for r in results:
            writer.writerow(
                [r.method, f"{r.best:.4f}", r.best_epoch, f"{r.final:.4f}", len(r.test_acc), f"{r.seconds:.1f}"]
            )
    curves = os.path.join(output_dir, "test_accuracy.csv")
    with open(curves, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "epoch", "test_acc"])
        for r in results:
            for epoch, acc in enumerate(r.test_acc, start=1):
                writer.writerow([r.method, epoch, f"{acc:.4f}"])
    return table, curves


def _matplotlib():
    try:
        import matplotlib
    except ImportError as err:  # matplotlib is the optional "demo" extra
        raise ImportError(
            "the demo's plot needs matplotlib; install it with pip install 'lightning-ftprop[demo]'"
        ) from err
    return matplotlib


def plot_accuracy(results: Sequence[DemoResult], path: str) -> str:
    """Plot test accuracy per epoch for every method to ``path`` (PNG).

    Example:
        >>> import os, tempfile
        >>> path = plot_accuracy([DemoResult("relu", [0.8, 0.9]), DemoResult("sign/sste", [0.7, 0.85])],
        ...                      os.path.join(tempfile.mkdtemp(), "test_accuracy.png"))
        >>> open(path, "rb").read(4)[1:]  # the PNG signature
        b'PNG'
    """
    matplotlib = _matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colours = {"relu": "0.3", "saturated_relu": "0.6", "sign": "tab:blue", "step": "tab:green", "qrelu": "tab:orange"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        activation, rule = METHODS.get(r.method, (r.method, ""))
        epochs = range(1, len(r.test_acc) + 1)
        ax.plot(
            epochs,
            [100 * a for a in r.test_acc],
            marker="o",
            label=r.method,
            color=colours.get(activation),
            linestyle="--" if activation in ("sign", "step", "qrelu") and rule != "soft_hinge" else "-",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("convnet4, embedded Fashion-MNIST: FTP-SH (solid) vs SSTE (dashed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(args: argparse.Namespace) -> List[DemoResult]:
    """Train every method in ``args.methods``, then write the table, curves and plot.

    Example:
        >>> results = run_demo(parse_args(["--fast", "--limit-batches", "1", "--methods", "sign/sste",
        ...                                "--threads", "1", "--no-progress", "--output-dir", "demo-out"]))
        <BLANKLINE>
        === sign/sste: convnet4, activation=sign, rule=sste
        ...
        total training time ... s; wrote demo-out/results.csv and demo-out/test_accuracy.png
        >>> [r.method for r in results], len(results[0].test_acc)
        (['sign/sste'], 1)
    """
    import torch

    from lightning_ftprop._quiet import silence_lightning_noise

    _matplotlib()  # fail before training, not after, when the demo extra is missing
    silence_lightning_noise()
    os.makedirs(args.output_dir, exist_ok=True)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        results = [_train_one(method, args) for method in args.methods]
    finally:
        torch.set_num_threads(threads)
    table = format_table(results)
    csv_path, _ = write_results(results, args.output_dir)
    png_path = plot_accuracy(results, os.path.join(args.output_dir, "test_accuracy.png"))
    total = sum(r.seconds for r in results)
    print(f"\nconvnet4 on embedded Fashion-MNIST, {args.epochs} epoch(s), batch {args.batch_size}, Adam lr {args.lr}")
    print(table)
    print(f"total training time {total:.1f} s; wrote {csv_path} and {png_path}")
    if args.wandb and _wandb_offline():
        print(
            f"W&B runs were logged offline; upload them with: wandb sync {os.path.join(args.output_dir, 'wandb', 'offline-run-*')}"
        )
    return results


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of ``lightning-ftprop demo`` (its options, without the checks of :func:`parse_args`)."""
    parser = argparse.ArgumentParser(
        prog="lightning-ftprop demo",
        description="Train convnet4 on the embedded Fashion-MNIST with ReLU, sign and qReLU (SSTE vs FTP-SH).",
    )
    parser.add_argument("--output-dir", default="ftprop-demo", help="where results.csv and test_accuracy.png go")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch of each split")
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), metavar="METHOD", help=f"subset of: {', '.join(METHODS)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); on cores shared with other jobs, "
        "--threads 1 avoids the slowdown of threads waiting for each other",
    )
    parser.add_argument("--wandb", action="store_true", help="also log to W&B (offline without an API key)")
    parser.add_argument("--fast", action="store_true", help="1 epoch of 5 batches: a quick pipeline check")
    parser.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bars")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The demo's options from ``argv``; ``--fast`` sets 1 epoch of 5 batches (unless --limit-batches).

    Example:
        >>> args = parse_args(["--fast", "--methods", "relu", "sign/soft_hinge"])
        >>> args.epochs, args.limit_batches, args.methods
        (1, 5, ['relu', 'sign/soft_hinge'])
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(map(repr, unknown))}; valid methods are: {', '.join(METHODS)}")
    if args.fast:
        args.epochs, args.limit_batches = 1, args.limit_batches or 5
    for name in ("epochs", "batch_size", "limit_batches", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``lightning-ftprop demo [options]``: parse ``argv`` (default: the command line), run, return 0.

    Example:
        >>> main(["--fast", "--limit-batches", "1", "--methods", "relu", "--threads", "1", "--no-progress",
        ...       "--output-dir", "demo-out"])
        <BLANKLINE>
        === relu: convnet4, activation=relu
        ...
        0
    """
    run_demo(parse_args(argv))
    return 0
