"""The report of ``lightning-ftprop demo``: the results table, the CSV files and the test accuracy plot.

:mod:`lightning_ftprop.demo` trains the methods; this module turns its results (a :class:`~lightning_ftprop.demo.DemoResult`
per method) into what the demo prints and writes under its output folder:

* :func:`format_table`: method, best test accuracy and its epoch, final test accuracy, training time;
* :func:`write_results`: ``results.csv`` (one row per method) and ``test_accuracy.csv`` (one row per method and
  epoch);
* :func:`plot_accuracy`: ``test_accuracy.png``, test accuracy per epoch (FTP-SH solid, SSTE dashed);
* :func:`write_report`: all three, then the table printed under a heading.

The plot needs matplotlib, the optional ``demo`` extra.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from lightning_ftprop.paper import METHODS as PAPER_METHODS

__all__ = ["DemoResult", "format_table", "write_results", "plot_accuracy", "require_matplotlib", "write_report"]


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


#: method name -> (activation, rule) of the paper's methods: what colour and line a method's curve gets.
_STYLE_OF: Dict[str, Tuple[str, Optional[str]]] = {m.name: (m.activation, m.rule) for m in PAPER_METHODS}


def format_table(results: Sequence[DemoResult]) -> str:
    """The results as a fixed-width text table.

    Example:
        >>> from lightning_ftprop.demo_report import DemoResult
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
        >>> from lightning_ftprop.demo_report import DemoResult
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


def require_matplotlib():
    """matplotlib, or an ImportError that says how to install the demo extra (checked before training).

    >>> require_matplotlib().__name__
    'matplotlib'
    """
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
        >>> from lightning_ftprop.demo_report import DemoResult
        >>> path = plot_accuracy([DemoResult("relu", [0.8, 0.9]), DemoResult("sign/sste", [0.7, 0.85])],
        ...                      os.path.join(tempfile.mkdtemp(), "test_accuracy.png"))
        >>> open(path, "rb").read(4)[1:]  # the PNG signature
        b'PNG'
    """
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colours = {"relu": "0.3", "saturated_relu": "0.6", "sign": "tab:blue", "step": "tab:green", "qrelu": "tab:orange"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        activation, rule = _STYLE_OF.get(r.method, (r.method, ""))
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


def write_report(results: Sequence[DemoResult], output_dir: str, heading: str) -> Tuple[str, str, str]:
    """Write the CSV files and the plot under ``output_dir``, print ``heading``, the table and the total time.

    Returns the paths of ``results.csv``, ``test_accuracy.csv`` and ``test_accuracy.png``.

    Example:
        >>> import os, tempfile
        >>> from lightning_ftprop.demo_report import DemoResult
        >>> folder = tempfile.mkdtemp()
        >>> paths = write_report([DemoResult("relu", [0.8, 0.9], 3.0)], folder, "convnet4, 2 epochs")
        <BLANKLINE>
        convnet4, 2 epochs
        method             best test acc (epoch) final test acc  time (s)
        -----------------------------------------------------------------
        relu                      90.00%       2         90.00%       3.0
        total training time 3.0 s; wrote .../results.csv and .../test_accuracy.png
        >>> [os.path.basename(p) for p in paths]
        ['results.csv', 'test_accuracy.csv', 'test_accuracy.png']
    """
    table = format_table(results)
    csv_path, curves_path = write_results(results, output_dir)
    png_path = plot_accuracy(results, os.path.join(output_dir, "test_accuracy.png"))
    total = sum(r.seconds for r in results)
    print(f"\n{heading}")
    print(table)
    print(f"total training time {total:.1f} s; wrote {csv_path} and {png_path}")
    return csv_path, curves_path, png_path
