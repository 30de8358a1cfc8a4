"""The training runs: one (net, method, seed) cell through the package's own Lightning path, and the grid.

Each run trains one of the paper's convnets through :class:`lightning_ftprop.ImageClassifier` and a ``Trainer``
with the paper's CIFAR-10 recipe, evaluates the 10k test set after every epoch
(:class:`lightning_ftprop.demo.EpochTestAccuracy`) and appends its record to the store (:mod:`.records`).
``--shard I/N`` splits the remaining grid between N background processes.

Recipe (digest section 3.2/3.3): Adam with default betas, coupled L2 weight decay 5e-4 on every parameter,
batch 64, lr 2.5e-4 (convnet4) or 1e-3 (convnet8), lr x0.1 at the start of the epochs the paper used
(200 and 250 of 300), scaled to ``--epochs`` (10 epochs: decays at the start of epochs 8 and 9).

convnet8 (about 15 CPU-hours for 18 runs) is meant for a GPU: ``--nets convnet8 --accelerator gpu``, with
``--shard I/N`` to run N processes side by side on the one device.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from lightning_ftprop.paper import RECIPES

from .records import append_record, method_name, read_records, run_key


def scaled_milestones(net: str, epochs: int) -> List[int]:
    """The paper's decays for ``net`` (convnets: start of epochs 200 and 250 of 300) scaled to ``epochs``.

    The result is 1-based, >= 2 and distinct. The paper trains ``d - 1`` epochs before the decay at epoch
    ``d``; the scaled decay comes after ``round((d - 1) * epochs / paper_epochs)`` epochs. For 10 epochs of a
    convnet that is the start of epochs 8 and 9.
    """
    paper = RECIPES[net]
    milestones: List[int] = []
    for decay in paper.milestones:
        epoch = max(2, 1 + round((decay - 1) * epochs / paper.epochs))
        if milestones and epoch <= milestones[-1]:
            epoch = milestones[-1] + 1
        if epoch <= epochs:
            milestones.append(epoch)
    return milestones


def recipe(net: str, epochs: int, activation: str) -> Dict[str, object]:
    """The paper's recipe for ``net`` (lightning_ftprop.paper.RECIPES) with its decays scaled to ``epochs``."""
    paper = RECIPES[net]
    return {
        "optimizer": paper.optimizer,
        "lr": paper.lr,
        "weight_decay": paper.weight_decay_for(activation),
        "batch_size": paper.batch_size,
        "milestones": scaled_milestones(net, epochs),
        "gamma": paper.gamma,
        "qrelu_steps": paper.qrelu_thresholds,  # the record key predates the name; kept so old records match
    }


def train_run(net: str, activation: str, rule: Optional[str], seed: int, epochs: int, args) -> Dict[str, object]:
    """Train one cell through ImageClassifier + Trainer and return its JSONL record."""
    import lightning.pytorch as pl
    import torch

    from lightning_ftprop import ImageClassifier
    from lightning_ftprop.data import EmbeddedFashionMNISTDataModule, FashionMNISTDataModule
    from lightning_ftprop.demo import EpochTestAccuracy

    cfg = recipe(net, epochs, activation)
    pl.seed_everything(seed, workers=True, verbose=False)
    if args.embedded:
        data = EmbeddedFashionMNISTDataModule(batch_size=cfg["batch_size"])
    else:
        data = FashionMNISTDataModule(data_dir=str(args.data_dir), batch_size=cfg["batch_size"])
    kwargs = dict(thresholds=cfg["qrelu_steps"]) if activation == "qrelu" else {}
    model = ImageClassifier(
        arch=net,
        activation=activation,
        rule=rule or "soft_hinge",
        num_classes=10,
        in_channels=1,
        optimizer=cfg["optimizer"],
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        milestones=cfg["milestones"],
        gamma=cfg["gamma"],
        **kwargs,
    )

    accuracies: List[float] = []
    started = time.perf_counter()

    def progress(so_far: List[float]) -> None:
        print(
            f"{net} {method_name(activation, rule)} seed {seed}: epoch {len(so_far)}/{epochs} "
            f"test acc {so_far[-1]:.2f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )

    # test accuracy in percent, rounded to 4 decimals, one value per epoch
    test_accuracy = EpochTestAccuracy(accuracies, scale=100.0, digits=4, on_epoch=progress)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        callbacks=[test_accuracy],
        deterministic=False,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=data)  # val split 0: the "validation" set is the 10k test set (--no-val)
    return {
        "net": net,
        "activation": activation,
        "rule": rule,
        "seed": seed,
        "epochs": epochs,
        "recipe": cfg,
        "data": "fashion_mnist_embedded" if args.embedded else "fashion_mnist",
        "test_acc": accuracies,
        "train_seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "threads": torch.get_num_threads(),
        "accelerator": trainer.accelerator.__class__.__name__,
        "torch": torch.__version__,
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def grid(nets: Iterable[str], methods, seeds: int) -> List[Tuple[str, str, Optional[str], int]]:
    """The runs in the order they are trained: per net, the threshold units seed by seed, then the baselines.

    Seed-major order means every finished seed completes a paired FTP-SH/SSTE comparison.
    """
    runs = []
    for net in nets:
        for baselines in (False, True):
            for seed in range(seeds):
                runs += [(net, act, rule, seed) for act, rule in methods if (rule is None) == baselines]
    return runs


def run_grid(args) -> int:
    """Train this shard's share of the runs of ``args`` not yet in ``args.jsonl``; return how many it trained."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.embedded and not Path(args.data_dir).is_dir():
        raise SystemExit(
            f"no Fashion-MNIST IDX files in {args.data_dir}; install Debian's dataset-fashion-mnist or pass --data-dir"
        )
    shard, shards = args.shard
    done = {run_key(r) for r in read_records(args.jsonl)}
    remaining = []
    for net, act, rule, seed in grid(args.nets, args.methods, args.seeds):
        probe = {"net": net, "activation": act, "rule": rule, "seed": seed, "epochs": args.epochs}
        probe.update(
            recipe=recipe(net, args.epochs, act), data="fashion_mnist_embedded" if args.embedded else "fashion_mnist"
        )
        if run_key(probe) in done:
            print(f"skip {net} {method_name(act, rule)} seed {seed}: already in {args.jsonl}", flush=True)
        else:
            remaining.append((net, act, rule, seed))
    # Deal the remaining runs (not the whole grid) round-robin, so the shards stay balanced after a resume.
    todo = remaining[shard::shards]
    for net, act, rule, seed in todo:
        record = train_run(net, act, rule, seed, args.epochs, args)
        append_record(args.jsonl, record)
        print(
            f"{net} {method_name(act, rule)} seed {seed}: best {max(record['test_acc']):.2f} "
            f"final {record['test_acc'][-1]:.2f} ({record['train_seconds']:.0f} s)",
            flush=True,
        )
    return len(todo)
