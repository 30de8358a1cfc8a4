"""The command line of the Table 1 benchmark (FTP-SH against SSTE on full Fashion-MNIST).

Run it from the repository root:

    python -m benchmarks.table1 --threads 1 --epochs 10 --seeds 3 --nets convnet4    # the grid (hours)
    python -m benchmarks.table1 --report                                            # tables + plot
    python -m benchmarks.table1 --report --write    # also rewrite RESULTS.md section 6 and the README's result

Without ``--report`` it trains the runs of the grid not yet in ``--jsonl`` (a rerun skips those recorded);
``--shard I/N`` gives this process every N-th of them. convnet8 (about 15 CPU-hours for 18 runs) is meant for
a GPU: ``--nets convnet8 --accelerator gpu``, with ``--shard I/N`` to run N processes side by side on the one
device. ``--report`` prints the tables of the records and draws ``--plot``; ``--write`` also rewrites the
text between the ``table1.py --write`` marks of ``benchmarks/RESULTS.md`` and ``README.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from .records import DEFAULT_JSONL, METHODS, NETS, parse_method, read_records
from .report import DEFAULT_PLOT, README_MD, RESULTS_MD, report, write_documents
from .run import run_grid


def parse_shard(text: str) -> Tuple[int, int]:
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like I/N (e.g. 0/2), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, count


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.table1", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    parser.add_argument("--methods", nargs="+", type=parse_method, default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1: two processes at most)")
    parser.add_argument(
        "--accelerator", default="cpu", choices=("cpu", "gpu"), help="Trainer accelerator, one device per process"
    )
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), help="run every N-th remaining run, I/N")
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument(
        "--embedded", action="store_true", help="the packaged 12k/2k subset instead (tests, smoke runs)"
    )
    parser.add_argument(
        "--limit-batches", type=float, default=1.0, help="Trainer limit_{train,val}_batches (smoke runs)"
    )
    parser.add_argument("--jsonl", type=Path, default=DEFAULT_JSONL)
    parser.add_argument("--report", action="store_true", help="print the tables from --jsonl and draw --plot")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument(
        "--write", action="store_true", help="with --report: rewrite RESULTS.md section 6 and the README's result"
    )
    args = parser.parse_args(argv)
    if args.write and not args.report:
        parser.error("--write rewrites the documents from the report; pass it with --report")
    if args.report:
        records = read_records(args.jsonl)
        print(report(records, args.plot))
        if args.write:
            write_documents(records)
            print(f"wrote {RESULTS_MD} (section 6) and {README_MD} (opening result)")
        return 0
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}")
    run_grid(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
