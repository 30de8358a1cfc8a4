"""Inference latency of exported threshold networks: onnxruntime (CPU) against PyTorch eager, one thread.

For each network and activation, four variants are measured side by side in one process:

* ``torch eager``: the trained model in eval mode under ``torch.no_grad()`` (units run their autograd Function);
* ``torch frozen+folded``: :func:`lightning_ftprop.export.fold_thresholds` of it, eager;
* ``ort unfolded`` and ``ort folded``: the files :func:`~lightning_ftprop.export.export_onnx` writes with
  ``fold=False`` / ``fold=True``, in an onnxruntime CPU session with one intra-op and one inter-op thread.

Rounds alternate over the variants so that drift in machine load hits all of them alike; the figure per
variant is the fastest round's mean time per batch, by process CPU time (steadier than wall time on a
shared machine). Ratios are ``torch eager / variant`` (above 1 is faster than PyTorch eager).

    python benchmarks/export_latency.py
    python benchmarks/export_latency.py --nets convnet4 --batch 1 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable, Dict

import torch

from lightning_ftprop.export import export_onnx, fold_thresholds
from lightning_ftprop.models import get_model

NETS = {"convnet4": (3, 32, 32), "resnet18": (3, 64, 64)}  # input shape without batch (as benchmarks/speed.py)


def _cpu_time_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def measure(net: str, activation: str, batch: int, rounds: int, calls: int, workdir: str) -> Dict[str, float]:
    import onnxruntime as ort

    torch.manual_seed(0)
    kwargs = {"thresholds": 3} if activation == "qrelu" else {}
    model = get_model(net, activation=activation, num_classes=10, **kwargs).eval()
    x = torch.randn(batch, *NETS[net])
    folded = fold_thresholds(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {}
    for fold in (False, True):
        path = export_onnx(model, os.path.join(workdir, f"{net}_{activation}_{fold}.onnx"), x[:1], fold=fold)
        sessions[fold] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {sessions[True].get_inputs()[0].name: x.numpy()}

    def eager():
        with torch.no_grad():
            return model(x)

    def eager_folded():
        with torch.no_grad():
            return folded(x)

    variants = {
        "torch eager": eager,
        "torch frozen+folded": eager_folded,
        "ort unfolded": lambda: sessions[False].run(None, feed),
        "ort folded": lambda: sessions[True].run(None, feed),
    }
    for fn in variants.values():  # warm up
        fn()
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            best[name] = min(best[name], _cpu_time_per_call(fn, calls))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--activations", nargs="+", default=["sign", "qrelu"], choices=["sign", "step", "qrelu"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="calls per round (batch 1); divided by batch/8 above")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; times are process CPU ms per batch, fastest of {args.rounds} rounds")
    print(
        "| net | activation | batch | torch eager | torch frozen+folded | ort unfolded | ort folded | eager / ort folded |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for net in args.nets:
            for activation in args.activations:
                for batch in args.batch:
                    calls = max(2, args.calls // max(1, batch // 8))
                    best = measure(net, activation, batch, args.rounds, calls, workdir)
                    ms = {k: v * 1e3 for k, v in best.items()}
                    print(
                        f"| {net} | {activation} | {batch} | {ms['torch eager']:.2f} | {ms['torch frozen+folded']:.2f} "
                        f"| {ms['ort unfolded']:.2f} | {ms['ort folded']:.2f} "
                        f"| {best['torch eager'] / best['ort folded']:.2f}x |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
