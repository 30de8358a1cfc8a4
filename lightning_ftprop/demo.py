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

This module holds the run: the methods, their training and :class:`EpochTestAccuracy`, the callback that
records the test accuracy after every epoch (``benchmarks/table1`` uses it too). The table, the CSV files and
the plot come from :mod:`lightning_ftprop.demo_report`; their functions are importable from here as well.
"""

from __future__ import annotations

import argparse
import netrc
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import lightning.pytorch as pl

from lightning_ftprop.demo_report import (  # noqa: F401  (re-exported: the demo's public names)
    DemoResult,
    format_table,
    plot_accuracy,
    require_matplotlib,
    write_report,
    write_results,
)
from lightning_ftprop.paper import FLOAT_BASELINES, THRESHOLD_METHODS

__all__ = [
    "METHODS",
    "DemoResult",
    "EpochTestAccuracy",
    "run_demo",
    "format_table",
    "write_results",
    "plot_accuracy",
    "main",
]

#: label -> (activation, rule): the paper's ReLU baseline and its four threshold methods
#: (:mod:`lightning_ftprop.paper`); the baseline has no rule.
METHODS: Dict[str, Tuple[str, Optional[str]]] = {
    m.name: (m.activation, m.rule) for m in (FLOAT_BASELINES[0], *THRESHOLD_METHODS)
}

DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 1e-3


class EpochTestAccuracy(pl.Callback):
    """Record the test accuracy after every epoch, in the list ``accuracies``.

    At the end of each validation epoch (sanity checks aside) it appends ``trainer.callback_metrics[metric]``
    times ``scale``, rounded to ``digits`` decimals when ``digits`` is given, then calls ``on_epoch`` (if given)
    with the list. The demo and ``benchmarks/table1`` validate on the test split, so ``val/acc`` is the test
    accuracy: the demo keeps it as a fraction, table1 in percent to 4 decimals and prints a line per epoch.

    Example:
        >>> from types import SimpleNamespace
        >>> import torch
        >>> metrics = {"val/acc": torch.tensor(0.8123456)}  # what Lightning holds after a validation epoch
        >>> trainer = SimpleNamespace(sanity_checking=False, callback_metrics=metrics)
        >>> fraction = EpochTestAccuracy()
        >>> fraction.on_validation_epoch_end(trainer, None)
        >>> round(fraction.accuracies[0], 6)
        0.812346
        >>> percent = EpochTestAccuracy(scale=100.0, digits=4, on_epoch=lambda acc: print(len(acc), acc[-1]))
        >>> percent.on_validation_epoch_end(trainer, None)
        1 81.2346
    """

    def __init__(
        self,
        accuracies: Optional[List[float]] = None,
        *,
        metric: str = "val/acc",
        scale: float = 1.0,
        digits: Optional[int] = None,
        on_epoch: Optional[Callable[[List[float]], None]] = None,
    ) -> None:
        self.accuracies: List[float] = [] if accuracies is None else accuracies
        self.metric = metric
        self.scale = scale
        self.digits = digits
        self.on_epoch = on_epoch

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = self.scale * float(trainer.callback_metrics[self.metric])
        self.accuracies.append(value if self.digits is None else round(value, self.digits))
        if self.on_epoch is not None:
            self.on_epoch(self.accuracies)


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
    from lightning.pytorch.loggers import CSVLogger

    from lightning_ftprop.data import EmbeddedFashionMNISTDataModule
    from lightning_ftprop.module import ImageClassifier
    from lightning_ftprop.progress import progress_bar_for_output

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
        callbacks=[EpochTestAccuracy(result.test_acc)] + ([bar] if bar else []),
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


def run_demo(args: argparse.Namespace) -> List[DemoResult]:
    """Train every method in ``args.methods``, then write the table, curves and plot.

    The report (files and printed table) is :func:`~lightning_ftprop.demo_report.write_report`.

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

    require_matplotlib()  # fail before training, not after, when the demo extra is missing
    silence_lightning_noise()
    os.makedirs(args.output_dir, exist_ok=True)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        results = [_train_one(method, args) for method in args.methods]
    finally:
        torch.set_num_threads(threads)
    heading = f"convnet4 on embedded Fashion-MNIST, {args.epochs} epoch(s), batch {args.batch_size}, Adam lr {args.lr}"
    write_report(results, args.output_dir, heading)
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
